/*
 * redis_target.h -- the arguments both Redis clients take, (host, port,
 * timeout[, password[, db]]), read and range-checked in one place.
 */
#ifndef REDIS_TARGET_H
#define REDIS_TARGET_H

#include <stddef.h>

#include <lua.h>

struct redis_target {
	const char	*host;
	lua_Integer	 port;
	lua_Number	 timeout;
	const char	*password;	/* NULL: no AUTH */
	lua_Integer	 db;
};

/* reads arguments 1-5; raises a Lua argument error when one is out of range */
void	redis_target_check(lua_State *, struct redis_target *, size_t host_size);

#endif
