/*
 * lua_redis.c -- the Redis client of smtp.store's Redis backend
 * (lua/smtp/store.lua): platform.redis(host, port, timeout[, password, db]).
 *
 * Owns one hiredis asynchronous connection per store on the worker's event
 * base (hiredis's libevent adapter), every command's deadline, and the
 * reconnect with backoff.  client:call(fn, arg...) sends one command and
 * returns true, or nil, err at once when there is no connection (the next
 * attempt is not due yet, or the connect itself failed); fn(true, value) or
 * fn(false, err[, redis_error]) runs later from the event loop.  Commands
 * from many sessions share the connection, so they are pipelined.
 *
 * A command that meets its deadline gets "timeout" and drops the connection
 * (a reply that comes later would answer the wrong command); a lost
 * connection answers every command in flight.  The next call after the
 * backoff (0.1 s, doubling to 2 s, reset by a connect that works)
 * reconnects.  Nothing connects before the first call, so loading a script
 * (--check, the master's validating load) never does.
 *
 * Redis answers in order, so the commands in flight are a queue, and one
 * timer per client watches the oldest one's deadline (re-armed only when
 * it fires early): a command costs no timer of its own.  The callback is
 * the same function for every call of a store, with its context and a
 * number passed back, so a call allocates no closure either.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <hiredis/adapters/libevent.h>
#pragma GCC diagnostic pop
#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "redis_target.h"
#include "lua_core.h"
#include "lua_redis.h"

#define REDIS_MT		"luasmtpd.redis"
#define BACKOFF_MIN		0.1
#define BACKOFF_MAX		2.0

struct rclient {
	struct event_base	*base;
	redisAsyncContext	*ac;		/* NULL: not connected */
	lua_State		*L;		/* the main thread: callbacks run there */
	char			 host[256];
	int			 port;
	double			 timeout;	/* seconds per command */
	char			*password;
	int			 db;
	double			 backoff;	/* seconds before the next attempt */
	double			 retry_at;	/* no connect before this time */
	char			 why[160];	/* why the last connection ended */
	int			 closing;	/* in __gc: no more Lua */
	struct event		*timer;		/* the oldest command's deadline */
	TAILQ_HEAD(, rreq)	 queue;		/* commands in flight, oldest first */
};

struct rreq {
	struct rclient	*c;
	int		 fn_ref;	/* LUA_NOREF: internal (AUTH, SELECT) */
	int		 ctx_ref;	/* fn's first argument */
	lua_Integer	 n;		/* fn's second argument */
	double		 deadline;
	int		 timed_out;	/* fn was told already */
	TAILQ_ENTRY(rreq) entry;
};

