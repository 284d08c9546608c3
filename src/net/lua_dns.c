/*
 * lua_dns.c -- the DNS resolver of smtp.dns (lua/smtp/dns.lua):
 * platform.dns(name, qtype, opts, fn[, i]) -> true | nil, err, and
 * platform.dnsbl(rev, zones, opts, fn, deadline), smtp.dnsbl's A lookups
 * of every zone in one call, answered to Lua once (see platform_dnsbl).
 *
 * Owns one c-ares channel per worker on the worker's event base: c-ares
 * says which sockets it wants watched (ARES_OPT_SOCK_STATE_CB), each gets
 * a libevent event that calls ares_process_fd, and one timer follows
 * ares_timeout() for retries and timeouts.  c-ares does the rest: the
 * servers of /etc/resolv.conf or opts.servers, tries, and the retry over
 * TCP of a truncated UDP answer.  An answer is parsed here with c-ares's
 * parsers (A, AAAA, MX, TXT, PTR) or, for other types, walked for the
 * records of the type asked (a CNAME's or NS's name expanded, anything
 * else as raw rdata) into a list of Lua tables; fn(records, nil, nil, nil, i) or
 * fn(nil, err, rcode, negative_ttl | nil, i) (RFC 2308: from the SOA of a
 * name-error or no-data answer; i: the caller's integer, so that one fn
 * serves a batch) runs later from the event loop, never during the
 * call (a lookup that fails at once returns nil, err, rcode instead).  The channel is made at the first lookup (loading a script never
 * resolves) and again only if opts change; the cache and per-lookup
 * deadlines are dns.lua's.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "lua_core.h"
#include "lua_dns.h"

#define DNS_MT		"luasmtpd.dns"
#define RECORDS_MAX	256		/* records of one answer given to Lua */
#define DNSBL_MAX	32		/* zones of one platform.dnsbl */
#define DNSBL_MAX_S	"32"
#define CONFIG_MAX	512
#define RCVBUF		(4 << 20)	/* octets of UDP answers the kernel may queue */
#define T_A		1
#define T_NS		2
#define T_CNAME		5
#define T_PTR		12
#define T_MX		15
#define T_TXT		16
#define T_AAAA		28

struct dns_sock {
	ares_socket_t		 fd;
	struct event		*ev;
	struct dns_sock		*next;
};

struct resolver {
	struct event_base	*base;
	lua_State		*L;		/* the main thread: callbacks run there */
	ares_channel		 channel;
	int			 have_channel;
	char			 config[CONFIG_MAX];	/* the opts it was made with */
	struct event		*timer;		/* ares_timeout() */
	struct dns_sock		*socks;
	int			 closing;	/* in __gc: no more Lua */
	int			 querying;	/* inside ares_query: answers wait */
	int			 dispatching;	/* inside ares_process_fd: the channel stays */
	long			 timeout_ms;	/* the channel's (first try's) timeout */
	lua_State		*qL;		/* inside platform_dnsbl: its thread */
	struct dnsbl_batch	*batches;	/* platform.dnsbl's not yet freed */
};

struct dns_query {
	struct resolver	*r;
	int		 fn_ref;
	int		 qtype;
	lua_Integer	 i;		/* given back to fn; 0: none */
	int		 early;		/* answered inside ares_query */
	int		 early_status;
};

static void	arm_timer(struct resolver *);

/* ---- c-ares on libevent --------------------------------------------------- */

