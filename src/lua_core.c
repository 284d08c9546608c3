/*
 * lua_core.c -- the smtp_core Lua module: engine hooks bridged into Lua.
 *
 * Owns the bridge (a policy's session_hooks: every engine call into Lua goes
 * through one dispatch function, an event without a Lua listener never
 * enters Lua, and outcomes wait for the next call into Lua), the weak
 * session handles Lua holds (a handle outlives its
 * session; then decide is a no-op and other methods raise), the harness
 * transport (sessions whose io is an in-memory buffer, for busted), log
 * capture, and the conversion of server options into a session_config.
 * Knows nothing of sockets or libevent: timers belong to the caller.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "log.h"
#include "lua_core.h"
#include "session.h"

#define TEXT_MAX	4096		/* a verdict text copied out of Lua */
#define OUT_MAX		(16u << 20)	/* harness: reply bytes held for Lua */
#define CAPTURE_MAX	10000		/* harness: captured log lines held */
#define EVBIT(ev)	(1u << (ev))
#define ARG_MAX		512		/* an ask's argument kept for its outcome */
#define PENDING_MAX	16		/* outcomes waiting for the next call into Lua */

_Static_assert(LUA_EXTRASPACE >= sizeof(int), "the budget lives in LUA_EXTRASPACE");

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
	char			 arg[ARG_MAX];
};

struct lbridge {
	lua_State	*L;		/* the thread hooks run Lua on */
	lua_State	*main;		/* ... when no call from Lua is in progress */
	int		 dispatch_ref;	/* dispatch(kind, handle, ...) */
	int		 map_ref;	/* session pointer -> handle (weak values) */
	int		 watch_connect;	/* the server has 'connection' listeners */
	struct lsession	*creating;	/* harness: the handle session_create binds */
	char		 text[TEXT_MAX];
	unsigned	 npending;
	unsigned	 entered;	/* calls from Lua into the engine in progress */
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
	char		 arg[ARG_MAX];	/* the last ask's argument, for outcome */
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

/* Captured log lines (the harness); process-wide like the log sink itself. */
static char	**capture_lines;
static size_t	  capture_len;
static int	  capture_on;

static const char *const abort_names[] = {
	"disconnect", "too big", "bare newline", "line too long", "timeout",
	"shutdown",
};

/* ---- handles ----------------------------------------------------------- */

static struct lsession *
check_handle(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LCORE_SESSION_MT);
}

static struct session *
check_session(lua_State *L, int idx)
{
	struct lsession *ls = check_handle(L, idx);

	if (ls->s == NULL)
		luaL_error(L, "attempt to use a closed session");
	return ls->s;
}

/* Pushes the handle of s (or nothing) and returns it; NULL if none. */
static struct lsession *
push_handle(struct lbridge *b, lua_State *L, struct session *s)
{
	struct lsession *ls;

	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	if (lua_rawgetp(L, -1, s) != LUA_TUSERDATA) {
		lua_pop(L, 2);
		return NULL;
	}
	ls = lua_touserdata(L, -1);
	lua_remove(L, -2);
	return ls;
}

/* A new handle for s, registered in the bridge's map; left on the stack. */
static struct lsession *
new_handle(struct lbridge *b, lua_State *L, int bridge_idx)
{
	struct lsession *ls;

	bridge_idx = lua_absindex(L, bridge_idx);
	ls = lua_newuserdatauv(L, sizeof(*ls), 1);
	memset(ls, 0, sizeof(*ls));
	ls->b = b;
	luaL_setmetatable(L, LCORE_SESSION_MT);
	lua_pushvalue(L, bridge_idx);
	lua_setiuservalue(L, -2, 1);	/* the handle keeps its bridge alive */
	return ls;
}

static void
map_set(struct lbridge *b, lua_State *L, struct session *s, int idx)
{
	idx = lua_absindex(L, idx);
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushvalue(L, idx);
	lua_rawsetp(L, -2, s);
	lua_pop(L, 1);
}

static void
map_clear(struct lbridge *b, lua_State *L, struct session *s)
{
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushnil(L);
	lua_rawsetp(L, -2, s);
	lua_pop(L, 1);
}

/* ---- calling Lua from the hooks ----------------------------------------- */

/*
 * One call of dispatch(kind, handle, npending, <pending>, ...) from a hook:
 * <pending> is npending times (handle | false, event, code, argument), the
 * outcomes to apply first.  Everything that may allocate (and so raise)
 * runs inside lua_pcall: a hook is called from C with no Lua frame to catch
 * an error, and an unprotected error would abort.  HK_FLUSH carries only
 * the pending outcomes (handle false).
 */
enum hkind { HK_ASK, HK_CANCEL, HK_FLUSH, HK_DATA, HK_ABORT, HK_CLOSED, HK_BIND };

static const char *const hkind_names[] = {
	"ask", "cancel", "flush", "data", "abort", "closed", "bind",
};

struct hcall {
	struct lbridge			*b;
	struct session			*s;
	enum hkind			 kind;
	enum session_event		 ev;
	const struct session_event_args	*args;
	int				 code;		/* outcome */
	const char			*buf;		/* data */
	size_t				 len;
	const char			*why;		/* abort */
	/* ask: what dispatch returned */
	int				 done, accept, vcode, has_text;
};

