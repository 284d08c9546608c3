/*
 * lua_store.h -- smtp_store, the LMDB backend of smtp.store (lua_store.c).
 */
#ifndef LUA_STORE_H
#define LUA_STORE_H

#include <stdio.h>

#include <lua.h>

int	luaopen_smtp_store(lua_State *L);
/* smtp_store.redis: the blocking Redis client (lua_store_redis.c) */
int	lstore_redis(lua_State *L);
/*
 * luasmtpd --store-dump: every live key of DIR/NAME.mdb to out, read-only
 * (the server may run), as text lines (KEY TAB TTL TAB VALUE) or, with
 * redis, as SET commands in the Redis backend's format for redis-cli
 * --pipe.  0, or -1 with one line in err.
 */
int	store_dump(const char *dir, const char *name, int redis, FILE *out,
	    char *err, size_t errlen);

#endif