static void
on_socket(evutil_socket_t fd, short what, void *arg)
{
	struct resolver *r = arg;

	r->dispatching = 1;
	ares_process_fd(r->channel, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
	    (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	r->dispatching = 0;
	arm_timer(r);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct resolver *r = arg;

	(void)fd;
	(void)what;
	r->dispatching = 1;
	ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	r->dispatching = 0;
	arm_timer(r);
}

static void
arm_timer(struct resolver *r)
{
	struct timeval tv, *t;

	if (!r->have_channel)
		return;
	if ((t = ares_timeout(r->channel, NULL, &tv)) != NULL)
		evtimer_add(r->timer, t);
	else
		evtimer_del(r->timer);
}

/*
 * After a lookup went out: its deadline (now + the channel's timeout) is
 * the earliest only if no timer is armed, or the armed one is later (a
 * retry's doubled timeout); otherwise the timer stays as it is (no
 * ares_timeout walk and event_add per lookup of a batch).
 */
static void
arm_timer_sent(struct resolver *r)
{
	struct timeval	 due, now, next;

	if (evtimer_pending(r->timer, &due) &&
	    event_base_gettimeofday_cached(r->base, &now) == 0) {
		next.tv_sec = now.tv_sec + r->timeout_ms / 1000;
		next.tv_usec = now.tv_usec + (r->timeout_ms % 1000) * 1000;
		if (next.tv_usec >= 1000000) {
			next.tv_sec++;
			next.tv_usec -= 1000000;
		}
		if (!evutil_timercmp(&next, &due, <))
			return;
	}
	arm_timer(r);
}

/* c-ares opens, changes or closes a socket: what libevent watches follows */
static void
on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct resolver	 *r = data;
	struct dns_sock	**pp, *s;

	for (pp = &r->socks; (s = *pp) != NULL; pp = &s->next)
		if (s->fd == fd)
			break;
	if (s != NULL && s->ev != NULL) {
		event_free(s->ev);
		s->ev = NULL;
	}
	if (!readable && !writable) {
		if (s != NULL) {
			*pp = s->next;
			free(s);
		}
		return;
	}
	if (s == NULL) {
		if ((s = calloc(1, sizeof(*s))) == NULL)
			goto fail;
		s->fd = fd;
		s->next = r->socks;
		r->socks = s;
	}
	s->ev = event_new(r->base, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0) |
	    EV_PERSIST, on_socket, r);
	if (s->ev == NULL || event_add(s->ev, NULL) == -1)
		goto fail;
	return;
fail:
	/* the lookups on this socket end in their timeout */
	log_warn(0, "dns: cannot watch a socket (out of memory)");
}

/* ---- answers to Lua ---------------------------------------------------------- */

static unsigned
get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/*
 * Moves *p past the name there (labels, ending in a root label or a
 * compression pointer, which is not followed): 0, or -1 if malformed.
 */
static int
skip_name(const unsigned char *abuf, int alen, int *p)
{
	int q = *p;

	while (q < alen) {
		unsigned l = abuf[q];

		if (l == 0) {
			*p = q + 1;
			return 0;
		}
		if ((l & 0xc0) == 0xc0) {
			if (q + 2 > alen)
				return -1;
			*p = q + 2;
			return 0;
		}
		if ((l & 0xc0) != 0)
			return -1;
		q += 1 + (int)l;
	}
	return -1;
}

struct rr {
	unsigned	 type, class, rdlen;
	unsigned long	 ttl;
	int		 rdata;		/* offset of the rdata in the message */
};

/* reads the record at *p and moves past it: 0, or -1 if malformed */
static int
next_rr(const unsigned char *abuf, int alen, int *p, struct rr *rr)
{
	const unsigned char *h;

	if (skip_name(abuf, alen, p) == -1 || *p + 10 > alen)
		return -1;
	h = abuf + *p;
	rr->type = get16(h);
	rr->class = get16(h + 2);
	rr->ttl = (unsigned long)h[4] << 24 | (unsigned long)h[5] << 16 |
	    (unsigned long)h[6] << 8 | h[7];
	rr->rdlen = get16(h + 8);
	rr->rdata = *p + 10;
	if (rr->rdata + (int)rr->rdlen > alen)
		return -1;
	*p = rr->rdata + (int)rr->rdlen;
	return 0;
}

/* the offset of the answer section, or -1 */
static int
skip_question(const unsigned char *abuf, int alen)
{
	unsigned	 qd, i;
	int		 p = 12;

	if (alen < 12)
		return -1;
	qd = get16(abuf + 4);
	for (i = 0; i < qd; i++) {
		if (skip_name(abuf, alen, &p) == -1)
			return -1;
		p += 4;
		if (p > alen)
			return -1;
	}
	return p;
}

/*
 * Walks the answer section: for each record of qtype (class IN), fn(L,
 * abuf, alen, rdata offset, rdlength, ttl, i).  The smallest TTL of those
 * records in *minttl.  -1 if the message is malformed.
 */
typedef int (*rr_fn)(lua_State *, const unsigned char *, int, int, int, unsigned long, int);

static int
walk_answers(lua_State *L, const unsigned char *abuf, int alen, int qtype, rr_fn fn,
    unsigned long *minttl)
{
	unsigned	 an, i;
	int		 p, n = 0;
	struct rr	 rr;

	if ((p = skip_question(abuf, alen)) == -1)
		return -1;
	an = get16(abuf + 6);
	for (i = 0; i < an; i++) {
		if (next_rr(abuf, alen, &p, &rr) == -1)
			return -1;
		if ((int)rr.type != qtype || rr.class != 1)
			continue;
		if (rr.ttl < *minttl)
			*minttl = rr.ttl;
		if (fn != NULL && n < RECORDS_MAX) {
			if (fn(L, abuf, alen, rr.rdata, (int)rr.rdlen, rr.ttl, n + 1) == -1)
				return -1;
			n++;
		}
	}
	return 0;
}