/* dst = src[0..len) cut to dstlen - 1 octets, NUL-terminated (no printf) */
static void
copy_bounded(char *dst, size_t dstlen, const char *src, size_t len)
{
	if (len >= dstlen)
		len = dstlen - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

static int
traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	if (msg == NULL)
		msg = luaL_typename(L, 1);
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/*
 * An ask's arguments: a table of the fields the event has (a path: the
 * address object's fields, valid = true, params only when there are some);
 * the end of data passes its size alone, and DATA, RSET and QUIT (no fields)
 * pass nil.
 */
static void
push_args(lua_State *L, enum session_event ev, const struct session_event_args *a)
{
	char key[64];

	if (ev == SEV_DATA || ev == SEV_RSET || ev == SEV_QUIT) {
		lua_pushnil(L);
		return;
	}
	if (ev == SEV_DATA_END) {
		if (a != NULL)
			lua_pushinteger(L, (lua_Integer)a->size);
		else
			lua_pushnil(L);
		return;
	}
	/* sized for what follows */
	lua_createtable(L, 0, a == NULL ? 0 : a->path != NULL ? 5 + (a->path->nparams > 0) :
	    ev == SEV_AUTH ? 4 : a->arg != NULL ? 1 : 0);
	if (a == NULL)
		return;
	if (a->arg != NULL) {
		lua_pushstring(L, a->arg);
		lua_setfield(L, -2, "arg");
	}
	if (ev == SEV_AUTH && a->auth != NULL) {
		lua_pushstring(L, a->auth->method ? a->auth->method : "");
		lua_setfield(L, -2, "method");
		lua_pushstring(L, a->auth->username ? a->auth->username : "");
		lua_setfield(L, -2, "username");
		lua_pushstring(L, a->auth->password ? a->auth->password : "");
		lua_setfield(L, -2, "password");
		lua_pushstring(L, a->auth->authzid ? a->auth->authzid : "");
		lua_setfield(L, -2, "authzid");
	}
	if (a->path != NULL) {
		const struct smtp_path *p = a->path;

		lua_pushstring(L, p->address ? p->address : "");
		lua_setfield(L, -2, "address");
		lua_pushstring(L, p->local ? p->local : "");
		lua_setfield(L, -2, "localPart");
		lua_pushstring(L, p->domain ? p->domain : "");
		lua_setfield(L, -2, "domain");
		lua_pushboolean(L, p->utf8);
		lua_setfield(L, -2, "utf8");
		lua_pushboolean(L, 1);
		lua_setfield(L, -2, "valid");
		if (p->nparams == 0)
			return;		/* Lua makes an empty params table when read */
		lua_createtable(L, 0, (int)p->nparams);
		for (size_t i = 0; i < p->nparams && i < SMTP_PARAMS_MAX; i++) {
			size_t j;

			if (p->params[i].key == NULL)
				continue;
			for (j = 0; p->params[i].key[j] && j < sizeof(key) - 1; j++)
				key[j] = (char)toupper((unsigned char)p->params[i].key[j]);
			key[j] = '\0';
			if (p->params[i].value != NULL)
				lua_pushstring(L, p->params[i].value);
			else
				lua_pushboolean(L, 1);
			lua_setfield(L, -2, key);
		}
		lua_setfield(L, -2, "params");
	}
}

/* Pushes the handle of a new session (CONNECT), registered in the map. */
static void
bind_handle(lua_State *L, struct lbridge *b, struct session *s)
{
	struct lsession *ls;

	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	if (b->creating != NULL) {
		/* the harness's own session (core.session): bind its handle */
		ls = b->creating;
		b->creating = NULL;
		lua_getfield(L, -1, "creating");
	} else {
		lua_getmetatable(L, -1);	/* the map's metatable names the bridge */
		lua_getfield(L, -1, "bridge");
		ls = new_handle(b, L, -1);
		lua_replace(L, -3);
		lua_pop(L, 1);
	}
	lua_remove(L, -2);		/* the map */
	ls->s = s;
	ls->id = session_id(s);
	map_set(b, L, s, -1);
}

/* Pushes npending and the pending outcomes, and forgets them. */
static void
push_pending(lua_State *L, struct lbridge *b)
{
	unsigned n = b->npending;

	b->npending = 0;
	lua_pushinteger(L, n);
	for (unsigned i = 0; i < n; i++) {
		struct pending *p = &b->pending[i];

		if (push_handle(b, L, p->s) == NULL)
			lua_pushboolean(L, 0);
		lua_pushstring(L, session_event_name(p->ev));
		lua_pushinteger(L, p->code);
		lua_pushstring(L, p->arg);
	}
}

/* The protected body of a hook: hcall_run(lightuserdata hcall) */
static int
hcall_run(lua_State *L)
{
	struct hcall	*c = lua_touserdata(L, 1);
	struct lbridge	*b = c->b;
	int		 n;

	lua_settop(L, 0);
	luaL_checkstack(L, 16 + 4 * PENDING_MAX, "pending outcomes");
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->dispatch_ref);
	lua_pushstring(L, hkind_names[c->kind]);
	if (c->kind == HK_FLUSH)
		lua_pushboolean(L, 0);
	else if (c->ev == SEV_CONNECT && c->kind == HK_ASK)
		bind_handle(L, b, c->s);
	else if (push_handle(b, L, c->s) == NULL) {
		if (b->npending == 0)
			return 0;
		c->kind = HK_FLUSH;	/* the session is gone: only the outcomes */
		lua_settop(L, 1);
		lua_pushstring(L, hkind_names[HK_FLUSH]);
		lua_pushboolean(L, 0);
	}
	push_pending(L, b);
	switch (c->kind) {
	case HK_ASK:
		lua_pushstring(L, session_event_name(c->ev));
		push_args(L, c->ev, c->args);
		break;
	case HK_CANCEL:
		lua_pushstring(L, session_event_name(c->ev));
		break;
	case HK_DATA:
		lua_pushlstring(L, c->buf, c->len);	/* the one copy of the data */
		break;
	case HK_ABORT:
		lua_pushstring(L, c->why);
		break;
	default:
		break;
	}
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	/* ask: dispatch returns true, accept, code, text | false (a decide follows) */
	n = lua_gettop(L);
	c->done = n >= 1 && lua_toboolean(L, 1);
	c->accept = n >= 2 ? lua_toboolean(L, 2) : 1;
	c->vcode = n >= 3 ? (int)lua_tointeger(L, 3) : 0;
	c->has_text = n >= 4 && lua_type(L, 4) == LUA_TSTRING;
	if (c->has_text) {
		size_t		 len;
		const char	*t = lua_tolstring(L, 4, &len);

		copy_bounded(b->text, sizeof(b->text), t, len);
	}
	return 0;
}

/* Binds the harness's handle when no 'connection' listener needs Lua. */
static int
hcall_bind(lua_State *L)
{
	struct hcall *c = lua_touserdata(L, 1);

	bind_handle(L, c->b, c->s);
	return 0;
}

