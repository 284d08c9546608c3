/*
 * lua_bridge.c -- the hooks bridge: a policy's session_hooks, into Lua.
 *
 * Every engine call into Lua is a call of the kinds function for its hook
 * (kinds.ask, .data, ...), and an event without a Lua listener never enters
 * Lua.  The envelope is the engine's (session_sender() ...): of outcomes,
 * only the end of a message is a call (kinds.outcome, at once).  Owns the
 * bridge object (smtp_core.bridge), its map of session pointers to the weak
 * handles Lua holds (a handle outlives its session; lua_session.c has their
 * methods) and the one converter of paths into address objects.
 * Knows nothing of sockets or libevent: timers belong to the caller.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "log.h"
#include "lua_core.h"
#include "lua_core_impl.h"
#include "metrics.h"
#include "session.h"

static const char *const abort_names[] = {
	"disconnect", "too big", "bare newline", "line too long", "timeout",
	"shutdown", "nul byte", "reset", "too many hops",
};

/* ---- handles ----------------------------------------------------------- */

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
struct lsession *
lcore_new_handle(struct lbridge *b, lua_State *L, int bridge_idx)
{
	struct lsession *ls;

	bridge_idx = lua_absindex(L, bridge_idx);
	ls = lua_newuserdatauv(L, sizeof(*ls), UV_N);
	memset(ls, 0, sizeof(*ls));
	ls->b = b;
	luaL_setmetatable(L, LCORE_SESSION_MT);
	lua_pushvalue(L, bridge_idx);
	lua_setiuservalue(L, -2, UV_BRIDGE);	/* the handle keeps its bridge alive */
	return ls;
}

/* ---- address objects ------------------------------------------------------ */

/*
 * The handle's address objects are kept by serial, so that the object a MAIL
 * or RCPT listener saw (and its data) is the one connection.sender and
 * message.recipients give.  A new transaction forgets them (then a dropped
 * table is all it costs), and so does a refused path (no growth per refused
 * RCPT).  Neither allocates.
 */
static void
paths_forget(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	lua_pushnil(L);
	lua_setiuservalue(L, idx, UV_PATHS);
}

static void
paths_drop(lua_State *L, int idx, unsigned serial)
{
	if (lua_getiuservalue(L, idx, UV_PATHS) == LUA_TTABLE) {
		lua_pushnil(L);
		lua_rawseti(L, -2, serial);
	}
	lua_pop(L, 1);
}

void
lcore_push_path(lua_State *L, int idx, const struct smtp_path *p,
    unsigned serial, int recipient)
{
	struct lsession	*ls;
	char		 key[64];

	idx = lua_absindex(L, idx);
	ls = lua_touserdata(L, idx);
	if (lua_getiuservalue(L, idx, UV_PATHS) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_createtable(L, 0, 8);	/* serials are hash keys: no rehash per path */
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, idx, UV_PATHS);
	}
	if (lua_rawgeti(L, -1, serial) == LUA_TTABLE) {
		lua_remove(L, -2);
		return;
	}
	lua_pop(L, 1);
	lua_createtable(L, 0, 5 + (p->nparams > 0));
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
	if (p->nparams > 0) {		/* else Lua makes an empty one when read */
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
	if (ls != NULL && ls->b != NULL &&
	    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->b->meta_ref[recipient != 0]) == LUA_TTABLE)
		lua_setmetatable(L, -2);
	else
		lua_pop(L, 1);
	lua_pushvalue(L, -1);
	lua_rawseti(L, -3, serial);
	lua_remove(L, -2);		/* the handle's table */
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
	(void)b;
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushnil(L);
	lua_rawsetp(L, -2, s);
	lua_pop(L, 1);
}

/* ---- calling Lua from the hooks ----------------------------------------- */

/*
 * One call of the Lua function of its kind, kinds[kind](handle, ...), from
 * a hook.  Everything that may allocate (and so raise) runs inside
 * lua_pcall: a hook is called from C with no Lua frame to catch an error,
 * and an unprotected error would abort.
 */
static const char *const hkind_names[] = {
	"ask", "cancel", "data", "abort", "closed", "outcome", "bind",
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
	int				 handle;	/* the caller pushed the handle there, or 0 */
	/* ask: what kinds.ask returned */
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

/*
 * An ask's arguments: the address object for MAIL and RCPT (lcore_push_path,
 * for the handle at 2), else a table of the fields the event has; the end of
 * data passes its size alone, and DATA, RSET and QUIT (no fields) pass nil.
 */
static void
push_args(lua_State *L, enum session_event ev, const struct session_event_args *a)
{
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
	if (a != NULL && a->path != NULL) {
		lcore_push_path(L, 2, a->path, a->serial, ev == SEV_RCPT);
		return;
	}
	lua_createtable(L, 0, a == NULL ? 0 : ev == SEV_AUTH ? 4 : a->arg != NULL ? 1 : 0);
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
		ls = lcore_new_handle(b, L, -1);
		lua_replace(L, -3);
		lua_pop(L, 1);
	}
	lua_remove(L, -2);		/* the map */
	ls->s = s;
	ls->id = session_id(s);
	map_set(b, L, s, -1);
}