/*
 * How long a negative answer may be cached (RFC 2308 5): the smaller of
 * the TTL of the SOA in the authority section and its MINIMUM; -1 if there
 * is no SOA (or the message is malformed).
 */
static long
negative_ttl(const unsigned char *abuf, int alen)
{
	unsigned	 an, ns, i;
	int		 p, q;
	struct rr	 rr;
	unsigned long	 min;

	if ((p = skip_question(abuf, alen)) == -1)
		return -1;
	an = get16(abuf + 6);
	ns = get16(abuf + 8);
	for (i = 0; i < an + ns; i++) {
		if (next_rr(abuf, alen, &p, &rr) == -1)
			return -1;
		if (i < an || rr.type != 6)
			continue;
		q = rr.rdata;
		if (skip_name(abuf, alen, &q) == -1 || skip_name(abuf, alen, &q) == -1 ||
		    q + 20 > rr.rdata + (int)rr.rdlen)
			return -1;
		min = (unsigned long)abuf[q + 16] << 24 | (unsigned long)abuf[q + 17] << 16 |
		    (unsigned long)abuf[q + 18] << 8 | abuf[q + 19];
		return (long)(min < rr.ttl ? min : rr.ttl);
	}
	return -1;
}

static void
set_ttl(lua_State *L, unsigned long ttl)
{
	lua_pushinteger(L, (lua_Integer)(ttl > 0x7fffffffUL ? 0x7fffffffUL : ttl));
	lua_setfield(L, -2, "ttl");
}

/* a CNAME or NS record: its name, expanded by c-ares */
static int
rr_name(lua_State *L, const unsigned char *abuf, int alen, int off, int len,
    unsigned long ttl, int i)
{
	char	*name;
	long	 n;

	(void)len;
	if (ares_expand_name(abuf + off, abuf, alen, &name, &n) != ARES_SUCCESS)
		return -1;
	lua_createtable(L, 0, 2);
	lua_pushstring(L, name);
	ares_free_string(name);
	lua_setfield(L, -2, "name");
	set_ttl(L, ttl);
	lua_rawseti(L, -2, i);
	return 0;
}

/* any other type: its rdata as it is */
static int
rr_raw(lua_State *L, const unsigned char *abuf, int alen, int off, int len,
    unsigned long ttl, int i)
{
	(void)alen;
	lua_createtable(L, 0, 2);
	lua_pushlstring(L, (const char *)abuf + off, (size_t)len);
	lua_setfield(L, -2, "data");
	set_ttl(L, ttl);
	lua_rawseti(L, -2, i);
	return 0;
}

static int
push_addresses(lua_State *L, const unsigned char *abuf, int alen, int qtype)
{
	struct ares_addrttl	 a4[RECORDS_MAX];
	struct ares_addr6ttl	 a6[RECORDS_MAX];
	int			 n = RECORDS_MAX, i, rc;
	char			 text[INET6_ADDRSTRLEN];

	if (qtype == T_A)
		rc = ares_parse_a_reply(abuf, alen, NULL, a4, &n);
	else
		rc = ares_parse_aaaa_reply(abuf, alen, NULL, a6, &n);
	if (rc != ARES_SUCCESS)
		return rc;
	lua_createtable(L, n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 0, 2);
		if (qtype == T_A)
			inet_ntop(AF_INET, &a4[i].ipaddr, text, sizeof(text));
		else
			inet_ntop(AF_INET6, &a6[i].ip6addr, text, sizeof(text));
		lua_pushstring(L, text);
		lua_setfield(L, -2, "address");
		set_ttl(L, (unsigned long)(qtype == T_A ? a4[i].ttl : a6[i].ttl));
		lua_rawseti(L, -2, i + 1);
	}
	return ARES_SUCCESS;
}

static int
push_mx(lua_State *L, const unsigned char *abuf, int alen, unsigned long ttl)
{
	struct ares_mx_reply	*mx, *m;
	int			 rc, i = 0;

	if ((rc = ares_parse_mx_reply(abuf, alen, &mx)) != ARES_SUCCESS)
		return rc;
	lua_newtable(L);
	for (m = mx; m != NULL && i < RECORDS_MAX; m = m->next) {
		lua_createtable(L, 0, 3);
		lua_pushinteger(L, m->priority);
		lua_setfield(L, -2, "preference");
		lua_pushstring(L, m->host);
		lua_setfield(L, -2, "exchange");
		set_ttl(L, ttl);
		lua_rawseti(L, -2, ++i);
	}
	ares_free_data(mx);
	return ARES_SUCCESS;
}

