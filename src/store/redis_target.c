/*
 * redis_target.c -- reads and range-checks the (host, port, timeout[,
 * password[, db]]) arguments shared by the server's Redis client
 * (lua_redis.c) and the blocking one (lua_store_redis.c).
 */
#include <string.h>

#include <lauxlib.h>

#include "redis_target.h"

void
redis_target_check(lua_State *L, struct redis_target *t, size_t host_size)
{
	t->host = luaL_checkstring(L, 1);
	t->port = luaL_checkinteger(L, 2);
	t->timeout = luaL_checknumber(L, 3);
	t->password = luaL_optstring(L, 4, NULL);
	t->db = luaL_optinteger(L, 5, 0);
	luaL_argcheck(L, strlen(t->host) < host_size, 1, "host name too long");
	luaL_argcheck(L, t->port > 0 && t->port < 65536, 2, "port out of range");
	luaL_argcheck(L, t->timeout > 0 && t->timeout <= 3600, 3,
	    "timeout out of range");
	luaL_argcheck(L, t->db >= 0 && t->db < 1 << 20, 5, "db out of range");
}
