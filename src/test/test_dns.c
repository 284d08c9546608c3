/*
 * test_dns.c -- lua_dns.c's reading of DNS messages (ldns_answer): records
 * by type with their TTLs, failures with the negative TTL of RFC 2308, and
 * messages a server may send broken (every truncation, random octets): a
 * failure value, never a read past the message (run under ASan).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_core.h"
#include "lua_dns.h"
#include "tap.h"

/* lua_dns.c's only calls into lua_core.c: nothing to watch here */
void lcore_enter(uint64_t id, const char *what) { (void)id; (void)what; }
void lcore_leave(lua_State *L) { (void)L; }

struct msg {
	unsigned char	b[4096];
	int		n;
};

static void
put(struct msg *m, const void *p, int n)
{
	memcpy(m->b + m->n, p, (size_t)n);
	m->n += n;
}

static void
put16(struct msg *m, unsigned v)
{
	unsigned char b[2] = { (unsigned char)(v >> 8), (unsigned char)v };

	put(m, b, 2);
}

static void
put32(struct msg *m, unsigned long v)
{
	put16(m, (unsigned)(v >> 16));
	put16(m, (unsigned)(v & 0xffff));
}

static void
put_name(struct msg *m, const char *name)
{
	const char *dot;

	while (*name != '\0') {
		size_t len = (dot = strchr(name, '.')) ? (size_t)(dot - name) : strlen(name);
		unsigned char l = (unsigned char)len;

		put(m, &l, 1);
		put(m, name, (int)len);
		name += len + (dot ? 1 : 0);
	}
	put(m, "", 1);
}

/* header and question: rcode, counts of answers and authority records */
static void
begin(struct msg *m, const char *qname, unsigned qtype, unsigned rcode, unsigned an, unsigned ns)
{
	m->n = 0;
	put16(m, 0x1234);
	put16(m, 0x8580 | rcode);
	put16(m, 1);
	put16(m, an);
	put16(m, ns);
	put16(m, 0);
	put_name(m, qname);
	put16(m, qtype);
	put16(m, 1);
}

/* a record owned by the question's name (a pointer to offset 12) */
static void
rr(struct msg *m, unsigned type, unsigned long ttl, const void *rdata, int len)
{
	put16(m, 0xc00c);
	put16(m, type);
	put16(m, 1);
	put32(m, ttl);
	put16(m, (unsigned)len);
	put(m, rdata, len);
}

/* runs ldns_answer; true if it pushed 4 values and left nothing else */
static bool
answer(lua_State *L, int status, const struct msg *m, int len, int qtype)
{
	int top = lua_gettop(L);

	ldns_answer(L, status, m->b, len, qtype);
	return lua_gettop(L) == top + 4;
}

static const char *
field_s(lua_State *L, int i, const char *k)
{
	const char *v;

	lua_rawgeti(L, -4, i);
	lua_getfield(L, -1, k);
	v = lua_tostring(L, -1);
	lua_pop(L, 2);
	return v;
}

static lua_Integer
field_i(lua_State *L, int i, const char *k)
{
	lua_Integer v;

	lua_rawgeti(L, -4, i);
	lua_getfield(L, -1, k);
	v = lua_tointeger(L, -1);
	lua_pop(L, 2);
	return v;
}

static void
mutate(lua_State *L, const struct msg *good, int qtype, int status, const char *what)
{
	struct msg	 m;
	int		 len, i, bad = 0;
	unsigned	 seed = 12345;

	for (len = 0; len < good->n; len++) {	/* every truncation */
		memcpy(&m, good, sizeof(m));
		if (!answer(L, status, &m, len, qtype))
			bad++;
		lua_settop(L, 0);
	}
	for (i = 0; i < 3000; i++) {		/* one to three octets changed */
		int k, n = 1 + i % 3;

		memcpy(&m, good, sizeof(m));
		for (k = 0; k < n; k++) {
			seed = seed * 1103515245 + 12345;
			m.b[(seed >> 8) % (unsigned)good->n] = (unsigned char)(seed >> 20);
		}
		if (!answer(L, status, &m, good->n, qtype))
			bad++;
		lua_settop(L, 0);
	}
	CHECK_MSG(bad == 0, "%s (%d with a wrong stack)", what, bad);
}