/* a TXT record: text (its strings joined) and strings */
static int
push_txt(lua_State *L, const unsigned char *abuf, int alen, unsigned long ttl)
{
	struct ares_txt_ext	*txt, *t;
	luaL_Buffer		 b;
	int			 rc, i = 0, j = 0;

	if ((rc = ares_parse_txt_reply_ext(abuf, alen, &txt)) != ARES_SUCCESS)
		return rc;
	lua_newtable(L);
	for (t = txt; t != NULL && i < RECORDS_MAX; ) {
		struct ares_txt_ext *u;

		lua_createtable(L, 0, 3);
		luaL_buffinit(L, &b);
		for (u = t; u != NULL && (u == t || !u->record_start); u = u->next)
			luaL_addlstring(&b, (const char *)u->txt, u->length);
		luaL_pushresult(&b);
		lua_setfield(L, -2, "text");
		lua_newtable(L);
		j = 0;
		do {
			lua_pushlstring(L, (const char *)t->txt, t->length);
			lua_rawseti(L, -2, ++j);
			t = t->next;
		} while (t != NULL && !t->record_start);
		lua_setfield(L, -2, "strings");
		set_ttl(L, ttl);
		lua_rawseti(L, -2, ++i);
	}
	ares_free_data(txt);
	return ARES_SUCCESS;
}

static int
push_ptr(lua_State *L, const unsigned char *abuf, int alen, unsigned long ttl)
{
	struct hostent	*h;
	unsigned char	 addr[4] = { 0, 0, 0, 0 };	/* c-ares copies it into h */
	int		 rc, i, n = 0;

	if ((rc = ares_parse_ptr_reply(abuf, alen, addr, sizeof(addr), AF_INET, &h)) !=
	    ARES_SUCCESS)
		return rc;
	lua_newtable(L);
	/* h_name is the first name; h_aliases lists every name, h_name too */
	for (i = h->h_aliases[0] != NULL ? 0 : -1; n < RECORDS_MAX; i++) {
		const char *name = i < 0 ? h->h_name : h->h_aliases[i];

		if (name == NULL || (i < 0 && n > 0))
			break;
		lua_createtable(L, 0, 2);
		lua_pushstring(L, name);
		lua_setfield(L, -2, "name");
		set_ttl(L, ttl);
		lua_rawseti(L, -2, ++n);
	}
	ares_free_hostent(h);
	return ARES_SUCCESS;
}

/* pushes the records of qtype in abuf, or returns a c-ares status */
static int
push_records(lua_State *L, const unsigned char *abuf, int alen, int qtype)
{
	unsigned long	 ttl = 0xffffffffUL;
	int		 top = lua_gettop(L), rc;

	if (qtype == T_A || qtype == T_AAAA)
		rc = push_addresses(L, abuf, alen, qtype);
	else if (walk_answers(L, abuf, alen, qtype, NULL, &ttl) == -1)
		rc = ARES_EBADRESP;
	else if (qtype == T_MX)
		rc = push_mx(L, abuf, alen, ttl);
	else if (qtype == T_TXT)
		rc = push_txt(L, abuf, alen, ttl);
	else if (qtype == T_PTR)
		rc = push_ptr(L, abuf, alen, ttl);
	else {
		lua_newtable(L);
		rc = walk_answers(L, abuf, alen, qtype,
		    qtype == T_CNAME || qtype == T_NS ? rr_name : rr_raw, &ttl) == -1 ?
		    ARES_EBADRESP : ARES_SUCCESS;
	}
	if (rc != ARES_SUCCESS) {
		lua_settop(L, top);
		return rc;
	}
	if (lua_rawlen(L, -1) == 0) {	/* answers, none of the type (a CNAME only) */
		lua_settop(L, top);
		return ARES_ENODATA;
	}
	return ARES_SUCCESS;
}

/* what a failure's status is to Lua: err, rcode (NULL: none) */
static const struct {
	int		 status;
	const char	*err, *rcode;
} failures[] = {
	{ ARES_ENOTFOUND,	"nxdomain",	"NXDOMAIN" },
	{ ARES_ENODATA,		"nodata",	"NOERROR" },
	{ ARES_ESERVFAIL,	"servfail",	"SERVFAIL" },
	{ ARES_EREFUSED,	"refused",	"REFUSED" },
	{ ARES_EFORMERR,	"formerr",	"FORMERR" },
	{ ARES_ENOTIMP,		"notimp",	"NOTIMP" },
	{ ARES_ETIMEOUT,	"timeout",	NULL },
	{ ARES_ECONNREFUSED,	"unreachable",	NULL },
	{ ARES_EBADRESP,	"bad answer",	NULL },
	{ ARES_EBADNAME,	"bad name",	NULL },
};

