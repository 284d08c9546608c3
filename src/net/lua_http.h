/*
 * lua_http.h -- the HTTP client of smtp.http (lua_http.c).
 */
#ifndef LUA_HTTP_H
#define LUA_HTTP_H

#include <event2/event.h>
#include <lua.h>

void	lhttp_install(lua_State *L, struct event_base *base);

#endif
