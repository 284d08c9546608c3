/*
 * lua_core.h -- the smtp_core Lua module and the hooks bridge it owns.
 *
 * A bridge carries every engine hook of a policy into the Lua function for
 * that hook (the kinds table of lua/smtp/dispatch.lua).  It is a Lua userdata
 * made by smtp_core.bridge(kinds); the server (lua_host.c) anchors one per
 * loaded script, the test harness (smtp.testing) one per loaded instance.
 * Nothing here touches sockets or libevent.
 */
#ifndef LUASMTPD_LUA_CORE_H
#define LUASMTPD_LUA_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "session.h"

#define LCORE_BRIDGE_MT		"smtp_core.bridge"
#define LCORE_SESSION_MT	"smtp_core.session"

struct lbridge;

/*
 * A consumer of a session's message data in C (the next hop of
 * message:forward, lua_nexthop.c): handle:sink(obj) attaches it, obj a
 * userdata whose metatable has __lcore_sink = true and whose memory starts
 * with this struct.  data gets every chunk (as hooks->data) before any Lua
 * 'data' listener; detach is called when the session ends with it attached.
 */
struct lcore_sink {
	void	(*data)(struct lcore_sink *k, struct session *s, const char *buf, size_t len);
	void	(*detach)(struct lcore_sink *k, struct session *s);
};

/* The module loader: require "smtp_core". */
int		 luaopen_smtp_core(lua_State *L);

/* The bridge at idx (raises if it is not one). */
struct lbridge	*lcore_check_bridge(lua_State *L, int idx);

/*
 * The hooks of a bridge: ctx must be the struct lbridge.  They run Lua on
 * the bridge's current thread, which is the main state given here unless a
 * call from Lua into the engine is in progress.
 */
extern const struct session_hooks lcore_hooks;

/* A listen(port, {tls = true}) without server.tls: the one wording (a %d). */
#define LCORE_TLS_NEEDS_CERT \
	"listen(%d, ..., {tls = true}) needs server.tls (a certificate and key)"

void		 lcore_bridge_set_main(struct lbridge *b, lua_State *L);

/*
 * Reads a normalized config table (snake_case engine names, as built by
 * server:_config() in lua/smtp/server.lua) at idx into cfg over its
 * current values.  The hostname is copied into host.  Raises on a bad field.
 */
void		 lcore_config(lua_State *L, int idx, struct session_config *cfg,
		    char *host, size_t hostlen);

/*
 * The watchdog of handler runs (the server; the harness never enables it).
 * Enabled, smtp_core.call sets no hook per resume, and the caller calls
 * lcore_watchdog_tick() from a signal handler every tick_us of process CPU
 * time: a run still running at its second tick gets the count hook of its
 * instruction budget, and one over its CPU time budget is stopped at its
 * next instruction (either way even under pcall).  Async-signal-safe.
 */
void		 lcore_watchdog_enable(int on, unsigned tick_us);
void		 lcore_watchdog_tick(void);

/*
 * coroutine.resume and coroutine.wrap as Lua's, except that a resume within
 * a handler run makes the resumed thread the run's while it runs: the
 * budgets cover the coroutines a handler makes (smtp_core.resume, .wrap;
 * the server puts them in the policy's coroutine table).
 */
int		 lcore_coresume(lua_State *L);
int		 lcore_cowrap(lua_State *L);

/*
 * The allocator of a Lua state whose heap is bounded (the server's):
 * lua_newstate(lcore_alloc, &heap) with a zeroed heap.  Growth past the
 * limit is refused (Lua then collects, tries again, and raises "not enough
 * memory"), and so is growth of a handler run past its memory budget
 * (smtp_core.limits), which also stops the run as its other budgets do.
 */
struct lcore_heap {
	size_t	total;		/* bytes the state holds */
	size_t	limit;		/* 0: none */
	size_t	reserve;	/* of limit, kept from runs for the code around them */
};
void		*lcore_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void		 lcore_heap_limit(struct lcore_heap *h, size_t limit);
/* The default limit: a share of RAM (half of it over the online cores), 64 to 512 MiB. */
size_t		 lcore_memory_default(void);

/*
 * Every call into Lua from C (a hook, a timer) is bracketed by these: the
 * busy record, if attached (a worker: busy.h), says which event of which
 * session it is in, and once the outermost call ends, a run that failed
 * for memory is collected (a full collection, and the pages go back to the
 * system).  Nested calls (Lua into the engine into Lua) count once.
 */
struct busy;
void		 lcore_busy_attach(struct busy *b);
void		 lcore_enter(uint64_t id, const char *what);
void		 lcore_leave(lua_State *L);

/*
 * The message handler of every lua_pcall from C: the error with a traceback
 * (a non-string error named by its type).  Inline: each C file that calls
 * into Lua pushes it, the binary's and the Lua module's alike.
 */
static inline int
lcore_traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	luaL_traceback(L, L, msg != NULL ? msg : luaL_typename(L, 1), 1);
	return 1;
}

#endif