/* pushes nil, err, rcode for a c-ares status */
static void
push_failure(lua_State *L, int status)
{
	size_t i;

	lua_pushnil(L);
	for (i = 0; i < sizeof(failures) / sizeof(failures[0]); i++) {
		if (failures[i].status == status) {
			lua_pushstring(L, failures[i].err);
			if (failures[i].rcode != NULL)
				lua_pushstring(L, failures[i].rcode);
			else
				lua_pushnil(L);
			return;
		}
	}
	lua_pushstring(L, ares_strerror(status));
	lua_pushnil(L);
}

/*
 * Keeps the strings of push_failure alive in L (the user values of the
 * resolver at the top of the stack): pushing one then finds it, rather
 * than making it again for every answer.
 */
static void
anchor_failures(lua_State *L)
{
	size_t i, n = sizeof(failures) / sizeof(failures[0]);

	lua_createtable(L, (int)(2 * n), 0);
	for (i = 0; i < n; i++) {
		lua_pushstring(L, failures[i].err);
		lua_rawseti(L, -2, (lua_Integer)(2 * i + 1));
		if (failures[i].rcode != NULL) {
			lua_pushstring(L, failures[i].rcode);
			lua_rawseti(L, -2, (lua_Integer)(2 * i + 2));
		}
	}
	lua_setiuservalue(L, -2, 2);
}

/*
 * Pushes what fn gets for a c-ares status and answer: records, nil, nil,
 * nil; or nil, err, rcode, negative TTL | nil.  Always 4 values.
 */
void
ldns_answer(lua_State *L, int status, const unsigned char *abuf, int alen, int qtype)
{
	long neg = -1;

	if (status == ARES_SUCCESS)
		status = abuf != NULL ? push_records(L, abuf, alen, qtype) : ARES_EBADRESP;
	if (status == ARES_SUCCESS) {
		lua_pushnil(L);
		lua_pushnil(L);
		lua_pushnil(L);
		return;
	}
	push_failure(L, status);
	if ((status == ARES_ENOTFOUND || status == ARES_ENODATA) && abuf != NULL)
		neg = negative_ttl(abuf, alen);
	if (neg >= 0)
		lua_pushinteger(L, neg);
	else
		lua_pushnil(L);
}