/*
 * The protected body of a hook: hcall_run(lightuserdata hcall).  The
 * function of the hook's kind and the handle go first, then its arguments.
 */
static int
hcall_run(lua_State *L)
{
	struct hcall	*c = lua_touserdata(L, 1);
	struct lbridge	*b = c->b;
	int		 n;

	if (c->kind == HK_ASK && c->handle != 0 && b->ask_ref[c->ev] != LUA_NOREF) {
		/* kinds.asks[name](conn, args): no name to intern, no lookup */
		lua_settop(L, 2);
		luaL_checkstack(L, 16, "hook call");
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->ask_ref[c->ev]);
		lua_replace(L, 1);
		if (lua_getiuservalue(L, 2, UV_CONN) != LUA_TTABLE) {
			c->done = 1;	/* no connection object: the default verdict */
			c->accept = lcore_default_accept(c->ev);
			c->vcode = c->has_text = 0;
			return 0;
		}
		push_args(L, c->ev, c->args);	/* an address object needs the handle at 2 */
		lua_remove(L, 2);
		goto call;
	}
	if (c->handle != 0) {		/* the handle came as argument 2 */
		lua_settop(L, 2);
		luaL_checkstack(L, 16, "hook call");
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->fn_ref[c->kind]);
		lua_replace(L, 1);
	} else {
		lua_settop(L, 0);
		luaL_checkstack(L, 16, "hook call");
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->fn_ref[c->kind]);
		if (c->ev == SEV_CONNECT && c->kind == HK_ASK)
			bind_handle(L, b, c->s);
		else if (push_handle(b, L, c->s) == NULL)
			return 0;	/* the session's handle is gone */
	}
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
	case HK_OUTCOME:
		lua_pushstring(L, session_event_name(c->ev));
		lua_pushinteger(L, c->code);
		break;
	default:
		break;
	}
call:
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	/*
	 * ask: returns true, accept, code, text | false (a decide follows);
	 * true alone is the engine's default verdict
	 */
	n = lua_gettop(L);
	c->done = n >= 1 && lua_toboolean(L, 1);
	c->accept = n >= 2 ? lua_toboolean(L, 2) : lcore_default_accept(c->ev);
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
		return -1;
	}
	lua_pushcfunction(L, lcore_traceback);
	lua_pushcfunction(L, hcall_run);
	lua_pushlightuserdata(L, c);
	if (c->handle != 0)
		lua_pushvalue(L, c->handle);
	lcore_enter(id, c->kind == HK_ASK ? session_event_name(c->ev) :
	    c->kind == HK_CLOSED ? "close" : hkind_names[c->kind]);
	if (lua_pcall(L, c->handle != 0 ? 2 : 1, 0, top + 1) != LUA_OK) {
		metrics_count(M_HANDLER_ERRORS);
		log_warn(id, "lua: %s failed: %s", hkind_names[c->kind],
		    lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
		lua_settop(L, top);
		lcore_leave(L);
		return -1;
	}
	lua_settop(L, top);
	lcore_leave(L);
	return 0;
}

static void
verdict_fail(struct lbridge *b, struct verdict *v)
{
	v->accept = false;
	v->code = 451;
	snprintf(b->text, sizeof(b->text), "%s", SESSION_POLICY_ERROR);
	v->text = b->text;
}

/*
 * The handle of s if Lua attached a connection object to it, left on the
 * stack (hcall_with passes it on: one lookup per hook), else NULL and
 * nothing pushed.  Only lookups: nothing here allocates, so it needs no
 * protection.
 */
static struct lsession *
push_attached(struct lbridge *b, struct session *s)
{
	lua_State	*L = b->L;
	struct lsession	*ls;

	if (!lua_checkstack(L, 12) || (ls = push_handle(b, L, s)) == NULL)
		return NULL;
	if (!ls->attached || ls->finalizing) {
		lua_pop(L, 1);
		return NULL;
	}
	return ls;
}

/* hcall with the handle push_attached left on top; pops it. */
static int
hcall_with(struct hcall *c)
{
	int r;

	c->handle = lua_gettop(c->b->L);
	r = hcall(c);
	lua_pop(c->b->L, 1);
	return r;
}