int
main(void)
{
	lua_State	*L = luaL_newstate();
	struct msg	 a, txt, mx, nx, cname, ptr, tlsa;
	unsigned char	 soa[64];
	struct msg	 s;

	luaL_openlibs(L);

	/* two A records */
	begin(&a, "x.test", 1, 0, 2, 0);
	rr(&a, 1, 60, "\x7f\x00\x00\x02", 4);
	rr(&a, 1, 30, "\x7f\x00\x00\x04", 4);
	CHECK(answer(L, ARES_SUCCESS, &a, a.n, 1));
	CHECK(lua_istable(L, -4));
	CHECK_INT((int)lua_rawlen(L, -4), 2);
	CHECK_STR(field_s(L, 1, "address"), "127.0.0.2");
	CHECK_INT((int)field_i(L, 1, "ttl"), 60);
	CHECK_STR(field_s(L, 2, "address"), "127.0.0.4");
	CHECK_INT((int)field_i(L, 2, "ttl"), 30);
	lua_settop(L, 0);

	/* a TXT record of two strings */
	begin(&txt, "x.test", 16, 0, 1, 0);
	rr(&txt, 16, 300, "\x07v=spf1 \x04-all", 13);
	CHECK(answer(L, ARES_SUCCESS, &txt, txt.n, 16));
	CHECK_STR(field_s(L, 1, "text"), "v=spf1 -all");
	lua_settop(L, 0);

	/* MX */
	begin(&mx, "x.test", 15, 0, 1, 0);
	rr(&mx, 15, 120, "\x00\x0a\x02mx\xc0\x0c", 7);
	CHECK(answer(L, ARES_SUCCESS, &mx, mx.n, 15));
	CHECK_STR(field_s(L, 1, "exchange"), "mx.x.test");
	CHECK_INT((int)field_i(L, 1, "preference"), 10);
	CHECK_INT((int)field_i(L, 1, "ttl"), 120);
	lua_settop(L, 0);

	/* PTR, CNAME (to an A query: no data) and TLSA as raw rdata */
	begin(&ptr, "2.0.0.127.in-addr.arpa", 12, 0, 1, 0);
	rr(&ptr, 12, 300, "\x04host\x07" "example\x00", 14);
	CHECK(answer(L, ARES_SUCCESS, &ptr, ptr.n, 12));
	CHECK_STR(field_s(L, 1, "name"), "host.example");
	lua_settop(L, 0);
	begin(&cname, "www.test", 1, 0, 1, 0);
	rr(&cname, 5, 300, "\x03" "foo\xc0\x10", 6);
	CHECK(answer(L, ARES_SUCCESS, &cname, cname.n, 5));
	CHECK_STR(field_s(L, 1, "name"), "foo.test");
	lua_settop(L, 0);
	CHECK(answer(L, ARES_SUCCESS, &cname, cname.n, 1));
	CHECK(lua_isnil(L, -4));
	CHECK_STR(lua_tostring(L, -3), "nodata");
	lua_settop(L, 0);
	begin(&tlsa, "_25._tcp.x.test", 52, 0, 1, 0);
	rr(&tlsa, 52, 300, "\x03\x01\x01\xab\xcd", 5);
	CHECK(answer(L, ARES_SUCCESS, &tlsa, tlsa.n, 52));
	lua_rawgeti(L, -4, 1);
	lua_getfield(L, -1, "data");
	CHECK(lua_rawlen(L, -1) == 5 && memcmp(lua_tostring(L, -1), "\x03\x01\x01\xab\xcd", 5) == 0);
	lua_settop(L, 0);

	/* NXDOMAIN with an SOA: the negative TTL is the smaller of its TTL and MINIMUM */
	memset(soa, 0, sizeof(soa));
	memcpy(soa, "\x02ns\xc0\x0c\x02hm\xc0\x0c", 10);
	memcpy(soa + 10 + 16, "\x00\x00\x00\x3c", 4);		/* MINIMUM 60 */
	begin(&nx, "none.test", 1, 3, 0, 1);
	rr(&nx, 6, 300, soa, 30);
	CHECK(answer(L, ARES_ENOTFOUND, &nx, nx.n, 1));
	CHECK(lua_isnil(L, -4));
	CHECK_STR(lua_tostring(L, -3), "nxdomain");
	CHECK_STR(lua_tostring(L, -2), "NXDOMAIN");
	CHECK_INT((int)lua_tointeger(L, -1), 60);
	lua_settop(L, 0);
	begin(&s, "none.test", 1, 3, 0, 1);
	rr(&s, 6, 20, soa, 30);
	CHECK(answer(L, ARES_ENOTFOUND, &s, s.n, 1));
	CHECK_INT((int)lua_tointeger(L, -1), 20);
	lua_settop(L, 0);
	/* without an SOA: no negative TTL; a timeout has no rcode */
	begin(&s, "none.test", 1, 3, 0, 0);
	CHECK(answer(L, ARES_ENOTFOUND, &s, s.n, 1));
	CHECK(lua_isnil(L, -1));
	lua_settop(L, 0);
	CHECK(answer(L, ARES_ETIMEOUT, &s, 0, 1));
	CHECK_STR(lua_tostring(L, -3), "timeout");
	CHECK(lua_isnil(L, -2));
	lua_settop(L, 0);

	/* an answer count larger than the records there: a bad answer, not a read past */
	begin(&s, "x.test", 99, 0, 3, 0);
	rr(&s, 99, 300, "ab", 2);
	CHECK(answer(L, ARES_SUCCESS, &s, s.n, 99));
	CHECK_STR(lua_tostring(L, -3), "bad answer");
	lua_settop(L, 0);
	/* a compression pointer to itself */
	begin(&s, "x.test", 5, 0, 1, 0);
	rr(&s, 5, 300, "\xc0\x00", 2);
	s.b[s.n - 2] = 0xc0;
	s.b[s.n - 1] = (unsigned char)(s.n - 2);
	CHECK(answer(L, ARES_SUCCESS, &s, s.n, 5));
	CHECK(lua_isnil(L, -4));
	lua_settop(L, 0);

	mutate(L, &a, 1, ARES_SUCCESS, "A: truncated and mutated messages");
	mutate(L, &txt, 16, ARES_SUCCESS, "TXT: truncated and mutated messages");
	mutate(L, &mx, 15, ARES_SUCCESS, "MX: truncated and mutated messages");
	mutate(L, &ptr, 12, ARES_SUCCESS, "PTR: truncated and mutated messages");
	mutate(L, &cname, 5, ARES_SUCCESS, "CNAME: truncated and mutated messages");
	mutate(L, &tlsa, 52, ARES_SUCCESS, "TLSA: truncated and mutated messages");
	mutate(L, &nx, 1, ARES_ENOTFOUND, "NXDOMAIN: truncated and mutated messages");
	lua_close(L);
	return tap_done();
}