static void
on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_query	*q = arg;
	struct resolver		*r = q->r;
	lua_State		*L = r->L;
	int			 top;

	(void)timeouts;
	if (r->querying) {		/* platform_dns returns it */
		q->early = 1;
		q->early_status = status;
		return;
	}
	if (r->closing || status == ARES_EDESTRUCTION) {
		if (!r->closing)
			luaL_unref(L, LUA_REGISTRYINDEX, q->fn_ref);
		free(q);
		return;
	}
	top = lua_gettop(L);
	lcore_enter(0, "dns");
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, q->fn_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, q->fn_ref);
	ldns_answer(L, status, abuf, alen, q->qtype);
	if (q->i != 0)
		lua_pushinteger(L, q->i);
	else
		lua_pushnil(L);
	free(q);
	if (lua_pcall(L, 5, 0, top + 1) != LUA_OK)
		log_warn(0, "lua: dns answer handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

/* ---- the Lua side ---------------------------------------------------------- */

static void
resolver_close(struct resolver *r)
{
	struct dns_sock *s;

	if (r->have_channel) {
		ares_destroy(r->channel);	/* each lookup's on_answer: ARES_EDESTRUCTION */
		r->have_channel = 0;
	}
	while ((s = r->socks) != NULL) {	/* c-ares told us of every close, normally */
		r->socks = s->next;
		if (s->ev != NULL)
			event_free(s->ev);
		free(s);
	}
	evtimer_del(r->timer);
}

/* (re)makes the channel for opts (at stack index 3): 0, or -1 and a message */
static int
resolver_setup(lua_State *L, struct resolver *r, char *err, size_t errlen)
{
	struct ares_options	 o;
	const char		*servers;
	lua_Number		 timeout;
	lua_Integer		 tries;
	char			 config[CONFIG_MAX];
	int			 rc, mask;

	/* the same opts table as last time (dns.lua keeps one): nothing to do */
	lua_getiuservalue(L, lua_upvalueindex(1), 1);
	/*
	 * ... or an answer's handler asks (inside ares_process_fd, which must
	 * not see its channel destroyed): the channel as it is, for now
	 */
	if (r->have_channel && (lua_rawequal(L, -1, 3) || r->dispatching)) {
		lua_pop(L, 1);
		return 0;
	}
	lua_pop(L, 1);
	lua_getfield(L, 3, "servers");
	servers = lua_tostring(L, -1);
	lua_getfield(L, 3, "timeout");
	timeout = luaL_optnumber(L, -1, 2.0);
	lua_getfield(L, 3, "tries");
	tries = luaL_optinteger(L, -1, 2);
	lua_pop(L, 3);
	if (timeout <= 0 || timeout > 3600 || tries < 1 || tries > 100) {
		snprintf(err, errlen, "dns: timeout or tries out of range");
		return -1;
	}
	if ((size_t)snprintf(config, sizeof(config), "%s|%g|%lld", servers ? servers : "",
	    timeout, (long long)tries) >= sizeof(config)) {
		snprintf(err, errlen, "dns: too many servers");
		return -1;
	}
	if (r->have_channel && strcmp(config, r->config) == 0)
		goto same;
	resolver_close(r);
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = on_sock_state;
	o.sock_state_cb_data = r;
	o.timeout = (int)(timeout * 1000 + 0.5);
	r->timeout_ms = o.timeout;
	o.tries = (int)tries;
	/* a SERVFAIL or REFUSED answer is the answer (not "unreachable") */
	o.flags = ARES_FLAG_NOCHECKRESP;
	/* one UDP socket per server, kept: no socket, connect, close per lookup */
	o.flags |= ARES_FLAG_STAYOPEN;
	/*
	 * Room for a burst of answers (a thousand sessions' lookups answered at
	 * once): the default buffer holds a few hundred datagrams, and an
	 * answer dropped there is a lookup that times out.  The kernel caps it
	 * at net.core.rmem_max.
	 */
	o.socket_receive_buffer_size = RCVBUF;
	mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS |
	    ARES_OPT_SOCK_RCVBUF;
	if ((rc = ares_init_options(&r->channel, &o, mask)) != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: %s", ares_strerror(rc));
		return -1;
	}
	r->have_channel = 1;
	if (servers != NULL && servers[0] != '\0' &&
	    (rc = ares_set_servers_ports_csv(r->channel, servers)) != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: resolvers %s: %s", servers, ares_strerror(rc));
		resolver_close(r);
		return -1;
	}
	snprintf(r->config, sizeof(r->config), "%s", config);
same:
	lua_pushvalue(L, 3);
	lua_setiuservalue(L, lua_upvalueindex(1), 1);
	return 0;
}

/*
 * platform.dns(name, qtype, opts, fn[, i]) -> true | nil, err, rcode
 * (upvalue: the resolver)
 */
static int
platform_dns(lua_State *L)
{
	struct resolver		*r = lua_touserdata(L, lua_upvalueindex(1));	/* ldns_push's */
	size_t			 len;
	const char		*name = luaL_checklstring(L, 1, &len);
	lua_Integer		 qtype = luaL_checkinteger(L, 2);
	struct dns_query	*q;
	lua_Integer		 i;
	char			 err[CONFIG_MAX + 64];

	luaL_checktype(L, 3, LUA_TTABLE);
	luaL_checktype(L, 4, LUA_TFUNCTION);
	luaL_argcheck(L, len > 0 && len < 256 && strlen(name) == len, 1, "bad name");
	luaL_argcheck(L, qtype > 0 && qtype < 65536, 2, "type out of range");
	i = luaL_optinteger(L, 5, 0);
	if (resolver_setup(L, r, err, sizeof(err)) == -1) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	if ((q = calloc(1, sizeof(*q))) == NULL)
		return luaL_error(L, "out of memory");
	q->r = r;
	q->qtype = (int)qtype;
	q->i = i;
	lua_pushvalue(L, 4);
	q->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	/* on_answer may run inside ares_query (a bad name): fn is not called then */
	r->querying = 1;
	ares_query(r->channel, name, 1 /* IN */, (int)qtype, on_answer, q);
	r->querying = 0;
	arm_timer_sent(r);
	if (q->early) {
		luaL_unref(L, LUA_REGISTRYINDEX, q->fn_ref);
		push_failure(L, q->early_status);
		free(q);
		return 3;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* ---- DNSBL batches: platform.dnsbl ------------------------------------------ */

/*
 * The A lookups of smtp.dnsbl for one address: rev.zone for every zone,
 * answered into this struct, and fn called once when all are answered or
 * at the deadline.  A name error or no data (a zone that does not list the
 * address, nearly always every zone) stays here as an integer; anything
 * else (records, other failures) is made into Lua values as it comes.
 */
struct dnsbl_part {
	struct dnsbl_batch	*b;
	int			 i;		/* 0-based zone */
	int			 answered;
	lua_Integer		 code;		/* as fn gets it (dnsbl_deliver) */
};

struct dnsbl_batch {
	struct resolver		*r;
	struct dnsbl_batch	*next, **prevp;	/* r->batches */
	struct event		*deadline;
	int			 fn_ref;
	int			 res_ref;	/* LUA_NOREF until a zone needs a table */
	int			 n;
	int			 left;		/* lookups c-ares has not answered */
	int			 delivered;
	int			 pending;	/* n: zones without an answer yet */
	struct dnsbl_part	 part[];	/* n of them */
};

static void
dnsbl_free(struct dnsbl_batch *b)
{
	if ((*b->prevp = b->next) != NULL)
		b->next->prevp = b->prevp;
	if (b->deadline != NULL)
		event_free(b->deadline);
	free(b);
}

/*
 * fn(res | nil, c1 ... cn): res[i] = { records | false, err | false,
 * rcode | false, negative ttl | false } for the zones answered otherwise
 * than by a name error or no data, or not at all by the deadline
 * ("timeout"); ci for the others: 2 x negative ttl + (1 if no data), or
 * -2 + (1 if no data) without an SOA.
 */
static void
dnsbl_deliver(struct dnsbl_batch *b)
{
	struct resolver	*r = b->r;
	lua_State	*L = r->L;
	int		 top, i;

	b->delivered = 1;
	if (b->deadline != NULL)
		evtimer_del(b->deadline);
	top = lua_gettop(L);
	lcore_enter(0, "dns");
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->fn_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, b->fn_ref);
	b->fn_ref = LUA_NOREF;
	for (i = 0; i < b->n; i++) {
		if (b->part[i].answered)
			continue;
		if (b->res_ref == LUA_NOREF) {
			lua_createtable(L, b->n, 0);
			b->res_ref = luaL_ref(L, LUA_REGISTRYINDEX);
		}
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->res_ref);
		lua_createtable(L, 4, 0);
		lua_pushboolean(L, 0);
		lua_rawseti(L, -2, 1);
		lua_pushliteral(L, "timeout");
		lua_rawseti(L, -2, 2);
		lua_pushboolean(L, 0);
		lua_rawseti(L, -2, 3);
		lua_pushboolean(L, 0);
		lua_rawseti(L, -2, 4);
		lua_rawseti(L, -2, i + 1);
		lua_pop(L, 1);
	}
	if (b->res_ref != LUA_NOREF) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->res_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, b->res_ref);
		b->res_ref = LUA_NOREF;
	} else
		lua_pushnil(L);
	for (i = 0; i < b->n; i++)
		lua_pushinteger(L, b->part[i].code);
	if (lua_pcall(L, 1 + b->n, 0, top + 1) != LUA_OK)
		log_warn(0, "lua: dnsbl answer handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

static void
dnsbl_on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct dnsbl_batch *b = arg;

	(void)fd;
	(void)what;
	if (!b->delivered)
		dnsbl_deliver(b);
	if (b->left == 0)
		dnsbl_free(b);
}