/*
 * The connection object's copies of the peer (remoteAddress, ...) become
 * what session_peer() says now, and remoteName XCLIENT's NAME.
 */
static void
conn_peer_refresh(struct lbridge *b, struct session *s)
{
	const struct session_peer	*p = session_peer(s);
	lua_State			*L = b->L;

	if (push_attached(b, s) == NULL)
		return;
	if (lua_getiuservalue(L, -1, UV_CONN) == LUA_TTABLE) {
		lua_pushstring(L, p->remote_addr);
		lua_setfield(L, -2, "remoteAddress");
		lua_pushinteger(L, p->remote_port);
		lua_setfield(L, -2, "remotePort");
		lua_pushstring(L, p->local_addr);
		lua_setfield(L, -2, "localAddress");
		lua_pushinteger(L, p->local_port);
		lua_setfield(L, -2, "localPort");
		lua_pushliteral(L, "remoteName");
		if (session_remote_name(s) != NULL)
			lua_pushstring(L, session_remote_name(s));
		else
			lua_pushnil(L);
		lua_rawset(L, -3);
	}
	lua_pop(L, 2);
}

static enum hook_result
hook_ask(void *ctx, struct session *s, enum session_event ev,
    const struct session_event_args *args, struct verdict *v)
{
	struct lbridge	*b = ctx;
	struct lsession	*ls = NULL;
	struct hcall	 c = { .b = b, .s = s, .kind = HK_ASK, .ev = ev, .args = args };

	v->accept = lcore_default_accept(ev);
	v->code = 0;
	v->text = NULL;
	if (ev == SEV_CONNECT) {
		if (!b->watch_connect && b->creating == NULL)
			return HOOK_DONE;	/* no 'connection' listener: no Lua */
		if (!b->watch_connect) {
			c.kind = HK_BIND;	/* the harness's handle, no Lua hook call */
			if (lua_checkstack(b->L, 8)) {
				int top = lua_gettop(b->L);

				lua_pushcfunction(b->L, lcore_traceback);
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
		if ((ls = push_attached(b, s)) == NULL)
			return HOOK_DONE;
		if (ev == SEV_MAIL || ev == SEV_RCPT)
			ls->ask_serial = args != NULL ? args->serial : 0;
		if (ev == SEV_MAIL)
			paths_forget(b->L, -1);		/* a new transaction */
		if ((ls->mask & EVBIT(ev)) == 0) {
			lua_pop(b->L, 1);
			return HOOK_DONE;	/* the cheap path: no listener, no Lua call */
		}
	}
	if ((ls != NULL ? hcall_with(&c) : hcall(&c)) == -1) {
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

	if (push_attached(ctx, s) != NULL)
		hcall_with(&c);
}

/*
 * An outcome: the envelope is the engine's, so Lua hears only of the end
 * of a message (a refused DATA, the final dot's reply), at once, for its
 * 'accept'/'reject' listeners, and only when it has a message (a 'DATA'
 * listener made one).  A refused MAIL or RCPT drops its address object.
 */
static void
hook_outcome(void *ctx, struct session *s, enum session_event ev, int code)
{
	struct lbridge	*b = ctx;
	struct lsession	*ls;
	struct hcall	 c = { .b = b, .s = s, .kind = HK_OUTCOME, .ev = ev, .code = code };

	if (ev == SEV_CONNECT && session_xclients(s) > 0) {
		conn_peer_refresh(b, s);	/* XCLIENT named another client */
		return;
	}
	if ((ev == SEV_MAIL || ev == SEV_RCPT) && code >= 400) {
		if (lua_checkstack(b->L, 4) && (ls = push_handle(b, b->L, s)) != NULL) {
			paths_drop(b->L, -1, ls->ask_serial);
			lua_pop(b->L, 1);
		}
		return;
	}
	if (ev != SEV_DATA_END && (ev != SEV_DATA || code == 354))
		return;
	if ((ls = push_attached(b, s)) == NULL)
		return;
	if ((ls->mask & (EVBIT(SEV_DATA) | EVBIT(SEV_DATA_END))) != 0)
		hcall_with(&c);
	else
		lua_pop(b->L, 1);
}

static void
hook_data(void *ctx, struct session *s, const char *buf, size_t len)
{
	struct hcall	 c = { .b = ctx, .s = s, .kind = HK_DATA, .buf = buf, .len = len };
	struct lsession	*ls;

	if ((ls = push_attached(ctx, s)) == NULL)
		return;
	if (ls->sink != NULL)
		ls->sink->data(ls->sink, s, buf, len);	/* forwarding: C, no Lua */
	if ((ls->mask & EVBIT(SEV_DATA)) && !ls->data_quiet)
		hcall_with(&c);
	else {
		ls->data_skipped += len;	/* message.size catches up if Lua starts listening */
		lua_pop(c.b->L, 1);
	}
}

static void
hook_abort(void *ctx, struct session *s, enum session_abort why)
{
	struct hcall c = { .b = ctx, .s = s, .kind = HK_ABORT,
	    .why = (size_t)why < sizeof(abort_names) / sizeof(abort_names[0]) ?
	    abort_names[why] : "unknown" };

	if (push_attached(ctx, s) != NULL)
		hcall_with(&c);
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

	if (!lua_checkstack(b->L, 8) || (ls = push_handle(b, b->L, s)) == NULL)
		return;
	lua_pop(b->L, 1);
	if (ls->sink != NULL) {
		struct lcore_sink *k = ls->sink;

		ls->sink = NULL;
		k->detach(k, s);
	}
	if (ls->attached && !ls->finalizing)
		hcall(&c);
	ls->s = NULL;			/* the handle goes weak */
	top = lua_gettop(b->L);
	lua_pushcfunction(b->L, lcore_traceback);
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

void
lcore_bridge_set_main(struct lbridge *b, lua_State *L)
{
	b->L = b->main = L;
}

/* ---- the bridge ---------------------------------------------------------- */

struct lbridge *
lcore_check_bridge(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LCORE_BRIDGE_MT);
}

/*
 * smtp_core.bridge(kinds) -> bridge: kinds.ask, .cancel, .data, .abort,
 * .closed and .outcome are the functions the hooks call (read once, here);
 * kinds.asks (optional), the ask of each event by name, called as
 * asks[name](conn, args) with the connection object given to handle:attach;
 * kinds.senderMeta and .recipientMeta (optional) the address objects'
 * metatables.
 */
int
lcore_bridge(lua_State *L)
{
	struct lbridge *b;

	luaL_checktype(L, 1, LUA_TTABLE);
	for (int k = 0; k < HK_NFN; k++)
		if (lua_getfield(L, 1, hkind_names[k]) != LUA_TFUNCTION)
			return luaL_error(L, "bridge: kinds.%s must be a function", hkind_names[k]);
	lua_settop(L, 1);
	b = lua_newuserdatauv(L, sizeof(*b), 0);
	memset(b, 0, sizeof(*b));
	for (int k = 0; k < HK_NFN; k++)
		b->fn_ref[k] = LUA_NOREF;
	for (int e = 0; e < SEV_COUNT; e++)
		b->ask_ref[e] = LUA_NOREF;
	b->map_ref = LUA_NOREF;
	b->meta_ref[0] = b->meta_ref[1] = LUA_NOREF;
	luaL_setmetatable(L, LCORE_BRIDGE_MT);
	b->L = b->main = L;
	for (int k = 0; k < HK_NFN; k++) {
		lua_getfield(L, 1, hkind_names[k]);
		b->fn_ref[k] = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	if (lua_getfield(L, 1, "asks") == LUA_TTABLE) {
		for (int e = 0; e < SEV_COUNT; e++) {
			if (e == SEV_CONNECT)	/* binds the handle: kinds.ask */
				continue;
			if (lua_getfield(L, -1, session_event_name(e)) == LUA_TFUNCTION)
				b->ask_ref[e] = luaL_ref(L, LUA_REGISTRYINDEX);
			else
				lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	lua_getfield(L, 1, "senderMeta");
	b->meta_ref[0] = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_getfield(L, 1, "recipientMeta");
	b->meta_ref[1] = luaL_ref(L, LUA_REGISTRYINDEX);
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

	for (int k = 0; k < HK_NFN; k++) {
		luaL_unref(L, LUA_REGISTRYINDEX, b->fn_ref[k]);
		b->fn_ref[k] = LUA_NOREF;
	}
	for (int e = 0; e < SEV_COUNT; e++) {
		luaL_unref(L, LUA_REGISTRYINDEX, b->ask_ref[e]);
		b->ask_ref[e] = LUA_NOREF;
	}
	luaL_unref(L, LUA_REGISTRYINDEX, b->map_ref);
	b->map_ref = LUA_NOREF;
	for (int k = 0; k < 2; k++) {
		luaL_unref(L, LUA_REGISTRYINDEX, b->meta_ref[k]);
		b->meta_ref[k] = LUA_NOREF;
	}
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

const luaL_Reg lcore_bridge_methods[] = {
	{ "watch",	lbridge_watch },
	{ "release",	lbridge_release },
	{ "clock",	lcore_bridge_clock },
	{ NULL, NULL }
};