/* Runs hcall_run protected; -1 after logging an error. */
static int
hcall(struct hcall *c)
{
	lua_State	*L = c->b->L;
	int		 top = lua_gettop(L);
	uint64_t	 id = c->s != NULL ? session_id(c->s) : 0;

	if (!lua_checkstack(L, 8)) {
		log_warn(id, "lua: %s: out of stack", hkind_names[c->kind]);
		c->b->npending = 0;
		return -1;
	}
	lua_pushcfunction(L, traceback);
	lua_pushcfunction(L, hcall_run);
	lua_pushlightuserdata(L, c);
	if (lua_pcall(L, 1, 0, top + 1) != LUA_OK) {
		c->b->npending = 0;	/* lost with the call: the log says so */
		log_warn(id, "lua: %s failed: %s", hkind_names[c->kind],
		    lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
		lua_settop(L, top);
		return -1;
	}
	lua_settop(L, top);
	return 0;
}

static void
verdict_fail(struct lbridge *b, struct verdict *v)
{
	v->accept = false;
	v->code = 451;
	snprintf(b->text, sizeof(b->text), "4.3.0 Local error in policy, try again later");
	v->text = b->text;
}

/*
 * The handle of s if Lua attached a connection object to it, else NULL.
 * Only lookups: nothing here allocates, so it needs no protection.
 */
static struct lsession *
find_attached(struct lbridge *b, struct session *s)
{
	lua_State	*L = b->L;
	struct lsession	*ls;

	if (!lua_checkstack(L, 4) || (ls = push_handle(b, L, s)) == NULL)
		return NULL;
	lua_pop(L, 1);		/* the map keeps it alive */
	return ls->attached && !ls->finalizing ? ls : NULL;
}

static enum hook_result
hook_ask(void *ctx, struct session *s, enum session_event ev,
    const struct session_event_args *args, struct verdict *v)
{
	struct lbridge	*b = ctx;
	struct lsession	*ls = NULL;
	struct hcall	 c = { .b = b, .s = s, .kind = HK_ASK, .ev = ev, .args = args };

	v->accept = ev != SEV_AUTH;	/* AUTH fails closed: only Lua says yes */
	v->code = 0;
	v->text = NULL;
	if (ev == SEV_CONNECT) {
		if (!b->watch_connect && b->creating == NULL)
			return HOOK_DONE;	/* no 'connection' listener: no Lua */
		if (!b->watch_connect) {
			c.kind = HK_BIND;	/* the harness's handle, no dispatch */
			if (lua_checkstack(b->L, 8)) {
				int top = lua_gettop(b->L);

				lua_pushcfunction(b->L, traceback);
				lua_pushcfunction(b->L, hcall_bind);
				lua_pushlightuserdata(b->L, &c);
				if (lua_pcall(b->L, 1, 0, top + 1) != LUA_OK)
					log_warn(session_id(s), "lua: bind failed: %s",
					    lua_tostring(b->L, -1));
				lua_settop(b->L, top);
			}
			return HOOK_DONE;
		}
	} else {
		if ((ls = find_attached(b, s)) == NULL)
			return HOOK_DONE;
		/* outcome tells Lua the argument even when the ask skips Lua */
		const char *arg = args == NULL || ev == SEV_AUTH ? "" :
		    args->path != NULL && args->path->address != NULL ?
		    args->path->address : args->arg != NULL ? args->arg : "";

		copy_bounded(ls->arg, sizeof(ls->arg), arg, strlen(arg));
		if ((ls->mask & EVBIT(ev)) == 0)
			return HOOK_DONE;	/* the cheap path: no listener, no Lua call */
	}
	if (hcall(&c) == -1) {
		verdict_fail(b, v);
		return HOOK_DONE;
	}
	if (!c.done)
		return HOOK_WAIT;
	v->accept = c.accept;
	v->code = c.vcode;
	if (c.has_text)
		v->text = b->text;
	return HOOK_DONE;
}

static void
hook_cancel(void *ctx, struct session *s, enum session_event ev)
{
	struct hcall c = { .b = ctx, .s = s, .kind = HK_CANCEL, .ev = ev };

	if (find_attached(ctx, s) != NULL)
		hcall(&c);
}

/*
 * Whether Lua acts on an outcome: the connection's helo, sender and
 * recipients, and the end of a message.  A DATA that got 354, CONNECT,
 * QUIT, VRFY, EXPN and AUTH change nothing there: no Lua call.
 */
static int
outcome_needs_lua(enum session_event ev, int code)
{
	switch (ev) {
	case SEV_HELO:
	case SEV_EHLO:
	case SEV_MAIL:
	case SEV_RCPT:
	case SEV_RSET:
	case SEV_DATA_END:
		return 1;
	case SEV_DATA:
		return code != 354;
	default:
		return 0;
	}
}

/* Applies the pending outcomes now (one call into Lua), if there are any. */
static void
flush_pending(struct lbridge *b)
{
	struct hcall c = { .b = b, .kind = HK_FLUSH };

	if (b->npending > 0)
		hcall(&c);
}

/* An outcome waits for the next call into Lua (or a full queue). */
static void
hook_outcome(void *ctx, struct session *s, enum session_event ev, int code)
{
	struct lbridge	*b = ctx;
	struct lsession	*ls;
	struct pending	*p;

	if (!outcome_needs_lua(ev, code) || (ls = find_attached(b, s)) == NULL)
		return;
	if (b->npending == PENDING_MAX)
		flush_pending(b);
	p = &b->pending[b->npending++];
	p->s = s;
	p->ev = ev;
	p->code = code;
	copy_bounded(p->arg, sizeof(p->arg), ls->arg, strlen(ls->arg));
	/*
	 * The end of a message fires its 'accept' or 'reject' listeners: now,
	 * not at the next call into Lua (a call from Lua flushes as it leaves).
	 */
	if ((ev == SEV_DATA_END || ev == SEV_DATA) && b->entered == 0)
		flush_pending(b);
}

static void
hook_data(void *ctx, struct session *s, const char *buf, size_t len)
{
	struct hcall	 c = { .b = ctx, .s = s, .kind = HK_DATA, .buf = buf, .len = len };
	struct lsession	*ls;

	if ((ls = find_attached(ctx, s)) != NULL && (ls->mask & EVBIT(SEV_DATA)))
		hcall(&c);
}

static void
hook_abort(void *ctx, struct session *s, enum session_abort why)
{
	struct hcall c = { .b = ctx, .s = s, .kind = HK_ABORT,
	    .why = (size_t)why < sizeof(abort_names) / sizeof(abort_names[0]) ?
	    abort_names[why] : "unknown" };

	if (find_attached(ctx, s) != NULL)
		hcall(&c);
}

/* Drops the outcomes of s that Lua was not told (its handle is dying). */
static void
forget_pending(struct lbridge *b, struct session *s)
{
	unsigned j = 0;

	for (unsigned i = 0; i < b->npending; i++)
		if (b->pending[i].s != s) {
			if (i != j)
				b->pending[j] = b->pending[i];
			j++;
		}
	b->npending = j;
}

/* Forgets s in the map (protected: it may allocate nothing, but be safe). */
static int
hcall_forget(lua_State *L)
{
	struct hcall *c = lua_touserdata(L, 1);

	map_clear(c->b, L, c->s);
	return 0;
}

static void
hook_closed(void *ctx, struct session *s)
{
	struct lbridge	*b = ctx;
	struct hcall	 c = { .b = b, .s = s, .kind = HK_CLOSED };
	struct lsession	*ls;
	int		 top;

	if (!lua_checkstack(b->L, 8) || (ls = push_handle(b, b->L, s)) == NULL) {
		forget_pending(b, s);
		return;
	}
	lua_pop(b->L, 1);
	if (ls->attached && !ls->finalizing)
		hcall(&c);		/* its pending outcomes go first */
	forget_pending(b, s);
	ls->s = NULL;			/* the handle goes weak */
	top = lua_gettop(b->L);
	lua_pushcfunction(b->L, traceback);
	lua_pushcfunction(b->L, hcall_forget);
	lua_pushlightuserdata(b->L, &c);
	lua_pcall(b->L, 1, 0, top + 1);
	lua_settop(b->L, top);
}

const struct session_hooks lcore_hooks = {
	.ask = hook_ask,
	.cancel = hook_cancel,
	.outcome = hook_outcome,
	.data = hook_data,
	.abort = hook_abort,
	.closed = hook_closed,
};

/*
 * Every call from Lua into the engine runs hooks on the calling thread, and
 * tells Lua its outcomes before it returns (a decide's, a feed's).
 */
#define ENTER(b, L)	lua_State *saved_L_ = (b)->L; (b)->L = (L); (b)->entered++
#define LEAVE(b)	((b)->entered--, flush_pending(b), (b)->L = saved_L_)

void
lcore_bridge_set_main(struct lbridge *b, lua_State *L)
{
	b->L = b->main = L;
}

void
lcore_bridge_flush(struct lbridge *b)
{
	flush_pending(b);
}

/* ---- the bridge ---------------------------------------------------------- */

struct lbridge *
lcore_check_bridge(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LCORE_BRIDGE_MT);
}