/* the answer of one zone, kept (L: a thread of the worker's state) */
static void
dnsbl_keep(lua_State *L, struct dnsbl_batch *b, int i, int status, const unsigned char *abuf,
    int alen)
{
	int j;

	b->part[i].answered = 1;
	b->pending--;
	if ((status == ARES_ENOTFOUND || status == ARES_ENODATA) && abuf != NULL) {
		long neg = negative_ttl(abuf, alen);

		b->part[i].code = (neg >= 0 ? 2 * (lua_Integer)neg : -2) + (status == ARES_ENODATA);
		return;
	}
	if (b->res_ref == LUA_NOREF) {
		lua_createtable(L, b->n, 0);
		b->res_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->res_ref);
	lua_createtable(L, 4, 0);
	ldns_answer(L, status, abuf, alen, T_A);
	for (j = 4; j >= 1; j--) {
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			lua_pushboolean(L, 0);
		}
		lua_rawseti(L, -1 - j, j);
	}
	lua_rawseti(L, -2, i + 1);
	lua_pop(L, 1);
}

static void
dnsbl_on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dnsbl_part	*p = arg;
	struct dnsbl_batch	*b = p->b;
	struct resolver		*r = b->r;

	(void)timeouts;
	b->left--;
	if (r->closing) {
		if (b->left == 0)
			dnsbl_free(b);
		return;
	}
	/* the channel remade or gone: the deadline answers for this zone */
	if (status != ARES_EDESTRUCTION && !b->delivered)
		dnsbl_keep(r->querying ? r->qL : r->L, b, p->i, status, abuf, alen);
	if (r->querying)		/* platform_dnsbl goes on */
		return;
	if (!b->delivered && b->pending == 0)
		dnsbl_deliver(b);
	if (b->left == 0 && b->delivered)
		dnsbl_free(b);
}