static double
now_s(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Runs fn(ctx, n, ok, value[, flag]) of q and unrefs fn and ctx. */
static void
deliver(struct rclient *c, struct rreq *q, int ok, const redisReply *r, const char *err)
{
	lua_State	*L = c->L;
	int		 top = lua_gettop(L), n = 4;
	int		 fn_ref = q->fn_ref, ctx_ref = q->ctx_ref;

	if (fn_ref == LUA_NOREF)
		return;
	q->fn_ref = q->ctx_ref = LUA_NOREF;
	if (c->closing) {
		luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, ctx_ref);
		return;
	}
	lcore_enter(0, "redis");
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
	lua_rawgeti(L, LUA_REGISTRYINDEX, ctx_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, ctx_ref);
	lua_pushinteger(L, q->n);
	lua_pushboolean(L, ok);
	if (r == NULL) {
		lua_pushstring(L, err);
	} else if (r->type == REDIS_REPLY_ERROR) {
		lua_pushlstring(L, r->str, r->len);
		lua_pushboolean(L, 1);
		n = 5;
	} else if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
		lua_pushlstring(L, r->str, r->len);
	} else if (r->type == REDIS_REPLY_INTEGER) {
		lua_pushinteger(L, (lua_Integer)r->integer);
	} else {
		lua_pushnil(L);		/* nil, and arrays (not used) */
	}
	if (lua_pcall(L, n, 0, top + 1) != LUA_OK)
		log_warn(0, "lua: redis reply handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

static void
req_free(struct rreq *q)
{
	TAILQ_REMOVE(&q->c->queue, q, entry);
	free(q);
}

/* the connection ended (or never began): the next attempt after backoff */
static void
lost(struct rclient *c, const char *why)
{
	c->ac = NULL;
	c->retry_at = now_s() + c->backoff;
	c->backoff = c->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : c->backoff * 2;
	snprintf(c->why, sizeof(c->why), "%s", why);
	if (!c->closing)
		log_warn(0, "redis %s:%d: %s", c->host, c->port, why);
}

static void
on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rreq	*q = priv;
	struct rclient	*c = q->c;
	redisReply	*r = reply;
	char		 err[512];

	if (q->timed_out) {
		req_free(q);
		return;
	}
	if (r == NULL) {
		/* the connection is going: a call the reply's handler makes must not use it */
		if (ac == c->ac)
			lost(c, ac->errstr[0] != '\0' ? ac->errstr : "connection lost");
		snprintf(err, sizeof(err), "redis %s:%d: %s", c->host, c->port,
		    c->why[0] != '\0' ? c->why : "connection lost");
		deliver(c, q, 0, NULL, err);
	} else if (q->fn_ref == LUA_NOREF) {
		if (r->type == REDIS_REPLY_ERROR)
			log_warn(0, "redis %s:%d: %.*s", c->host, c->port, (int)r->len, r->str);
	} else {
		deliver(c, q, r->type != REDIS_REPLY_ERROR, r, NULL);
	}
	req_free(q);
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
	struct rclient *c = ac->data;

	if (c == NULL || ac != c->ac)
		return;
	if (status != REDIS_OK) {
		lost(c, ac->errstr[0] != '\0' ? ac->errstr : "cannot connect");
		return;
	}
	c->backoff = BACKOFF_MIN;
	c->why[0] = '\0';
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
	struct rclient *c = ac->data;

	(void)status;
	if (c == NULL || ac != c->ac)
		return;
	lost(c, ac->errstr[0] != '\0' ? ac->errstr : "connection closed");
}

/* drops the connection (deadline passed, or __gc) */
static void
drop(struct rclient *c, const char *why)
{
	redisAsyncContext *ac = c->ac;

	if (ac == NULL)
		return;
	lost(c, why);
	redisAsyncFree(ac);	/* answers what is in flight (why) */
}

static void
timer_arm(struct rclient *c, double seconds)
{
	struct timeval tv;

	if (seconds < 0)
		seconds = 0;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	evtimer_add(c->timer, &tv);
}

/* the oldest command in flight that was not answered yet, or NULL */
static struct rreq *
oldest(struct rclient *c)
{
	struct rreq *q;

	TAILQ_FOREACH(q, &c->queue, entry)
		if (!q->timed_out)
			return q;
	return NULL;
}

/* the deadline timer: the oldest command's has passed, or it is re-armed for it */
static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct rclient	*c = arg;
	struct rreq	*q = oldest(c), told;
	double		 now = now_s();
	char		 err[512];

	(void)fd;
	(void)what;
	if (q == NULL)
		return;
	if (q->deadline > now) {
		timer_arm(c, q->deadline - now);
		return;
	}
	q->timed_out = 1;	/* freed by on_reply, when hiredis lets it go (in drop) */
	told = *q;
	q->fn_ref = q->ctx_ref = LUA_NOREF;
	snprintf(err, sizeof(err), "redis %s:%d: timeout (%g s)", c->host, c->port, c->timeout);
	drop(c, "timeout");
	deliver(c, &told, 0, NULL, err);
}

static int
send_argv(struct rclient *c, int fn_ref, int ctx_ref, lua_Integer n, int argc,
    const char **argv, const size_t *lens)
{
	struct rreq *q;

	if ((q = calloc(1, sizeof(*q))) == NULL)
		return -1;
	q->c = c;
	q->fn_ref = fn_ref;
	q->ctx_ref = ctx_ref;
	q->n = n;
	q->deadline = now_s() + c->timeout;
	if (redisAsyncCommandArgv(c->ac, on_reply, q, argc, argv, lens) != REDIS_OK) {
		free(q);
		return -1;
	}
	TAILQ_INSERT_TAIL(&c->queue, q, entry);
	if (!evtimer_pending(c->timer, NULL))
		timer_arm(c, c->timeout);
	return 0;
}