/* smtp_core.bridge(dispatch) -> bridge */
static int
lcore_bridge(lua_State *L)
{
	struct lbridge *b;

	luaL_checktype(L, 1, LUA_TFUNCTION);
	b = lua_newuserdatauv(L, sizeof(*b), 0);
	memset(b, 0, sizeof(*b));
	b->dispatch_ref = b->map_ref = LUA_NOREF;
	luaL_setmetatable(L, LCORE_BRIDGE_MT);
	b->L = b->main = L;
	lua_pushvalue(L, 1);
	b->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	/* the map: weak values; its metatable also names the bridge (weakly) */
	lua_newtable(L);
	lua_createtable(L, 0, 2);
	lua_pushliteral(L, "v");
	lua_setfield(L, -2, "__mode");
	lua_pushvalue(L, -3);		/* the bridge */
	lua_setfield(L, -2, "bridge");
	lua_setmetatable(L, -2);
	b->map_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 1;
}

/*
 * The map's metatable refers to the bridge strongly and the registry holds
 * the map: break that cycle when the owner releases the bridge.
 */
static int
lbridge_release(lua_State *L)
{
	struct lbridge *b = lcore_check_bridge(L, 1);

	luaL_unref(L, LUA_REGISTRYINDEX, b->dispatch_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, b->map_ref);
	b->dispatch_ref = b->map_ref = LUA_NOREF;
	return 0;
}

/* bridge:watch(bool): whether CONNECT enters Lua (a 'connection' listener exists) */
static int
lbridge_watch(lua_State *L)
{
	struct lbridge *b = lcore_check_bridge(L, 1);

	b->watch_connect = lua_toboolean(L, 2);
	return 0;
}

/* ---- the harness transport ------------------------------------------------ */

static void
hio_write(void *io, const char *buf, size_t len)
{
	struct lsession *ls = io;

	if (ls->outlen + len > OUT_MAX)
		return;
	if (ls->outlen + len > ls->outcap) {
		size_t	 cap = ls->outcap ? ls->outcap : 1024;
		char	*p;

		while (cap < ls->outlen + len)
			cap *= 2;
		if ((p = realloc(ls->out, cap)) == NULL)
			return;
		ls->out = p;
		ls->outcap = cap;
	}
	memcpy(ls->out + ls->outlen, buf, len);
	ls->outlen += len;
}

static void
hio_close(void *io)
{
	((struct lsession *)io)->io_closed = 1;
}

static void
hio_wake(void *io)
{
	((struct lsession *)io)->woken = 1;
}

static void
hio_timer(void *io, unsigned ms)
{
	struct lsession *ls = io;

	ls->timer_ms = ms;
	ls->timer_seq++;
}

static void
hio_starttls(void *io)
{
	((struct lsession *)io)->tls_wait = 1;
}

static const struct session_io harness_io = {
	.write = hio_write,
	.close = hio_close,
	.wake = hio_wake,
	.timer = hio_timer,
	.starttls = hio_starttls,
};

/* Reads {version=, cipher=, peerSubject=} at idx (absent fields: defaults). */
static void
read_tls(lua_State *L, int idx, struct session_tls *tls)
{
	memset(tls, 0, sizeof(*tls));
	snprintf(tls->version, sizeof(tls->version), "TLSv1.3");
	snprintf(tls->cipher, sizeof(tls->cipher), "TLS_AES_128_GCM_SHA256");
	if (!lua_istable(L, idx))
		return;
	idx = lua_absindex(L, idx);
	if (lua_getfield(L, idx, "version") == LUA_TSTRING)
		snprintf(tls->version, sizeof(tls->version), "%s", lua_tostring(L, -1));
	if (lua_getfield(L, idx, "cipher") == LUA_TSTRING)
		snprintf(tls->cipher, sizeof(tls->cipher), "%s", lua_tostring(L, -1));
	if (lua_getfield(L, idx, "peerSubject") == LUA_TSTRING)
		snprintf(tls->peer_subject, sizeof(tls->peer_subject), "%s",
		    lua_tostring(L, -1));
	lua_pop(L, 3);
}

