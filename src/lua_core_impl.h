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
#define ARG_MAX		512		/* an ask's argument kept for its outcome */
#define PENDING_MAX	16		/* outcomes waiting for the next call into Lua */

/*
 * An outcome Lua has not been told yet.  Outcomes are not a call into Lua of
 * their own: they wait here and go with the next call (any hook, a timer,
 * the end of a call from Lua into the engine), applied before anything else
 * runs, so Lua never sees a state the engine has moved past.
 */
struct pending {
	struct session		*s;
	enum session_event	 ev;
	int			 code;
	int			 has_arg;	/* else Lua holds the ask's object: nil */
	char			 arg[ARG_MAX];
};

/* What a hook calls in Lua: kinds[name](handle, ...); HK_FLUSH calls nothing. */
enum hkind {
	HK_ASK, HK_CANCEL, HK_FLUSH, HK_DATA, HK_ABORT, HK_CLOSED, HK_OUTCOME,
	HK_NFN,		/* the kinds with a function (HK_FLUSH's is unused) */
	HK_BIND = HK_NFN
};

struct lbridge {
	lua_State	*L;		/* the thread hooks run Lua on */
	lua_State	*main;		/* ... when no call from Lua is in progress */
	int		 fn_ref[HK_NFN];	/* kinds.ask, .cancel, ... (LUA_NOREF for flush) */
	int		 map_ref;	/* session pointer -> handle (weak values) */
	int		 watch_connect;	/* the server has 'connection' listeners */
	struct lsession	*creating;	/* harness: the handle session_create binds */
	char		 text[TEXT_MAX];
	unsigned	 npending;
	unsigned	 entered;	/* calls from Lua into the engine in progress */
	uint64_t	 now_ms;	/* harness: the virtual clock (bridge:clock) */
	/*
	 * The handle hook_ask found, for the outcome the engine reports next
	 * (no Lua runs between an answered ask and its outcome): every other
	 * hook, map change and the handle's __gc forget it.
	 */
	struct session	*ask_s;
	struct lsession	*ask_ls;
	struct pending	 pending[PENDING_MAX];
};

struct lsession {
	struct session	*s;		/* NULL once the session is gone */
	struct lbridge	*b;
	uint64_t	 id;
	unsigned	 mask;		/* EVBIT of events with Lua listeners */
	int		 attached;	/* Lua made a connection object for it */
	int		 owned;		/* harness: this handle destroys the session */
	int		 finalizing;
	int		 arg_lua;	/* the last ask ran in Lua: its object has the argument */
	char		 arg[ARG_MAX];	/* the last ask's argument, for outcome, when not */
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

/* The module's functions and metatables, registered by luaopen_smtp_core. */
int		 lcore_bridge(lua_State *L);		/* lua_bridge.c */
extern const luaL_Reg lcore_bridge_methods[];
int		 lcore_session(lua_State *L);		/* lua_session.c */
extern const luaL_Reg lcore_session_methods[];
int		 lcore_session_gc(lua_State *L);
int		 lcore_session_tostring(lua_State *L);
int		 lcore_bridge_clock(lua_State *L);	/* lua_session.c */
int		 lcore_run(lua_State *L);		/* lua_run.c */
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
