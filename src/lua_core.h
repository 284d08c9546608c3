/*
 * lua_core.h -- the smtp_core Lua module and the hooks bridge it owns.
 *
 * A bridge carries every engine hook of a policy into the Lua function for
 * that hook (the kinds table of lua/smtp/instance.lua).  It is a Lua userdata
 * made by smtp_core.bridge(kinds); the server (lua_policy.c) anchors one per
 * loaded script, the test harness (smtp.testing) one per loaded instance.
 * Nothing here touches sockets or libevent.
 */
#ifndef LUASMTPD_LUA_CORE_H
#define LUASMTPD_LUA_CORE_H

#include <stddef.h>

#include <lua.h>

#include "session.h"

#define LCORE_BRIDGE_MT		"smtp_core.bridge"
#define LCORE_SESSION_MT	"smtp_core.session"

struct lbridge;

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
void		 lcore_bridge_set_main(struct lbridge *b, lua_State *L);

/*
 * Outcomes (a 250 to MAIL, RCPT, the end of data, ...) enter Lua with the
 * next hook call, not on their own.  Whoever runs Lua outside a hook (the
 * server's timers) calls this first, so Lua sees every outcome so far.
 */
void		 lcore_bridge_flush(struct lbridge *b);

/*
 * Reads a normalized config table (snake_case engine names, as built by
 * server:_config() in lua/smtp/instance.lua) at idx into cfg over its
 * current values.  The hostname is copied into host.  Raises on a bad field.
 */
void		 lcore_config(lua_State *L, int idx, struct session_config *cfg,
		    char *host, size_t hostlen);

/*
 * The watchdog of handler runs (the server; the harness never enables it).
 * Enabled, smtp_core.run sets no hook per resume, and the caller calls
 * lcore_watchdog_tick() from a signal handler every few milliseconds of
 * process CPU time: a run that was running at the previous tick and still
 * is gets the count hook of its budget (so it is stopped within a tick
 * plus its budget, even under pcall).  Async-signal-safe.
 */
void		 lcore_watchdog_enable(int on);
void		 lcore_watchdog_tick(void);

#endif
