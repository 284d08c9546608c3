/*
 * lua_store.h -- smtp_store, the LMDB backend of smtp.store (lua_store.c).
 */
#ifndef LUA_STORE_H
#define LUA_STORE_H

#include <lua.h>

int	luaopen_smtp_store(lua_State *L);
/* smtp_store.redis: the blocking Redis client (lua_store_redis.c) */
int	lstore_redis(lua_State *L);

#endif
