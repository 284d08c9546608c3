/*
 * lua_nexthop.h -- the next hop for message:forward (lua_nexthop.c).
 */
#ifndef LUA_NEXTHOP_H
#define LUA_NEXTHOP_H

#include <event2/event.h>
#include <lua.h>

/*
 * Sets platform.nexthop and platform.nexthop_pool in the table on top of
 * the stack: closures over a per-state context (the event base, the
 * resolver, the pool).  The Lua side is lua/smtp/forward.lua.
 */
void	lnexthop_push(lua_State *L, struct event_base *base);

#endif