static void
copy_addr(lua_State *L, int idx, const char *key, char *dst, size_t len)
{
	if (lua_getfield(L, idx, key) == LUA_TSTRING)
		snprintf(dst, len, "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
}

/* A port field, or def when absent (0 counts as absent). */
static uint16_t
get_port(lua_State *L, int idx, const char *key, uint16_t def)
{
	lua_Integer p = 0;

	if (lua_getfield(L, idx, key) != LUA_TNIL)
		p = luaL_checkinteger(L, -1);
	lua_pop(L, 1);
	luaL_argcheck(L, p >= 0 && p <= 65535, 3, "port out of range");
	return p == 0 ? def : (uint16_t)p;
}

/*
 * smtp_core.session(bridge, config, peer) -> handle
 * A session whose transport is memory: the harness feeds it and reads its
 * replies.  The CONNECT ask runs before this returns.
 */
static int
lcore_session(lua_State *L)
{
	struct lbridge	*b = lcore_check_bridge(L, 1);
	struct lsession	*ls;
	struct session	*s;

	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_checktype(L, 3, LUA_TTABLE);
	ls = new_handle(b, L, 1);
	ls->owned = 1;
	session_config_init(&ls->cfg);
	lcore_config(L, 2, &ls->cfg, ls->hostname, sizeof(ls->hostname));
	snprintf(ls->peer.remote_addr, sizeof(ls->peer.remote_addr), "192.0.2.1");
	snprintf(ls->peer.local_addr, sizeof(ls->peer.local_addr), "127.0.0.1");
	ls->peer.remote_port = 49152;
	ls->peer.local_port = 25;
	copy_addr(L, 3, "remoteAddress", ls->peer.remote_addr, sizeof(ls->peer.remote_addr));
	copy_addr(L, 3, "localAddress", ls->peer.local_addr, sizeof(ls->peer.local_addr));
	ls->peer.remote_port = get_port(L, 3, "remotePort", ls->peer.remote_port);
	ls->peer.local_port = get_port(L, 3, "localPort", ls->peer.local_port);
	if (lua_getfield(L, 3, "tls") != LUA_TNIL && lua_toboolean(L, -1)) {
		read_tls(L, -1, &ls->tls);	/* implicit TLS: secure from the start */
		ls->peer.tls = &ls->tls;
	}
	lua_pop(L, 1);
	/* the CONNECT hook binds the handle it finds here to the new session */
	b->creating = ls;
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushvalue(L, -2);
	lua_setfield(L, -2, "creating");
	lua_pop(L, 1);
	{
		ENTER(b, L);
		s = session_create(&ls->cfg, &lcore_hooks, b, &harness_io, ls, &ls->peer);
		LEAVE(b);
	}
	b->creating = NULL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushnil(L);
	lua_setfield(L, -2, "creating");
	lua_pop(L, 1);
	if (s == NULL)
		return luaL_error(L, "out of memory");
	return 1;
}

/* ---- handle methods ------------------------------------------------------- */

/* handle:decide(accept, code, text) -> true | nil, reason (a no-op once closed) */
static int
lsession_decide(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	struct verdict	 v;
	int		 rc;

	if (ls->s == NULL) {
		luaL_pushfail(L);
		lua_pushliteral(L, "session closed");
		return 2;
	}
	v.accept = lua_toboolean(L, 2);
	v.code = (int)luaL_optinteger(L, 3, 0);
	v.text = luaL_optstring(L, 4, NULL);
	{
		ENTER(ls->b, L);
		rc = session_decide(ls->s, &v);
		LEAVE(ls->b);
	}
	if (rc == -1) {
		luaL_pushfail(L);
		lua_pushliteral(L, "no outstanding question");
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* handle:feed(bytes) -> octets consumed */
static int
lsession_feed(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	size_t		 len, n;
	const char	*buf = luaL_checklstring(L, 2, &len);

	check_session(L, 1);
	{
		ENTER(ls->b, L);
		n = session_feed(ls->s, buf, len);
		LEAVE(ls->b);
	}
	lua_pushinteger(L, (lua_Integer)n);
	return 1;
}

#define SIMPLE_CALL(name, fn)						\
static int								\
name(lua_State *L)							\
{									\
	struct lsession *ls = check_handle(L, 1);			\
									\
	check_session(L, 1);						\
	{								\
		ENTER(ls->b, L);					\
		fn(ls->s);						\
		LEAVE(ls->b);						\
	}								\
	return 0;							\
}

SIMPLE_CALL(lsession_eof, session_eof)
SIMPLE_CALL(lsession_timeout, session_timeout)
SIMPLE_CALL(lsession_shutdown, session_shutdown)

/* pause/resume: no-ops once closed (a late call from a timer is harmless) */
static int
lsession_pause(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s != NULL) {
		ENTER(ls->b, L);
		session_pause(ls->s);
		LEAVE(ls->b);
	}
	return 0;
}

static int
lsession_resume(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s != NULL) {
		ENTER(ls->b, L);
		session_resume(ls->s);
		LEAVE(ls->b);
	}
	return 0;
}

/* handle:destroy(): harness only; runs the closed hook */
static int
lsession_destroy(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);
	struct session	*s = ls->s;

	luaL_argcheck(L, ls->owned, 1, "not a harness session");
	if (s != NULL) {
		ENTER(ls->b, L);
		session_destroy(s);	/* hook_closed clears ls->s */
		LEAVE(ls->b);
		ls->s = NULL;
	}
	return 0;
}

/* handle:output() -> the reply bytes written since the last call */
static int
lsession_output(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushlstring(L, ls->out ? ls->out : "", ls->outlen);
	ls->outlen = 0;
	return 1;
}

/* handle:io() -> closed, woken (cleared), timer_seq, timer_ms */
static int
lsession_io(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushboolean(L, ls->io_closed);
	lua_pushboolean(L, ls->woken);
	ls->woken = 0;
	lua_pushinteger(L, ls->timer_seq);
	lua_pushinteger(L, ls->timer_ms);
	return 4;
}

/* handle:starttls_pending() -> true once STARTTLS said 220 (cleared by tls_started) */
static int
lsession_starttls_pending(lua_State *L)
{
	lua_pushboolean(L, check_handle(L, 1)->tls_wait);
	return 1;
}

/* handle:tls_started([{version=, cipher=, peerSubject=}]): the harness's handshake */
static int
lsession_tls_started(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	luaL_argcheck(L, ls->owned, 1, "not a harness session");
	check_session(L, 1);
	luaL_argcheck(L, ls->tls_wait, 1, "no STARTTLS is waiting for a handshake");
	read_tls(L, 2, &ls->tls);
	ls->tls_wait = 0;
	{
		ENTER(ls->b, L);
		session_tls_started(ls->s, &ls->tls);
		LEAVE(ls->b);
	}
	return 0;
}

/* handle:tls() -> {version=, cipher=, peerSubject=} | nil (plaintext or closed) */
static int
lsession_tls(lua_State *L)
{
	struct lsession			*ls = check_handle(L, 1);
	const struct session_tls	*t = ls->s ? session_tls(ls->s) : NULL;

	if (t == NULL) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, 0, 3);
	lua_pushstring(L, t->version);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, t->cipher);
	lua_setfield(L, -2, "cipher");
	if (t->peer_subject[0] != '\0') {
		lua_pushstring(L, t->peer_subject);
		lua_setfield(L, -2, "peerSubject");
	}
	return 1;
}

/* handle:user() -> the authenticated user | nil (none, or closed) */
static int
lsession_user(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	const char	*u = ls->s ? session_user(ls->s) : NULL;

	if (u == NULL)
		lua_pushnil(L);
	else
		lua_pushstring(L, u);
	return 1;
}

/* handle:attach(mask): Lua has a connection object; mask = events it listens to */
static int
lsession_attach(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	ls->attached = 1;
	ls->mask = (unsigned)luaL_checkinteger(L, 2);
	return 0;
}

static int
lsession_id(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	char buf[17];

	snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)ls->id);
	lua_pushstring(L, buf);
	return 1;
}

