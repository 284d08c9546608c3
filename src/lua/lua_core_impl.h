/*
 * lua_core_impl.h -- internal to the lua_*.c files that make up smtp_core.
 *
 * The bridge and the session handle as the files share them: lua_bridge.c
 * (the hooks bridge and the handle map), lua_session.c (handle methods and
 * the harness transport), lua_run.c (handler coroutines under a budget) and
 * lua_core.c (config, logging, files, registration).  Nothing else includes
 * it: the rest of the server sees lua_core.h alone.
 */
#ifndef LUASMTPD_LUA_CORE_IMPL_H
#define LUASMTPD_LUA_CORE_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>

#include "lua_core.h"
#include "session.h"

#define TEXT_MAX	16384		/* a verdict text copied out of Lua: longer than
					   any valid one (32 lines of 496), so one cut
					   here is invalid, never cut quietly */
#define EVBIT(ev)	(1u << (ev))
#define HANDLER_BUDGET	10000000	/* VM instructions per handler run (handlerBudget) */
#define CPU_DEFAULT_MS	1000		/* CPU time per handler run (handlerCpuTime) */

/* The verdict when Lua gives none: AUTH fails closed, only Lua says yes. */
#define lcore_default_accept(ev)	((ev) != SEV_AUTH)

/*
 * What a hook calls in Lua: kinds[name](handle, ...).  HK_OUTCOME is the
 * end of a message only (the envelope is the engine's: session_sender()).
 */
enum hkind {
	HK_ASK, HK_CANCEL, HK_DATA, HK_ABORT, HK_CLOSED, HK_OUTCOME,
	HK_NFN,		/* the kinds with a function */
	HK_BIND = HK_NFN
};

/*
 * The handle's user values: its bridge, its address objects by serial, and
 * the connection object Lua attached (an ask's first argument, no lookup),
 * and the data sink attached (handle:sink), kept alive while attached.
 */
enum { UV_BRIDGE = 1, UV_PATHS = 2, UV_CONN = 3, UV_SINK = 4, UV_N = 4 };

struct lbridge {
	lua_State	*L;		/* the thread hooks run Lua on */
	lua_State	*main;		/* ... when no call from Lua is in progress */
	int		 fn_ref[HK_NFN];	/* kinds.ask, .cancel, ... */
	int		 ask_ref[SEV_COUNT];	/* kinds.asks[name] (LUA_NOREF: kinds.ask) */
	int		 meta_ref[2];	/* kinds.senderMeta, .recipientMeta */
	int		 map_ref;	/* session pointer -> handle (weak values) */
	int		 watch_connect;	/* the server has 'connection' listeners */
	struct lsession	*creating;	/* harness: the handle session_create binds */
	char		 text[TEXT_MAX];
	uint64_t	 now_ms;	/* harness: the virtual clock (bridge:clock) */
};

struct lsession {
	struct session	*s;		/* NULL once the session is gone */
	struct lbridge	*b;
	uint64_t	 id;
	unsigned	 mask;		/* EVBIT of events with Lua listeners */
	int		 attached;	/* Lua made a connection object for it */
	int		 owned;		/* harness: this handle destroys the session */
	int		 finalizing;
	unsigned	 ask_serial;	/* the path of the MAIL/RCPT being asked */
	struct lcore_sink *sink;	/* message data in C first (UV_SINK) */
	int		 data_quiet;	/* the message has no 'data' listener: no Lua per chunk */
	size_t		 data_skipped;	/* octets passed by quietly since Lua last asked */
	/* harness transport */
	struct session_config cfg;
	char		 hostname[256];
	struct session_peer peer;
	char		*out;
	size_t		 outlen, outcap;
	int		 io_closed, woken;
	int		 tls_wait;	/* STARTTLS said 220: the spec plays the handshake */
	struct session_tls tls;		/* the harness's simulated TLS */
	unsigned	 timer_ms, timer_seq;
};

/* lua_bridge.c: a new handle for s, registered in the bridge's map; left on the stack */
struct lsession	*lcore_new_handle(struct lbridge *b, lua_State *L, int bridge_idx);

/*
 * lua_bridge.c: pushes the address object of path (serial: the engine's) for
 * the handle at idx: the one built before for that serial, else a new one
 * (address, localPart, domain, utf8, valid, params when there are some),
 * with the bridge's metatable for a sender or a recipient.  The one
 * converter of paths, for event arguments and the envelope alike.
 */
void		 lcore_push_path(lua_State *L, int idx, const struct smtp_path *path,
		    unsigned serial, int recipient);

/* The module's functions and metatables, registered by luaopen_smtp_core. */
int		 lcore_bridge(lua_State *L);		/* lua_bridge.c */
extern const luaL_Reg lcore_bridge_methods[];
int		 lcore_session(lua_State *L);		/* lua_session.c */
extern const luaL_Reg lcore_session_methods[];
int		 lcore_session_gc(lua_State *L);
int		 lcore_session_tostring(lua_State *L);
int		 lcore_bridge_clock(lua_State *L);	/* lua_session.c */
int		 lcore_call(lua_State *L);
int		 lcore_thread(lua_State *L);
int		 lcore_limits(lua_State *L);

/* The budgets of a handler run (smtp_core.limits). */
struct lcore_limits {
	uint32_t	magic;
	int		budget;		/* VM instructions */
	int		cpu_ms;		/* CPU time */
	size_t		memory;		/* heap growth in bytes; 0: a quarter of the limit */
};

#endif
