/*
 * lua_nexthop.c -- the next hop for lua/smtp/forward.lua:
 * platform.nexthop(target) and the worker's pool of next-hop connections.
 *
 * Owns the Lua object of one next-hop transaction (a nexthop.c client, new
 * or taken from the pool), the results of its steps delivered to Lua
 * callbacks from the event loop (as lua_tcp.c does), the stream of message
 * data from the engine straight to the next hop (a struct lcore_sink the
 * bridge calls with each chunk: no Lua per chunk) with back-pressure (the
 * client's session is paused while the next hop's output buffer is above
 * its mark, resumed when it drains), and the pool: connections handed back
 * after a message are RSET and kept per target, closed after an idle time
 * or a number of messages.  The deadlines are nexthop.c's.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "lua_core.h"
#include "nexthop.h"
#include "session.h"

#define NH_MT		"luasmtpd.nexthop"
#define NH_CTX_MT	"luasmtpd.nexthop.ctx"
#define STREAM_HIGH	(256 * 1024)	/* output buffered before the client is paused */
#define POOL_MAX	64		/* idle connections per worker, all targets */

struct pooled {
	struct nexthop	*nh;
	char		*key;
	unsigned	 messages;	/* carried so far */
	struct event	*idle;		/* closes it */
	struct nh_ctx	*ctx;
};

struct nh_ctx {
	struct event_base	*base;
	struct evdns_base	*dns;
	struct pooled		 pool[POOL_MAX];
	unsigned		 idle_ms, max_messages, max_per_target;
};

struct lnh {
	struct lcore_sink	 sink;		/* first: handle:sink */
	struct nh_ctx		*ctx;
	struct nexthop		*nh;		/* NULL once released or closed */
	char			*key;		/* the pool's key of its target */
	unsigned		 messages;
	bool			 reused;
	struct session		*s;		/* streaming to it; paused by us? */
	bool			 paused;
	bool			 broken;	/* a write found the next hop gone */
	lua_State		*L;
	int			 fn_ref, self_ref;
};

/* ---- the pool ------------------------------------------------------------- */

/* the slot is free again; its connection (if any) ends */
static void
pool_drop(struct pooled *p, bool quit)
{
	if (p->nh != NULL) {
		if (quit)
			nexthop_quit(p->nh);
		else
			nexthop_destroy(p->nh);
	}
	p->nh = NULL;
	free(p->key);
	p->key = NULL;
	if (p->idle != NULL)
		event_free(p->idle);
	p->idle = NULL;
}

static void
pool_idle(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pool_drop(arg, true);
}

/* an idle, live connection for key (the caller owns it now), or NULL */
static struct nexthop *
pool_take(struct nh_ctx *ctx, const char *key, unsigned *messages)
{
	for (int i = 0; i < POOL_MAX; i++) {
		struct pooled *p = &ctx->pool[i];

		if (p->nh == NULL || strcmp(p->key, key) != 0)
			continue;
		if (!nexthop_alive(p->nh)) {
			pool_drop(p, false);
			continue;
		}
		struct nexthop *nh = p->nh;

		*messages = p->messages;
		p->nh = NULL;
		pool_drop(p, false);
		return nh;
	}
	return NULL;
}

static void
pool_put(struct nh_ctx *ctx, struct nexthop *nh, const char *key, unsigned messages)
{
	struct pooled	*free_slot = NULL;
	unsigned	 same = 0;
	struct timeval	 tv = { ctx->idle_ms / 1000, (ctx->idle_ms % 1000) * 1000 };

	for (int i = 0; i < POOL_MAX; i++) {
		struct pooled *p = &ctx->pool[i];

		if (p->nh == NULL) {
			if (free_slot == NULL)
				free_slot = p;
		} else if (strcmp(p->key, key) == 0)
			same++;
	}
	if (free_slot == NULL || same >= ctx->max_per_target || messages >= ctx->max_messages ||
	    ctx->idle_ms == 0 || (free_slot->key = strdup(key)) == NULL ||
	    (free_slot->idle = evtimer_new(ctx->base, pool_idle, free_slot)) == NULL) {
		if (free_slot != NULL) {
			free(free_slot->key);
			free_slot->key = NULL;
		}
		nexthop_quit(nh);
		return;
	}
	free_slot->nh = nh;
	free_slot->messages = messages;
	free_slot->ctx = ctx;
	evtimer_add(free_slot->idle, &tv);
}