static int
lsession_state(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s == NULL)
		lua_pushliteral(L, "closed");
	else
		lua_pushstring(L, session_state_name(ls->s));
	return 1;
}

static int
lsession_closed(lua_State *L)
{
	lua_pushboolean(L, check_handle(L, 1)->s == NULL);
	return 1;
}

static int
lsession_idle(lua_State *L)
{
	lua_pushboolean(L, session_idle(check_session(L, 1)));
	return 1;
}

/* handle:peer() -> {remoteAddress=, remotePort=, localAddress=, localPort=} */
static int
lsession_peer(lua_State *L)
{
	const struct session_peer *p = session_peer(check_session(L, 1));

	lua_createtable(L, 0, 4);
	lua_pushstring(L, p->remote_addr);
	lua_setfield(L, -2, "remoteAddress");
	lua_pushinteger(L, p->remote_port);
	lua_setfield(L, -2, "remotePort");
	lua_pushstring(L, p->local_addr);
	lua_setfield(L, -2, "localAddress");
	lua_pushinteger(L, p->local_port);
	lua_setfield(L, -2, "localPort");
	return 1;
}

static int
lsession_gc(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->owned && ls->s != NULL) {
		ls->finalizing = 1;	/* no Lua from hooks for a dying handle */
		session_destroy(ls->s);
		ls->s = NULL;
	}
	free(ls->out);
	ls->out = NULL;
	ls->outlen = ls->outcap = 0;
	return 0;
}

static int
lsession_tostring(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushfstring(L, "smtp_core.session (%s)", ls->s ? "open" : "closed");
	return 1;
}

/* ---- config ------------------------------------------------------------- */

static lua_Integer
opt_int(lua_State *L, int idx, const char *key, lua_Integer def, lua_Integer min)
{
	lua_Integer v = def;
	int isint;

	if (lua_getfield(L, idx, key) != LUA_TNIL) {
		v = lua_tointegerx(L, -1, &isint);
		if (!isint || v < min)
			luaL_error(L, "config field %s: integer >= %d expected", key, (int)min);
	}
	lua_pop(L, 1);
	return v;
}

void
lcore_config(lua_State *L, int idx, struct session_config *cfg, char *host,
    size_t hostlen)
{
	idx = lua_absindex(L, idx);
	if (lua_getfield(L, idx, "hostname") == LUA_TSTRING) {
		snprintf(host, hostlen, "%s", lua_tostring(L, -1));
		cfg->hostname = host;
	}
	lua_pop(L, 1);
	cfg->extensions = (unsigned)opt_int(L, idx, "extensions", cfg->extensions, 0) & EXT_ALL;
	cfg->max_line = (size_t)opt_int(L, idx, "max_line", (lua_Integer)cfg->max_line, 0);
	cfg->max_text_line = (size_t)opt_int(L, idx, "max_text_line", (lua_Integer)cfg->max_text_line, 0);
	cfg->max_recipients = (size_t)opt_int(L, idx, "max_recipients", (lua_Integer)cfg->max_recipients, 1);
	cfg->max_size = (uint64_t)opt_int(L, idx, "max_size", (lua_Integer)cfg->max_size, 0);
	cfg->max_bad_commands = (unsigned)opt_int(L, idx, "max_bad_commands", cfg->max_bad_commands, 1);
	cfg->timeout_command_ms = (unsigned)opt_int(L, idx, "timeout_command_ms", cfg->timeout_command_ms, 1);
	cfg->timeout_data_ms = (unsigned)opt_int(L, idx, "timeout_data_ms", cfg->timeout_data_ms, 1);
	cfg->timeout_decision_ms = (unsigned)opt_int(L, idx, "timeout_decision_ms", cfg->timeout_decision_ms, 1);
	cfg->auth_methods = (unsigned)opt_int(L, idx, "auth_methods", cfg->auth_methods, 0) &
	    (AUTH_PLAIN | AUTH_LOGIN);
	if (lua_getfield(L, idx, "auth_without_tls") != LUA_TNIL)
		cfg->auth_without_tls = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "starttls") != LUA_TNIL)
		cfg->starttls = lua_toboolean(L, -1);
	lua_pop(L, 1);
	cfg->max_auth_failures = (unsigned)opt_int(L, idx, "max_auth_failures",
	    cfg->max_auth_failures, 1);
}

/* smtp_core.defaults() -> the engine's config defaults, snake_case */
static int
lcore_defaults(lua_State *L)
{
	struct session_config cfg;

	session_config_init(&cfg);
	lua_createtable(L, 0, 10);
	lua_pushinteger(L, cfg.extensions);
	lua_setfield(L, -2, "extensions");
#define F(name) lua_pushinteger(L, (lua_Integer)cfg.name); lua_setfield(L, -2, #name)
	F(max_line); F(max_text_line); F(max_recipients); F(max_size);
	F(max_bad_commands); F(timeout_command_ms); F(timeout_data_ms);
	F(timeout_decision_ms);
#undef F
	return 1;
}

/* ---- logging ------------------------------------------------------------ */

static void
capture_sink(void *arg, enum log_level level, const char *line)
{
	char *copy;

	(void)arg;
	(void)level;
	if (capture_len >= CAPTURE_MAX)
		return;
	if (capture_lines == NULL &&
	    (capture_lines = calloc(CAPTURE_MAX, sizeof(*capture_lines))) == NULL)
		return;
	if ((copy = strdup(line)) != NULL)
		capture_lines[capture_len++] = copy;
}

static int
check_level(lua_State *L, int idx)
{
	enum log_level level;

	if (log_parse_level(luaL_checkstring(L, idx), &level) == -1)
		return luaL_argerror(L, idx, "error, warn, info or debug expected");
	return (int)level;
}

/* smtp_core.log(level, id_hex|nil, text) */
static int
lcore_log(lua_State *L)
{
	int		 level = check_level(L, 1);
	const char	*hex = luaL_optstring(L, 2, NULL);
	const char	*text = luaL_checkstring(L, 3);
	uint64_t	 id = hex ? strtoull(hex, NULL, 16) : 0;

	log_msg((enum log_level)level, id, "%s", text);
	return 0;
}

/* smtp_core.log_level([name]) -> the current level's name */
static int
lcore_log_level(lua_State *L)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };

	if (!lua_isnoneornil(L, 1))
		log_set_level((enum log_level)check_level(L, 1));
	lua_pushstring(L, names[log_get_level()]);
	return 1;
}

/* smtp_core.log_capture(on): route log lines into memory (the harness) */
static int
lcore_log_capture(lua_State *L)
{
	capture_on = lua_toboolean(L, 1);
	log_set_sink(capture_on ? capture_sink : NULL, NULL);
	return 0;
}

