/*
 * lua_store_redis.c -- smtp_store.redis: a blocking Redis client for
 * smtp.store's Redis backend where there is no event loop to wait on
 * (smtp.testing's opts.redis: a spec against a real Redis, each call
 * answered before it returns).  The server's client is lua_redis.c's,
 * which never blocks.
 *
 * client:command(word...) -> true, value | false, err | false, err, true
 * (an error reply of Redis): the answers lua_redis.c's callbacks get, as
 * the same Lua values.  It connects at the first command and again after a
 * failure; AUTH and SELECT follow each connect.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>

#include "redis_target.h"
#include "lua_store.h"

#define SYNC_MT		"smtp_store.redis"
#define SYNC_WORDS	16

struct sclient {
	redisContext	*rc;		/* NULL: not connected */
	char		 host[256];
	int		 port;
	struct timeval	 timeout;
	char		*password;
	int		 db;
};

/* pushes false, "redis HOST:PORT: why" and drops the connection */
static int
sync_fail(lua_State *L, struct sclient *c, const char *why)
{
	lua_pushboolean(L, 0);
	lua_pushfstring(L, "redis %s:%d: %s", c->host, c->port, why);
	if (c->rc != NULL) {
		redisFree(c->rc);
		c->rc = NULL;
	}
	return 2;
}

/* one command on the connection: its reply (freeReplyObject), or NULL */
static redisReply *
sync_command(struct sclient *c, int argc, const char **argv, const size_t *lens)
{
	return redisCommandArgv(c->rc, argc, argv, lens);
}

/* connects, authenticates and selects the db: NULL, or why not */
static const char *
sync_connect(struct sclient *c, char *why, size_t whylen)
{
	redisReply	*r;
	char		 num[16];
	const char	*argv[2];
	size_t		 lens[2];

	if (c->rc != NULL)
		return NULL;
	c->rc = redisConnectWithTimeout(c->host, c->port, c->timeout);
	if (c->rc == NULL || c->rc->err) {
		snprintf(why, whylen, "%s", c->rc != NULL ? c->rc->errstr : "out of memory");
		return why;
	}
	redisSetTimeout(c->rc, c->timeout);
	for (int i = 0; i < 2; i++) {
		if (i == 0 && c->password == NULL)
			continue;
		if (i == 1 && c->db == 0)
			continue;
		argv[0] = i == 0 ? "AUTH" : "SELECT";
		argv[1] = i == 0 ? c->password : num;
		lens[0] = strlen(argv[0]);
		lens[1] = i == 0 ? strlen(c->password) :
		    (size_t)snprintf(num, sizeof(num), "%d", c->db);
		if ((r = sync_command(c, 2, argv, lens)) == NULL) {
			snprintf(why, whylen, "%s", c->rc->errstr);
			return why;
		}
		if (r->type == REDIS_REPLY_ERROR) {
			snprintf(why, whylen, "%s: %.*s", argv[0], (int)r->len, r->str);
			freeReplyObject(r);
			return why;
		}
		freeReplyObject(r);
	}
	return NULL;
}

/* client:command(word...) -> true, value | false, err | false, err, true */
static int
sync_call(lua_State *L)
{
	struct sclient	*c = luaL_checkudata(L, 1, SYNC_MT);
	int		 argc = lua_gettop(L) - 1, n;
	const char	*argv[SYNC_WORDS];
	size_t		 lens[SYNC_WORDS];
	char		 why[256];
	redisReply	*r;

	luaL_argcheck(L, argc >= 1 && argc <= SYNC_WORDS, 2, "1 to 16 command words");
	for (int i = 0; i < argc; i++)
		argv[i] = luaL_checklstring(L, 2 + i, &lens[i]);
	if (sync_connect(c, why, sizeof(why)) != NULL)
		return sync_fail(L, c, why);
	if ((r = sync_command(c, argc, argv, lens)) == NULL)
		return sync_fail(L, c, c->rc->errstr[0] != '\0' ? c->rc->errstr : "connection lost");
	n = 2;
	lua_pushboolean(L, r->type != REDIS_REPLY_ERROR);
	switch (r->type) {
	case REDIS_REPLY_ERROR:
		lua_pushlstring(L, r->str, r->len);
		lua_pushboolean(L, 1);
		n = 3;
		break;
	case REDIS_REPLY_STRING:
	case REDIS_REPLY_STATUS:
		lua_pushlstring(L, r->str, r->len);
		break;
	case REDIS_REPLY_INTEGER:
		lua_pushinteger(L, (lua_Integer)r->integer);
		break;
	default:
		lua_pushnil(L);		/* nil, and arrays (not used) */
	}
	freeReplyObject(r);
	return n;
}

static int
sync_gc(lua_State *L)
{
	struct sclient *c = luaL_checkudata(L, 1, SYNC_MT);

	if (c->rc != NULL)
		redisFree(c->rc);
	c->rc = NULL;
	free(c->password);
	c->password = NULL;
	return 0;
}

/* smtp_store.redis(host, port, timeout[, password[, db]]) -> client */
int
lstore_redis(lua_State *L)
{
	struct redis_target	 t;
	struct sclient		*c;

	redis_target_check(L, &t, sizeof(c->host));
	c = lua_newuserdatauv(L, sizeof(*c), 0);
	memset(c, 0, sizeof(*c));
	if (luaL_newmetatable(L, SYNC_MT)) {
		lua_createtable(L, 0, 1);
		lua_pushcfunction(L, sync_call);
		lua_setfield(L, -2, "command");
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, sync_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	snprintf(c->host, sizeof(c->host), "%s", t.host);
	c->port = (int)t.port;
	c->timeout.tv_sec = (time_t)t.timeout;
	c->timeout.tv_usec = (suseconds_t)((t.timeout - (lua_Number)c->timeout.tv_sec) * 1e6);
	c->db = (int)t.db;
	if (t.password != NULL && (c->password = strdup(t.password)) == NULL)
		return luaL_error(L, "out of memory");
	return 1;
}
