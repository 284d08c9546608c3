/*
 * lua_dns.h -- the DNS resolver of smtp.dns (lua_dns.c).
 */
#ifndef LUA_DNS_H
#define LUA_DNS_H

#include <event2/event.h>
#include <lua.h>

/* pushes platform.dns and platform.dnsbl, functions bound to a new resolver on base */
void	ldns_push(lua_State *L, struct event_base *base);
/* pushes an answer as fn gets it (records | nil, err, rcode, negative ttl):
 * 4 values; the parsing of a message from the network, for the tests */
void	ldns_answer(lua_State *L, int status, const unsigned char *abuf, int alen,
	    int qtype);

#endif