/* smtp_core.log_take() -> the captured lines since the last call */
static int
lcore_log_take(lua_State *L)
{
	lua_createtable(L, (int)capture_len, 0);
	for (size_t i = 0; i < capture_len; i++) {
		lua_pushstring(L, capture_lines[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		free(capture_lines[i]);
		capture_lines[i] = NULL;
	}
	capture_len = 0;
	return 1;
}

/* smtp_core.fqdn() -> the machine's fully qualified name (or its hostname) */
static int
lcore_fqdn(lua_State *L)
{
	char		 name[256];
	struct addrinfo	 hints, *res = NULL;

	if (gethostname(name, sizeof(name)) == -1)
		snprintf(name, sizeof(name), "localhost");
	name[sizeof(name) - 1] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = AI_CANONNAME;
	if (getaddrinfo(name, NULL, &hints, &res) == 0 && res != NULL &&
	    res->ai_canonname != NULL && strchr(res->ai_canonname, '.') != NULL)
		snprintf(name, sizeof(name), "%s", res->ai_canonname);
	if (res != NULL)
		freeaddrinfo(res);
	lua_pushstring(L, name);
	return 1;
}

/* ---- files: what durable delivery needs and Lua lacks ------------------- */

static int
push_errno(lua_State *L, const char *what, const char *path)
{
	int e = errno;

	luaL_pushfail(L);
	lua_pushfstring(L, "%s %s: %s", what, path, strerror(e));
	return 2;
}

/* smtp_core.fsync(path) -> true | nil, message: a file's or directory's data to disk */
static int
lcore_fsync(lua_State *L)
{
	const char	*path = luaL_checkstring(L, 1);
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return push_errno(L, "open", path);
	if (fsync(fd) == -1) {
		int e = errno;

		close(fd);
		errno = e;
		return push_errno(L, "fsync", path);
	}
	close(fd);
	lua_pushboolean(L, 1);
	return 1;
}

/* smtp_core.mkdir(path[, mode]) -> true | nil, message (an existing directory is fine) */
static int
lcore_mkdir(lua_State *L)
{
	const char	*path = luaL_checkstring(L, 1);
	lua_Integer	 mode = luaL_optinteger(L, 2, 0700);
	struct stat	 st;

	if (mkdir(path, (mode_t)mode) == -1) {
		if (errno != EEXIST)
			return push_errno(L, "mkdir", path);
		if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			return push_errno(L, "mkdir", path);
		}
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* ---- handler coroutines: resume under an instruction budget ------------- */

/*
 * The budget of the running resume lives in the coroutine's extra space
 * (LUA_EXTRASPACE, unused otherwise), so the hook needs no upvalue or
 * registry lookup.  Once over budget the hook fires on every instruction:
 * a pcall inside the handler cannot swallow it.
 *
 * Two ways to arm it.  Without the watchdog (the harness: determinism),
 * every resume sets a count hook of budget instructions.  With the watchdog
 * (the server), a resume sets no hook at all: with any count hook set, the
 * VM traces every instruction, which short handlers should not pay for.
 * Instead lcore_watchdog_tick(), called from a CPU-time timer's signal
 * handler, installs the count hook on a run that was already running at
 * the previous tick.  The state it reads is written only by lcore_run.
 */
static volatile sig_atomic_t	 wd_on;		/* the watchdog arms the budget */
static volatile sig_atomic_t	 wd_run;	/* bumped when a run starts or ends */
static volatile sig_atomic_t	 wd_budget;	/* the budget of the innermost run */
static lua_State *volatile	 wd_co;		/* its coroutine; NULL: no run */
static sig_atomic_t		 wd_seen;	/* tick: wd_run at the previous tick */
static sig_atomic_t		 wd_hooked;	/* tick: the wd_run it hooked */

static void
budget_again(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	lua_pushliteral(L, "handler exceeded its instruction budget");
	lua_error(L);
}

static void
budget_hook(lua_State *L, lua_Debug *ar)
{
	int budget;

	(void)ar;
	memcpy(&budget, lua_getextraspace(L), sizeof(budget));
	lua_sethook(L, budget_again, LUA_MASKCOUNT, 1);
	lua_pushfstring(L, "handler exceeded its instruction budget (%d instructions)", budget);
	lua_error(L);
}

void
lcore_watchdog_enable(int on)
{
	wd_on = on != 0;
}

/*
 * Async-signal-safe: only lua_sethook, which stores four fields of the
 * thread and marks its Lua frames to trap (lua.c does the same from SIGINT).
 * A run is hooked once: hooking again would restart its count (and an
 * outer run whose hook already fired keeps it).
 */
void
lcore_watchdog_tick(void)
{
	lua_State	*co = wd_co;
	sig_atomic_t	 run = wd_run;

	if (co != NULL && run == wd_seen && run != wd_hooked && lua_gethook(co) == NULL) {
		wd_hooked = run;
		lua_sethook(co, budget_hook, LUA_MASKCOUNT, wd_budget);
	}
	wd_seen = run;
}

static void
wd_bump(void)
{
	wd_run = wd_run == INT_MAX ? 0 : wd_run + 1;
}

/*
 * Resumes co (its function and n arguments, or n values for a yield, on its
 * stack) under budget: the watchdog's, or a count hook from its first
 * instruction.  lua_resume's status; *nres results are on co's stack.
 */
static int
co_resume(lua_State *L, lua_State *co, int budget, int n, int *nres)
{
	int st;

	memcpy(lua_getextraspace(co), &budget, sizeof(budget));
	if (wd_on) {
		/* runs nest (a handler's decide runs other handlers): keep the outer */
		lua_State	*outer = wd_co;
		int		 outer_budget = wd_budget;

		wd_budget = budget;
		wd_co = co;
		wd_bump();
		st = lua_resume(co, L, n, nres);
		wd_co = outer;
		wd_budget = outer_budget;
		wd_bump();
		if (lua_gethook(co) != NULL)	/* the watchdog hooked this run */
			lua_sethook(co, NULL, 0, 0);
	} else {
		lua_sethook(co, budget_hook, LUA_MASKCOUNT, budget);
		st = lua_resume(co, L, n, nres);
	}
	return st;
}

static int
check_budget(lua_State *L, int idx)
{
	lua_Integer b = luaL_checkinteger(L, idx);

	luaL_argcheck(L, b >= 1, idx, "budget must be positive");
	return b > INT_MAX ? INT_MAX : (int)b;
}

/*
 * smtp_core.run(co, budget, ...) -> true, ... | false, err
 * coroutine.resume(co, ...) under a budget of instructions, counted from
 * this resume: from its first instruction without the watchdog, from the
 * watchdog's second tick within it with the watchdog.
 */
static int
lcore_run(lua_State *L)
{
	lua_State	*co = lua_tothread(L, 1);
	int		 budget = check_budget(L, 2);
	int		 n = lua_gettop(L) - 2, nres, st;
	lua_Debug	 ar;

	luaL_argexpected(L, co != NULL, 1, "coroutine");
	st = lua_status(co);
	if (st == LUA_OK && lua_gettop(co) == 0) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot resume dead coroutine");
		return 2;
	}
	if (co == L || (st == LUA_OK && lua_getstack(co, 0, &ar) > 0) ||
	    (st != LUA_OK && st != LUA_YIELD)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot resume non-suspended coroutine");
		return 2;
	}
	if (!lua_checkstack(co, n + 1)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "too many arguments to resume");
		return 2;
	}
	lua_xmove(L, co, n);
	st = co_resume(L, co, budget, n, &nres);
	if (st == LUA_OK || st == LUA_YIELD) {
		if (!lua_checkstack(L, nres + 1)) {
			lua_pop(co, nres);
			lua_pushboolean(L, 0);
			lua_pushliteral(L, "too many results to resume");
			return 2;
		}
		lua_pushboolean(L, 1);
		lua_xmove(co, L, nres);
		return nres + 1;
	}
	lua_pushboolean(L, 0);
	lua_xmove(co, L, 1);		/* the error object */
	return 2;
}

/*
 * smtp_core.call(co, budget, fn, ...) -> true | nil | false, err
 * One handler run on a pooled coroutine, without a trampoline: an idle co
 * (new, or its last function returned) starts fn(...); a co waiting in a
 * yield is resumed with ... instead (fn is ignored).  true: fn returned
 * (its results are dropped and co is idle again, ready for the next call);
 * nil: it waits (yielded); false, err: it failed (co is dead for good).
 * The budget is run's.
 */
static int
lcore_call(lua_State *L)
{
	lua_State	*co = lua_tothread(L, 1);
	int		 budget = check_budget(L, 2);
	int		 n = lua_gettop(L) - 3, nres, st;
	lua_Debug	 ar;

	luaL_argexpected(L, co != NULL, 1, "coroutine");
	st = lua_status(co);
	if (co == L || (st != LUA_OK && st != LUA_YIELD) ||
	    (st == LUA_OK && (lua_gettop(co) != 0 || lua_getstack(co, 0, &ar) > 0))) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot call on a busy coroutine");
		return 2;
	}
	if (st == LUA_OK)
		luaL_checktype(L, 3, LUA_TFUNCTION);
	else if (lua_gettop(L) >= 3)
		lua_remove(L, 3);	/* a wait resumed: its values only */
	if (n < 0)
		n = 0;
	if (!lua_checkstack(co, n + 2)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "too many arguments to call");
		return 2;
	}
	lua_xmove(L, co, lua_gettop(L) - 2);
	st = co_resume(L, co, budget, n, &nres);
	if (st == LUA_OK) {
		lua_settop(co, 0);	/* idle: the next call starts afresh */
		lua_pushboolean(L, 1);
		return 1;
	}
	if (st == LUA_YIELD) {
		lua_pop(co, nres);	/* what the wait yielded: no one reads it */
		return 0;
	}
	lua_pushboolean(L, 0);
	lua_xmove(co, L, 1);		/* the error object */
	return 2;
}

