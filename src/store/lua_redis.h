/*
 * lua_redis.h -- the Redis client of smtp.store (lua_redis.c).
 */
#ifndef LUA_REDIS_H
#define LUA_REDIS_H

#include <lua.h>

int	lredis_open(lua_State *L);

#endif