/*
 * platform.dnsbl(rev, zones, opts, fn, deadline) -> true | nil, err
 * (upvalue: the resolver).  rev: the reversed address (dns.reverse's);
 * zones: at most DNSBL_MAX domain names, checked by the caller.  fn as
 * dnsbl_deliver says, from the event loop, never during the call.
 */
static int
platform_dnsbl(lua_State *L)
{
	struct resolver		*r = lua_touserdata(L, lua_upvalueindex(1));
	size_t			 rlen, zlen;
	const char		*rev = luaL_checklstring(L, 1, &rlen);
	lua_Number		 deadline;
	struct dnsbl_batch	*b;
	struct timeval		 tv;
	char			 name[256], err[CONFIG_MAX + 64];
	int			 n, i;

	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_checktype(L, 3, LUA_TTABLE);
	luaL_checktype(L, 4, LUA_TFUNCTION);
	deadline = luaL_checknumber(L, 5);
	n = (int)lua_rawlen(L, 2);
	luaL_argcheck(L, n >= 1 && n <= DNSBL_MAX, 2, "1 to " DNSBL_MAX_S " zones");
	luaL_argcheck(L, deadline > 0 && deadline <= 3600, 5, "deadline out of range");
	if (resolver_setup(L, r, err, sizeof(err)) == -1) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	if ((b = calloc(1, sizeof(*b) + (size_t)n * sizeof(b->part[0]))) == NULL ||
	    (b->deadline = evtimer_new(r->base, dnsbl_on_deadline, b)) == NULL) {
		free(b);
		return luaL_error(L, "out of memory");
	}
	b->r = r;
	if ((b->next = r->batches) != NULL)
		b->next->prevp = &b->next;
	b->prevp = &r->batches;
	r->batches = b;
	b->n = b->pending = n;
	b->res_ref = LUA_NOREF;
	lua_pushvalue(L, 4);
	b->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	r->querying = 1;
	r->qL = L;
	for (i = 0; i < n; i++) {
		const char *zone;

		lua_rawgeti(L, 2, i + 1);
		zone = lua_tolstring(L, -1, &zlen);
		b->part[i].b = b;
		b->part[i].i = i;
		if (zone == NULL || rlen + 1 + zlen > 254) {
			lua_pop(L, 1);
			dnsbl_keep(L, b, i, ARES_EBADNAME, NULL, 0);
			continue;
		}
		memcpy(name, rev, rlen);
		name[rlen] = '.';
		memcpy(name + rlen + 1, zone, zlen + 1);
		lua_pop(L, 1);
		b->left++;
		ares_query(r->channel, name, 1 /* IN */, T_A, dnsbl_on_answer, &b->part[i]);
	}
	r->querying = 0;
	r->qL = NULL;
	arm_timer_sent(r);
	/* answered already (bad names): from the event loop, at once */
	tv.tv_sec = (time_t)deadline;
	tv.tv_usec = (suseconds_t)((deadline - (lua_Number)tv.tv_sec) * 1e6);
	if (b->pending == 0)
		tv.tv_sec = tv.tv_usec = 0;
	evtimer_add(b->deadline, &tv);
	lua_pushboolean(L, 1);
	return 1;
}

static int
resolver_gc(lua_State *L)
{
	struct resolver *r = luaL_checkudata(L, 1, DNS_MT);

	r->closing = 1;
	resolver_close(r);
	while (r->batches != NULL)	/* answered, waiting for their deadline */
		dnsbl_free(r->batches);
	if (r->timer != NULL)
		event_free(r->timer);
	r->timer = NULL;
	return 0;
}

void
ldns_push(lua_State *L, struct event_base *base)
{
	struct resolver *r;

	ares_library_init(ARES_LIB_INIT_ALL);
	/* user values: the opts the channel was made for, push_failure's strings */
	r = lua_newuserdatauv(L, sizeof(*r), 2);
	memset(r, 0, sizeof(*r));
	if (luaL_newmetatable(L, DNS_MT)) {
		lua_pushcfunction(L, resolver_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	anchor_failures(L);
	r->base = base;
	lua_getfield(L, LUA_REGISTRYINDEX, "luasmtpd.main");
	r->L = lua_tothread(L, -1);
	lua_pop(L, 1);
	if ((r->timer = evtimer_new(base, on_timer, r)) == NULL)
		luaL_error(L, "out of memory");
	lua_pushvalue(L, -1);
	lua_pushcclosure(L, platform_dns, 1);
	lua_insert(L, -2);
	lua_pushcclosure(L, platform_dnsbl, 1);
}