/* connects if due: 0, or -1 with err set */
static int
ensure(struct rclient *c, char *err, size_t errlen)
{
	redisAsyncContext	*ac;
	double			 now = now_s();

	if (c->ac != NULL)
		return 0;
	if (now < c->retry_at) {
		snprintf(err, errlen, "redis %s:%d: %s (next attempt in %.1f s)", c->host, c->port,
		    c->why[0] != '\0' ? c->why : "not connected", c->retry_at - now);
		return -1;
	}
	ac = redisAsyncConnect(c->host, c->port);
	if (ac == NULL || ac->err) {
		lost(c, ac != NULL ? ac->errstr : "out of memory");
		if (ac != NULL)
			redisAsyncFree(ac);
		snprintf(err, errlen, "redis %s:%d: %s", c->host, c->port, c->why);
		return -1;
	}
	ac->data = c;
	c->ac = ac;
	redisLibeventAttach(ac, c->base);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	if (c->password != NULL) {
		const char	*argv[2] = { "AUTH", c->password };
		size_t		 lens[2] = { 4, strlen(c->password) };

		send_argv(c, LUA_NOREF, LUA_NOREF, 0, 2, argv, lens);
	}
	if (c->db != 0) {
		char		 num[16];
		const char	*argv[2] = { "SELECT", num };
		size_t		 lens[2] = { 6, 0 };

		lens[1] = (size_t)snprintf(num, sizeof(num), "%d", c->db);
		send_argv(c, LUA_NOREF, LUA_NOREF, 0, 2, argv, lens);
	}
	return 0;
}

/* client:call(fn, ctx, n, arg...) -> true | nil, err; fn(ctx, n, ok, value[, flag]) later */
static int
rclient_call(lua_State *L)
{
	struct rclient	*c = luaL_checkudata(L, 1, REDIS_MT);
	int		 argc = lua_gettop(L) - 4, i, ref, ctx;
	lua_Integer	 n = luaL_checkinteger(L, 4);
	const char	*argv[8];
	size_t		 lens[8];
	char		 err[512];

	luaL_checktype(L, 2, LUA_TFUNCTION);
	luaL_argcheck(L, argc >= 1 && argc <= 8, 5, "1 to 8 command words");
	for (i = 0; i < argc; i++)
		argv[i] = luaL_checklstring(L, 5 + i, &lens[i]);
	if (ensure(c, err, sizeof(err)) == -1) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_pushvalue(L, 2);
	ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, 3);
	ctx = luaL_ref(L, LUA_REGISTRYINDEX);	/* the words stay on the stack: argv */
	if (send_argv(c, ref, ctx, n, argc, argv, lens) == -1) {
		luaL_unref(L, LUA_REGISTRYINDEX, ref);
		luaL_unref(L, LUA_REGISTRYINDEX, ctx);
		lua_pushnil(L);
		lua_pushfstring(L, "redis %s:%d: cannot send a command", c->host, c->port);
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int
rclient_gc(lua_State *L)
{
	struct rclient *c = luaL_checkudata(L, 1, REDIS_MT);

	c->closing = 1;
	drop(c, "closed");
	if (c->timer != NULL)
		event_free(c->timer);
	c->timer = NULL;
	free(c->password);
	c->password = NULL;
	return 0;
}

/* platform.redis(host, port, timeout[, password[, db]]) -> client (upvalue: the base) */
int
lredis_open(lua_State *L)
{
	struct event_base	*base = lua_touserdata(L, lua_upvalueindex(1));
	struct redis_target	 t;
	struct rclient		*c;

	redis_target_check(L, &t, sizeof(c->host));
	c = lua_newuserdatauv(L, sizeof(*c), 0);
	memset(c, 0, sizeof(*c));
	if (luaL_newmetatable(L, REDIS_MT)) {
		lua_createtable(L, 0, 1);
		lua_pushcfunction(L, rclient_call);
		lua_setfield(L, -2, "call");
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, rclient_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	c->base = base;
	TAILQ_INIT(&c->queue);
	if ((c->timer = evtimer_new(base, on_timer, c)) == NULL)
		return luaL_error(L, "out of memory");
	lua_getfield(L, LUA_REGISTRYINDEX, "luasmtpd.main");
	c->L = lua_tothread(L, -1);
	lua_pop(L, 1);
	snprintf(c->host, sizeof(c->host), "%s", t.host);
	c->port = (int)t.port;
	c->timeout = t.timeout;
	c->db = (int)t.db;
	c->backoff = BACKOFF_MIN;
	if (t.password != NULL && (c->password = strdup(t.password)) == NULL)
		return luaL_error(L, "out of memory");
	return 1;
}