/* after a message: RSET, and into the pool once the next hop said 250 */
struct parking {
	struct nh_ctx	*ctx;
	char		*key;
	unsigned	 messages;
};

static void
park_done(void *arg, struct nexthop *nh, const struct nexthop_reply *r)
{
	struct parking *pk = arg;

	if (r->code / 100 == 2 && !r->local)
		pool_put(pk->ctx, nh, pk->key, pk->messages);
	else
		nexthop_quit(nh);
	free(pk->key);
	free(pk);
}

/* ---- results into Lua ------------------------------------------------------- */

static void
lnh_forget(struct lnh *o)
{
	luaL_unref(o->L, LUA_REGISTRYINDEX, o->fn_ref);
	luaL_unref(o->L, LUA_REGISTRYINDEX, o->self_ref);
	o->fn_ref = o->self_ref = LUA_NOREF;
}

/* fn(code, enhanced, text, local, index, count) */
static void
on_step(void *arg, struct nexthop *nh, const struct nexthop_reply *r)
{
	struct lnh	*o = arg;
	lua_State	*L = o->L;
	int		 top, fn = o->fn_ref, self = o->self_ref;
	bool		 last = r->index + 1 >= r->count;

	(void)nh;
	if (fn == LUA_NOREF)
		return;
	if (last)
		o->fn_ref = o->self_ref = LUA_NOREF;
	top = lua_gettop(L);
	lcore_enter(0, "nexthop");
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
	lua_pushinteger(L, r->code);
	lua_pushstring(L, r->enhanced);
	lua_pushstring(L, r->text);
	lua_pushboolean(L, r->local);
	lua_pushinteger(L, r->index + 1);
	lua_pushinteger(L, r->count);
	if (last) {
		luaL_unref(L, LUA_REGISTRYINDEX, fn);
		lua_rawgeti(L, LUA_REGISTRYINDEX, self);	/* alive through the call */
		luaL_unref(L, LUA_REGISTRYINDEX, self);
		lua_insert(L, top + 1);
	}
	if (lua_pcall(L, 6, 0, last ? top + 2 : top + 1) != LUA_OK)
		log_warn(0, "lua: next hop result handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

/* ---- the stream ------------------------------------------------------------- */

static void
stream_drained(void *arg)
{
	struct lnh *o = arg;

	if (o->s != NULL && o->paused) {
		o->paused = false;
		session_resume(o->s);
	}
}

static void
sink_data(struct lcore_sink *k, struct session *s, const char *buf, size_t len)
{
	struct lnh	*o = (struct lnh *)k;
	long		 queued;

	if (o->nh == NULL || o->broken)
		return;
	o->s = s;
	if ((queued = nexthop_write(o->nh, buf, len)) < 0) {
		o->broken = true;
		return;
	}
	if (queued > STREAM_HIGH && !o->paused) {
		o->paused = true;
		session_pause(s);
	}
}

static void
sink_detach(struct lcore_sink *k, struct session *s)
{
	struct lnh *o = (struct lnh *)k;

	(void)s;
	o->s = NULL;
	o->paused = false;
}

/* ---- methods ---------------------------------------------------------------- */

static struct lnh *
check_nh(lua_State *L, int fn_idx)
{
	struct lnh *o = luaL_checkudata(L, 1, NH_MT);

	if (fn_idx > 0)
		luaL_checktype(L, fn_idx, LUA_TFUNCTION);
	if (o->fn_ref != LUA_NOREF)
		luaL_error(L, "next hop busy: one step at a time");
	return o;
}

static int
push_dead(lua_State *L)
{
	struct lnh	*o = luaL_checkudata(L, 1, NH_MT);
	const char	*why = o->nh != NULL ? nexthop_why(o->nh) : NULL;

	lua_pushnil(L);
	lua_pushstring(L, why != NULL ? why : "closed");
	return 2;
}

static int
started(lua_State *L, struct lnh *o, int rc, int fn_idx)
{
	if (rc == -1)
		return push_dead(L);
	lua_pushvalue(L, fn_idx);
	o->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, 1);
	o->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushboolean(L, 0);
	return 1;
}

/* nh:open(fn) -> false | nil, err */
static int
lnh_open(lua_State *L)
{
	struct lnh *o = check_nh(L, 2);

	if (o->nh == NULL)
		return push_dead(L);
	return started(L, o, nexthop_open(o->nh, on_step, o), 2);
}

/* nh:mail(from, params, size, fn) */
static int
lnh_mail(lua_State *L)
{
	struct lnh	*o = check_nh(L, 5);
	const char	*from = luaL_checkstring(L, 2), *params = luaL_optstring(L, 3, "");
	lua_Integer	 size = luaL_optinteger(L, 4, 0);

	if (o->nh == NULL)
		return push_dead(L);
	return started(L, o, nexthop_mail(o->nh, from, params, size > 0 ? (uint64_t)size : 0,
	    on_step, o), 5);
}

/* nh:rcpt(to, params, fn) */
static int
lnh_rcpt(lua_State *L)
{
	struct lnh	*o = check_nh(L, 4);
	const char	*to = luaL_checkstring(L, 2), *params = luaL_optstring(L, 3, "");

	if (o->nh == NULL)
		return push_dead(L);
	return started(L, o, nexthop_rcpt(o->nh, to, params, on_step, o), 4);
}

/* nh:envelope(from, params, size, {to, ...}, fn): MAIL and the RCPTs, one step */
static int
lnh_envelope(lua_State *L)
{
	struct lnh	*o = check_nh(L, 6);
	const char	*from = luaL_checkstring(L, 2), *params = luaL_optstring(L, 3, "");
	lua_Integer	 size = luaL_optinteger(L, 4, 0), n;
	const char	**rcpts, *few[16];
	int		 rc;

	luaL_checktype(L, 5, LUA_TTABLE);
	n = luaL_len(L, 5);
	luaL_argcheck(L, n >= 1 && n <= 100000, 5, "recipients expected");
	if (o->nh == NULL)
		return push_dead(L);
	/* a few on the stack; more in a userdata the GC frees */
	if (n <= (lua_Integer)(sizeof(few) / sizeof(few[0]))) {
		rcpts = few;
		lua_pushnil(L);	/* popped below, as the userdata */
	} else
		rcpts = lua_newuserdatauv(L, (size_t)n * sizeof(*rcpts), 0);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_geti(L, 5, i);
		rcpts[i - 1] = luaL_checkstring(L, -1);	/* the table keeps it */
		lua_pop(L, 1);
	}
	rc = nexthop_envelope(o->nh, from, params, size > 0 ? (uint64_t)size : 0, rcpts, (size_t)n,
	    on_step, o);
	lua_pop(L, 1);
	return started(L, o, rc, 6);
}