/* smtp_core.thread() -> an idle coroutine for smtp_core.call (no function) */
static int
lcore_thread(lua_State *L)
{
	lua_newthread(L);
	return 1;
}

/* ---- registration -------------------------------------------------------- */

static const luaL_Reg core_funcs[] = {
	{ "bridge",	 lcore_bridge },
	{ "session",	 lcore_session },
	{ "defaults",	 lcore_defaults },
	{ "log",	 lcore_log },
	{ "log_level",	 lcore_log_level },
	{ "log_capture", lcore_log_capture },
	{ "log_take",	 lcore_log_take },
	{ "fqdn",	 lcore_fqdn },
	{ "fsync",	 lcore_fsync },
	{ "mkdir",	 lcore_mkdir },
	{ "run",	 lcore_run },
	{ "call",	 lcore_call },
	{ "thread",	 lcore_thread },
	{ NULL, NULL }
};

static const luaL_Reg bridge_methods[] = {
	{ "watch",	lbridge_watch },
	{ "release",	lbridge_release },
	{ NULL, NULL }
};

static const luaL_Reg session_methods[] = {
	{ "decide",	lsession_decide },
	{ "feed",	lsession_feed },
	{ "eof",	lsession_eof },
	{ "timeout",	lsession_timeout },
	{ "shutdown",	lsession_shutdown },
	{ "pause",	lsession_pause },
	{ "resume",	lsession_resume },
	{ "destroy",	lsession_destroy },
	{ "output",	lsession_output },
	{ "io",		lsession_io },
	{ "attach",	lsession_attach },
	{ "id",		lsession_id },
	{ "state",	lsession_state },
	{ "closed",	lsession_closed },
	{ "idle",	lsession_idle },
	{ "peer",	lsession_peer },
	{ "tls",	lsession_tls },
	{ "user",	lsession_user },
	{ "tls_started", lsession_tls_started },
	{ "starttls_pending", lsession_starttls_pending },
	{ NULL, NULL }
};

static void
create_meta(lua_State *L, const char *name, const luaL_Reg *methods,
    lua_CFunction gc, lua_CFunction tostring)
{
	luaL_newmetatable(L, name);
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	if (gc != NULL) {
		lua_pushcfunction(L, gc);
		lua_setfield(L, -2, "__gc");
	}
	if (tostring != NULL) {
		lua_pushcfunction(L, tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}

int
luaopen_smtp_core(lua_State *L)
{
	create_meta(L, LCORE_BRIDGE_MT, bridge_methods, NULL, NULL);
	create_meta(L, LCORE_SESSION_MT, session_methods, lsession_gc, lsession_tostring);
	luaL_newlib(L, core_funcs);
	lua_createtable(L, 0, SEV_COUNT);
	for (int i = 0; i < SEV_COUNT; i++) {
		lua_pushinteger(L, EVBIT(i));
		lua_setfield(L, -2, session_event_name((enum session_event)i));
	}
	lua_setfield(L, -2, "EVENTS");
	lua_createtable(L, 0, 5);
#define X(n) lua_pushinteger(L, EXT_##n); lua_setfield(L, -2, #n)
	X(PIPELINING); X(SIZE); X(8BITMIME); X(ENHANCEDSTATUSCODES); X(SMTPUTF8);
#undef X
	lua_setfield(L, -2, "EXT");
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, AUTH_PLAIN);
	lua_setfield(L, -2, "PLAIN");
	lua_pushinteger(L, AUTH_LOGIN);
	lua_setfield(L, -2, "LOGIN");
	lua_setfield(L, -2, "AUTH");
	return 1;
}
