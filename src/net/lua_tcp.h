/*
 * lua_tcp.h -- client TCP and TLS sockets for smtp.tcp (lua_tcp.c).
 */
#ifndef LUA_TCP_H
#define LUA_TCP_H

#include <event2/event.h>
#include <lua.h>

/*
 * Pushes platform.tcp_connect, a closure over a per-state context (the
 * event base, the count of open sockets, the resolver and the TLS client
 * context made on first use).  The Lua side is lua/smtp/tcp.lua.
 */
void	ltcp_push_connect(lua_State *L, struct event_base *base);

#endif