/*
 * nh:results() -> {{code =, enhanced =, text =}, ...}: the last envelope's
 * RCPT replies; nil when the next hop took every recipient (no tables for
 * the common case)
 */
static int
lnh_results(lua_State *L)
{
	struct lnh	*o = luaL_checkudata(L, 1, NH_MT);
	size_t		 n = o->nh != NULL ? nexthop_rcpt_results(o->nh) : 0, i;

	for (i = 0; i < n && nexthop_rcpt_result(o->nh, i)->code / 100 == 2; i++)
		;
	if (i == n) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		const struct nexthop_brief *b = nexthop_rcpt_result(o->nh, i);

		lua_createtable(L, 0, 3);
		lua_pushinteger(L, b->code);
		lua_setfield(L, -2, "code");
		lua_pushstring(L, b->enhanced);
		lua_setfield(L, -2, "enhanced");
		lua_pushstring(L, b->text);
		lua_setfield(L, -2, "text");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

/*
 * nh:data(fn) -> false (fn gets the 354 or the refusal) | true (the
 * envelope's pipelined DATA had 354: no callback, the body may flow now)
 * | nil, err; then nh:stream(handle)
 */
static int
lnh_data(lua_State *L)
{
	struct lnh	*o = check_nh(L, 2);
	int		 rc;

	if (o->nh == NULL)
		return push_dead(L);
	o->broken = false;
	if ((rc = nexthop_data(o->nh, on_step, o)) == 1) {
		lua_pushboolean(L, 1);
		return 1;
	}
	return started(L, o, rc, 2);
}

/* nh:write(chunk) -> true | nil, err (the harness's path; luasmtpd streams in C) */
static int
lnh_write(lua_State *L)
{
	struct lnh	*o = luaL_checkudata(L, 1, NH_MT);
	size_t		 len;
	const char	*buf = luaL_checklstring(L, 2, &len);

	if (o->nh == NULL || nexthop_write(o->nh, buf, len) < 0)
		return push_dead(L);
	lua_pushboolean(L, 1);
	return 1;
}

/* nh:finish(fn): the final dot; fn once per reply (LMTP: per recipient) */
static int
lnh_finish(lua_State *L)
{
	struct lnh *o = check_nh(L, 2);

	if (o->nh == NULL || o->broken)
		return push_dead(L);
	return started(L, o, nexthop_end(o->nh, on_step, o), 2);
}

/* nh:rset(fn) -> false | nil, "closed" (mid-data: the connection is dropped) */
static int
lnh_rset(lua_State *L)
{
	struct lnh *o = check_nh(L, 2);

	if (o->nh == NULL)
		return push_dead(L);
	return started(L, o, nexthop_rset(o->nh, on_step, o), 2);
}

/* nh:ext() -> {SIZE = limit | true, ["8BITMIME"] = true, ...}, tls on */
static int
lnh_ext(lua_State *L)
{
	struct lnh	*o = luaL_checkudata(L, 1, NH_MT);
	unsigned	 e;

	if (o->nh == NULL)
		return push_dead(L);
	e = nexthop_ext(o->nh);
	lua_createtable(L, 0, 4);
	if (e & NH_EXT_SIZE) {
		lua_pushinteger(L, (lua_Integer)nexthop_size_limit(o->nh));
		lua_setfield(L, -2, "SIZE");
	}
	lua_pushboolean(L, (e & NH_EXT_8BITMIME) != 0);
	lua_setfield(L, -2, "8BITMIME");
	lua_pushboolean(L, (e & NH_EXT_SMTPUTF8) != 0);
	lua_setfield(L, -2, "SMTPUTF8");
	lua_pushboolean(L, (e & NH_EXT_PIPELINING) != 0);
	lua_setfield(L, -2, "PIPELINING");
	lua_pushboolean(L, nexthop_tls_on(o->nh));
	return 2;
}

/* nh:reused() -> boolean: taken from the pool, open already */
static int
lnh_reused(lua_State *L)
{
	struct lnh *o = luaL_checkudata(L, 1, NH_MT);

	lua_pushboolean(L, o->reused);
	return 1;
}

/* ends the connection; true if it had paused the client (Lua resumes it) */
static bool
lnh_shut(struct lnh *o, bool quit)
{
	bool paused = o->paused && o->s != NULL;

	lnh_forget(o);
	o->s = NULL;
	o->paused = false;
	if (o->nh != NULL) {
		if (quit)
			nexthop_quit(o->nh);
		else
			nexthop_destroy(o->nh);
	}
	o->nh = NULL;
	return paused;
}

/*
 * nh:release([completed]): the transaction is over; the connection goes
 * back to the pool when it is healthy and the pool wants it, else QUIT.
 * completed: the next hop answered the final dot, so its transaction is
 * over already (RFC 5321 4.1.1.4) and no RSET is needed; else RSET first.
 */
static int
lnh_release(lua_State *L)
{
	struct lnh	*o = luaL_checkudata(L, 1, NH_MT);
	bool		 completed = lua_toboolean(L, 2);
	struct parking	*pk;

	lnh_forget(o);
	o->s = NULL;
	o->paused = false;	/* the final dot came: the client was not paused */
	if (o->nh == NULL)
		return 0;
	if (!nexthop_alive(o->nh) || o->ctx->idle_ms == 0 ||
	    o->messages + 1 >= o->ctx->max_messages) {
		lnh_shut(o, true);
		return 0;
	}
	if (completed) {
		nexthop_set_drain(o->nh, STREAM_HIGH / 2, NULL, NULL);
		pool_put(o->ctx, o->nh, o->key, o->messages + 1);
		o->nh = NULL;
		return 0;
	}
	if ((pk = calloc(1, sizeof(*pk))) == NULL) {
		lnh_shut(o, true);
		return 0;
	}
	pk->ctx = o->ctx;
	pk->messages = o->messages + 1;
	nexthop_set_drain(o->nh, STREAM_HIGH / 2, NULL, NULL);
	if ((pk->key = strdup(o->key)) == NULL ||
	    nexthop_rset(o->nh, park_done, pk) == -1) {
		free(pk->key);
		free(pk);
		lnh_shut(o, true);
		return 0;
	}
	o->nh = NULL;
	return 0;
}

/*
 * nh:close() -> paused: at once, no QUIT (an aborted transaction mid-data);
 * paused: the stream had paused the client, the caller resumes it
 */
static int
lnh_close(lua_State *L)
{
	lua_pushboolean(L, lnh_shut(luaL_checkudata(L, 1, NH_MT), false));
	return 1;
}

static int
lnh_gc(lua_State *L)
{
	struct lnh *o = luaL_checkudata(L, 1, NH_MT);

	lnh_shut(o, true);
	free(o->key);
	o->key = NULL;
	return 0;
}

static int
ctx_gc(lua_State *L)
{
	struct nh_ctx *ctx = luaL_checkudata(L, 1, NH_CTX_MT);

	for (int i = 0; i < POOL_MAX; i++)
		pool_drop(&ctx->pool[i], false);
	if (ctx->dns != NULL)
		evdns_base_free(ctx->dns, 1);
	ctx->dns = NULL;
	return 0;
}

static const luaL_Reg lnh_methods[] = {
	{ "open",	lnh_open },
	{ "mail",	lnh_mail },
	{ "rcpt",	lnh_rcpt },
	{ "envelope",	lnh_envelope },
	{ "results",	lnh_results },
	{ "data",	lnh_data },
	{ "write",	lnh_write },
	{ "finish",	lnh_finish },
	{ "rset",	lnh_rset },
	{ "ext",	lnh_ext },
	{ "reused",	lnh_reused },
	{ "release",	lnh_release },
	{ "close",	lnh_close },
	{ NULL,		NULL },
};

static const char *
opt_string(lua_State *L, int t, const char *k)
{
	const char *v;

	lua_getfield(L, t, k);
	v = lua_tostring(L, -1);	/* the table keeps it alive */
	lua_pop(L, 1);
	return v;
}

static lua_Integer
opt_int(lua_State *L, int t, const char *k, lua_Integer dflt)
{
	lua_Integer v;

	lua_getfield(L, t, k);
	v = luaL_optinteger(L, -1, dflt);
	lua_pop(L, 1);
	return v;
}

/*
 * platform.nexthop(target[, fresh]) -> nh: target (checked by forward.lua) host, port,
 * lmtp, tls ("none" | "opportunistic" | "require"), helo, timeout_ms, user,
 * password, auth_plaintext, cafile, servername, no_verify, key (the pool's).
 * A pooled connection for key when there is one (nh:reused()), unless fresh.
 */
static int
lnexthop_new(lua_State *L)
{
	struct nh_ctx		*ctx = luaL_checkudata(L, lua_upvalueindex(1), NH_CTX_MT);
	struct nexthop_target	 t;
	const char		*tls, *key;
	struct lnh		*o;
	bool			 fresh = lua_toboolean(L, 2);

	luaL_checktype(L, 1, LUA_TTABLE);
	memset(&t, 0, sizeof(t));
	t.host = opt_string(L, 1, "host");
	luaL_argcheck(L, t.host != NULL, 1, "host expected");
	key = opt_string(L, 1, "key");
	o = lua_newuserdatauv(L, sizeof(*o), 1);
	memset(o, 0, sizeof(*o));
	o->fn_ref = o->self_ref = LUA_NOREF;
	o->sink.data = sink_data;
	o->sink.detach = sink_detach;
	o->ctx = ctx;
	luaL_setmetatable(L, NH_MT);
	lua_pushvalue(L, lua_upvalueindex(1));	/* the context outlives its objects */
	lua_setiuservalue(L, -2, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "luasmtpd.main");
	o->L = lua_tothread(L, -1);
	lua_pop(L, 1);
	if ((o->key = strdup(key != NULL ? key : t.host)) == NULL)
		return luaL_error(L, "out of memory");
	/* a pooled connection first: the rest of the target shapes new ones only */
	if (!fresh && (o->nh = pool_take(ctx, o->key, &o->messages)) != NULL) {
		o->reused = true;
		nexthop_set_drain(o->nh, STREAM_HIGH / 2, stream_drained, o);
		return 1;
	}
	t.port = (int)opt_int(L, 1, "port", 25);
	lua_getfield(L, 1, "lmtp");
	t.lmtp = lua_toboolean(L, -1);
	lua_getfield(L, 1, "auth_plaintext");
	t.auth_plaintext = lua_toboolean(L, -1);
	lua_getfield(L, 1, "no_verify");
	t.no_verify = lua_toboolean(L, -1);
	lua_pop(L, 3);
	tls = opt_string(L, 1, "tls");
	t.tls = tls == NULL || strcmp(tls, "none") == 0 ? NH_TLS_NONE :
	    strcmp(tls, "require") == 0 ? NH_TLS_REQUIRE : NH_TLS_OPPORTUNISTIC;
	t.helo = opt_string(L, 1, "helo");
	t.timeout_ms = (unsigned)opt_int(L, 1, "timeout_ms", 60000);
	t.user = opt_string(L, 1, "user");
	t.password = opt_string(L, 1, "password");
	t.cafile = opt_string(L, 1, "cafile");
	t.servername = opt_string(L, 1, "servername");
	if (ctx->dns == NULL && (ctx->dns = evdns_base_new(ctx->base,
	    EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL) {
		lua_pushnil(L);
		lua_pushliteral(L, "cannot start the resolver");
		return 2;
	}
	if ((o->nh = nexthop_create(ctx->base, ctx->dns, &t, -1)) == NULL)
		return luaL_error(L, "out of memory");
	nexthop_set_drain(o->nh, STREAM_HIGH / 2, stream_drained, o);
	return 1;
}

/* platform.nexthop_pool{idle_ms =, max_messages =, max_per_target =} (upvalue: the context) */
static int
lnexthop_pool(lua_State *L)
{
	struct nh_ctx *ctx = luaL_checkudata(L, lua_upvalueindex(1), NH_CTX_MT);

	luaL_checktype(L, 1, LUA_TTABLE);
	ctx->idle_ms = (unsigned)opt_int(L, 1, "idle_ms", ctx->idle_ms);
	ctx->max_messages = (unsigned)opt_int(L, 1, "max_messages", ctx->max_messages);
	ctx->max_per_target = (unsigned)opt_int(L, 1, "max_per_target", ctx->max_per_target);
	return 0;
}

void
lnexthop_push(lua_State *L, struct event_base *base)
{
	struct nh_ctx *ctx;

	if (luaL_newmetatable(L, NH_MT)) {
		luaL_newlib(L, lnh_methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, lnh_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushboolean(L, 1);
		lua_setfield(L, -2, "__lcore_sink");
	}
	lua_pop(L, 1);
	ctx = lua_newuserdatauv(L, sizeof(*ctx), 0);
	memset(ctx, 0, sizeof(*ctx));
	ctx->base = base;
	ctx->idle_ms = 30000;
	ctx->max_messages = 100;
	ctx->max_per_target = 8;
	if (luaL_newmetatable(L, NH_CTX_MT)) {
		lua_pushcfunction(L, ctx_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	lua_pushvalue(L, -1);
	lua_pushcclosure(L, lnexthop_new, 1);
	lua_setfield(L, -3, "nexthop");
	lua_pushcclosure(L, lnexthop_pool, 1);
	lua_setfield(L, -2, "nexthop_pool");
}
