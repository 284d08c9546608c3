/*
 * lua_http.c -- the HTTP client of smtp.http (lua/smtp/http.lua):
 * platform.http(req, fn) and platform.http_body().
 *
 * Owns a worker's HTTP requests on its event base: libevent's HTTP client
 * (evhttp) parses the response, one connection per request ("Connection:
 * close"), https through bufferevent_openssl with the system's CA store,
 * SNI and host name checks (req.verify = false skips the checks), host
 * names through libevent's evdns (one resolver per worker, made at the
 * first request), a deadline per request for the whole exchange, a bound
 * on the response body, and a bound on requests in flight per worker.
 * fn(status, headers, body) or fn(nil, err) runs later from the event
 * loop, once; a request cancelled (handle:cancel(), or its handle
 * collected) never calls it.  A request body is a string or a body buffer
 * (platform.http_body(limit)): chunks appended in C, outside the Lua heap,
 * moved into the request when it is sent.  Nothing connects while a script
 * loads: the platform has no http without an event base.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "lua_core.h"
#include "lua_http.h"
#include "tlsclient.h"

#define HTTP_CTX_MT		"luasmtpd.http"
#define HTTP_REQ_MT		"luasmtpd.http.request"
#define HTTP_BODY_MT		"luasmtpd.http.body"
#define HTTP_HEADERS_MAX	(64 << 10)	/* response header block */

struct hctx {
	struct event_base	*base;
	struct evdns_base	*dns;		/* made at the first request */
	SSL_CTX			*ssl;		/* made at the first https request */
	lua_State		*L;		/* the main thread: callbacks run there */
	unsigned		 inflight;
	struct evhttp_connection **dead;	/* answered: freed on the next turn */
	size_t			 ndead, dead_cap;
	struct event		*reaper;
};

struct hreq {
	struct hctx		*ctx;
	struct evhttp_connection *evcon;	/* NULL: answered or cancelled */
	struct bufferevent	*bev;		/* evcon's */
	SSL			*ssl;		/* bev's, https only */
	struct event		*timer;
	int			 fn_ref, self_ref;
	int			 err_set;	/* evhttp told an error ... */
	enum evhttp_request_error err;	/* ... this one */
	int			 sys_err;	/* errno then */
	int			 dns_err;	/* EVUTIL_EAI_* of the host's lookup */
	char			 tls_err[200];
};

struct hbody {
	struct evbuffer	*buf;
	size_t		 limit;
};

/* ---- the connections that are done -------------------------------------- */

/* evhttp still runs on a connection when its request's callback returns */
static void
reap(evutil_socket_t fd, short what, void *arg)
{
	struct hctx *c = arg;

	(void)fd;
	(void)what;
	while (c->ndead > 0)
		evhttp_connection_free(c->dead[--c->ndead]);
}

static void
bury(struct hctx *c, struct evhttp_connection *evcon)
{
	struct evhttp_connection **d;
	struct timeval zero = { 0, 0 };

	if (c->ndead == c->dead_cap) {
		size_t cap = c->dead_cap ? c->dead_cap * 2 : 16;

		if ((d = realloc(c->dead, cap * sizeof(*d))) == NULL) {
			/* cannot wait: leaked rather than freed under evhttp */
			log_warn(0, "http: out of memory");
			return;
		}
		c->dead = d;
		c->dead_cap = cap;
	}
	c->dead[c->ndead++] = evcon;
	evtimer_add(c->reaper, &zero);
}

/* ---- one request -------------------------------------------------------- */

/* the request leaves the wire: no callback will come (fn stays referenced) */
static void
req_detach(struct hreq *q, int now)
{
	struct hctx *c = q->ctx;

	if (q->evcon == NULL)
		return;
	if (now)
		evhttp_connection_free(q->evcon);	/* frees its request too */
	else
		bury(c, q->evcon);
	q->evcon = NULL;
	q->bev = NULL;
	q->ssl = NULL;
	if (q->timer != NULL)
		evtimer_del(q->timer);
	c->inflight--;
}

static void
req_unref(struct hreq *q)
{
	lua_State *L = q->ctx->L;

	luaL_unref(L, LUA_REGISTRYINDEX, q->fn_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, q->self_ref);
	q->fn_ref = q->self_ref = LUA_NOREF;
}

/* Pushes status, headers (lower-cased names, repeats joined by ", "), body. */
static int
push_response(lua_State *L, struct evhttp_request *r)
{
	struct evkeyvalq	*hs = evhttp_request_get_input_headers(r);
	struct evbuffer		*in = evhttp_request_get_input_buffer(r);
	struct evkeyval		*kv;
	size_t			 len = evbuffer_get_length(in), i, n;
	luaL_Buffer		 b;

	lua_pushinteger(L, evhttp_request_get_response_code(r));
	lua_newtable(L);
	TAILQ_FOREACH(kv, hs, next) {
		n = strlen(kv->key);
		luaL_buffinit(L, &b);
		for (i = 0; i < n; i++)
			luaL_addchar(&b, (kv->key[i] >= 'A' && kv->key[i] <= 'Z') ?
			    kv->key[i] - 'A' + 'a' : kv->key[i]);
		luaL_pushresult(&b);
		lua_pushvalue(L, -1);
		if (lua_rawget(L, -3) == LUA_TSTRING) {
			lua_pushliteral(L, ", ");
			lua_pushstring(L, kv->value);
			lua_concat(L, 3);
		} else {
			lua_pop(L, 1);
			lua_pushstring(L, kv->value);
		}
		lua_rawset(L, -3);
	}
	lua_pushlstring(L, (const char *)evbuffer_pullup(in, -1), len);
	return 3;
}

/* what went wrong, as fn's err */
static const char *
req_why(struct hreq *q, char *buf, size_t len)
{
	if (q->tls_err[0] != '\0') {
		snprintf(buf, len, "tls: %s", q->tls_err);
		return buf;
	}
	if (q->sys_err == ECONNREFUSED)
		return "connection refused";
	if (q->sys_err == ENETUNREACH || q->sys_err == EHOSTUNREACH)
		return "host unreachable";
	if (q->dns_err != 0) {
		snprintf(buf, len, "cannot resolve the host: %s", evutil_gai_strerror(q->dns_err));
		return buf;
	}
	if (!q->err_set)	/* evhttp's connect failure: no error callback */
		return "connection refused";
	switch (q->err) {
	case EVREQ_HTTP_TIMEOUT:
		return "timeout";
	case EVREQ_HTTP_EOF:
		return "connection closed before the response";
	case EVREQ_HTTP_INVALID_HEADER:
		return "invalid response";
	case EVREQ_HTTP_BUFFER_ERROR:
		return "connection failed";
	case EVREQ_HTTP_DATA_TOO_LONG:
		return "response too large";
	default:
		return "connection failed";
	}
}

/* Calls fn with what the stack holds above top + 1 (the traceback). */
static void
req_deliver(lua_State *L, int top, int fn_ref)
{
	int n = lua_gettop(L) - top - 1;

	lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
	lua_insert(L, top + 2);
	if (lua_pcall(L, n, 0, top + 1) != LUA_OK)
		log_warn(0, "lua: http response handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

/* the TLS reason of a failure, read while the connection is still there */
static void
note_tls(struct hreq *q)
{
	unsigned long	 e;
	long		 v;

	if (q->ssl == NULL || q->tls_err[0] != '\0')
		return;
	v = SSL_get_verify_result(q->ssl);
	e = bufferevent_get_openssl_error(q->bev);
	if (v != X509_V_OK)
		snprintf(q->tls_err, sizeof(q->tls_err), "certificate verify failed: %s",
		    X509_verify_cert_error_string(v));
	else if (e != 0)
		snprintf(q->tls_err, sizeof(q->tls_err), "%s",
		    ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "handshake failed");
	while (bufferevent_get_openssl_error(q->bev) != 0)
		;
}

static void
on_error(enum evhttp_request_error err, void *arg)
{
	struct hreq *q = arg;

	if (q->evcon == NULL)
		return;
	q->err_set = 1;
	q->err = err;
	q->sys_err = errno;
	if (q->bev != NULL)
		q->dns_err = bufferevent_socket_get_dns_error(q->bev);
	note_tls(q);
}

static void
on_done(struct evhttp_request *r, void *arg)
{
	struct hreq	*q = arg;
	struct hctx	*c = q->ctx;
	lua_State	*L = c->L;
	int		 top = lua_gettop(L), fn_ref = q->fn_ref;
	char		 why[256];

	if (q->evcon == NULL)
		return;		/* cancelled or timed out */
	if (r == NULL || evhttp_request_get_response_code(r) == 0)
		note_tls(q);
	lcore_enter(0, "http");
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, q->self_ref);	/* alive through the call */
	q->fn_ref = LUA_NOREF;
	req_unref(q);
	lua_pop(L, 1);
	if (r != NULL && evhttp_request_get_response_code(r) != 0 && !q->err_set) {
		push_response(L, r);
	} else {
		lua_pushnil(L);
		lua_pushstring(L, req_why(q, why, sizeof(why)));
	}
	req_detach(q, 0);
	req_deliver(L, top, fn_ref);
}

static void
on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct hreq	*q = arg;
	lua_State	*L = q->ctx->L;
	int		 top = lua_gettop(L), fn_ref = q->fn_ref;

	(void)fd;
	(void)what;
	if (q->evcon == NULL)
		return;
	lcore_enter(0, "http");
	lua_pushcfunction(L, lcore_traceback);
	q->fn_ref = LUA_NOREF;
	req_unref(q);
	req_detach(q, 1);
	lua_pushnil(L);
	lua_pushliteral(L, "timeout");
	req_deliver(L, top, fn_ref);
}

/* handle:cancel(): no callback; the connection goes at once */
static int
hreq_cancel(lua_State *L)
{
	struct hreq *q = luaL_checkudata(L, 1, HTTP_REQ_MT);

	if (q->evcon != NULL) {
		req_detach(q, 1);
		req_unref(q);
	}
	return 0;
}

static int
hreq_gc(lua_State *L)
{
	struct hreq *q = luaL_checkudata(L, 1, HTTP_REQ_MT);

	if (q->evcon != NULL)
		req_detach(q, 1);
	if (q->timer != NULL)
		event_free(q->timer);
	q->timer = NULL;
	return 0;
}

/* ---- body buffers ------------------------------------------------------- */

/* platform.http_body(limit) -> buffer */
static int
lhttp_body(lua_State *L)
{
	lua_Integer	 limit = luaL_checkinteger(L, 1);
	struct hbody	*b;

	luaL_argcheck(L, limit >= 0, 1, "limit must be >= 0");
	b = lua_newuserdatauv(L, sizeof(*b), 0);
	b->buf = NULL;
	b->limit = (size_t)limit;
	luaL_setmetatable(L, HTTP_BODY_MT);
	if ((b->buf = evbuffer_new()) == NULL)
		return luaL_error(L, "out of memory");
	return 1;
}

/* buffer:write(s) -> true | nil, "request body too large" */
static int
hbody_write(lua_State *L)
{
	struct hbody	*b = luaL_checkudata(L, 1, HTTP_BODY_MT);
	size_t		 len;
	const char	*s = luaL_checklstring(L, 2, &len);

	if (b->buf == NULL)
		return luaL_error(L, "attempt to write to a sent or freed body");
	if (len > b->limit - evbuffer_get_length(b->buf)) {
		lua_pushnil(L);
		lua_pushliteral(L, "request body too large");
		return 2;
	}
	if (evbuffer_add(b->buf, s, len) == -1)
		return luaL_error(L, "out of memory");
	lua_pushboolean(L, 1);
	return 1;
}

/* buffer:size() -> octets written */
static int
hbody_size(lua_State *L)
{
	struct hbody *b = luaL_checkudata(L, 1, HTTP_BODY_MT);

	lua_pushinteger(L, b->buf != NULL ? (lua_Integer)evbuffer_get_length(b->buf) : 0);
	return 1;
}

/* buffer:free(): what it holds goes now (a collection may come much later) */
static int
hbody_gc(lua_State *L)
{
	struct hbody *b = luaL_checkudata(L, 1, HTTP_BODY_MT);

	if (b->buf != NULL)
		evbuffer_free(b->buf);
	b->buf = NULL;
	return 0;
}

/* ---- making a request --------------------------------------------------- */

static int
method_of(const char *m, enum evhttp_cmd_type *t)
{
	static const struct { const char *name; enum evhttp_cmd_type type; } methods[] = {
		{ "GET", EVHTTP_REQ_GET }, { "POST", EVHTTP_REQ_POST },
		{ "HEAD", EVHTTP_REQ_HEAD }, { "PUT", EVHTTP_REQ_PUT },
		{ "DELETE", EVHTTP_REQ_DELETE }, { "OPTIONS", EVHTTP_REQ_OPTIONS },
		{ "PATCH", EVHTTP_REQ_PATCH },
	};
	size_t i;

	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (strcmp(m, methods[i].name) == 0) {
			*t = methods[i].type;
			return 0;
		}
	return -1;
}

/* an SSL for host on the worker's client context, made at the first https request */
static SSL *
ssl_for(struct hctx *c, const char *host, int verify, char *err, size_t errlen)
{
	if (c->ssl == NULL && (c->ssl = tlsclient_ctx(NULL, err, errlen)) == NULL)
		return NULL;
	return tlsclient_ssl(c->ssl, host, verify, err, errlen);
}

/* the string field k of the table at 1, or NULL */
static const char *
opt_string(lua_State *L, const char *k, size_t *len)
{
	const char *s = NULL;

	if (lua_getfield(L, 1, k) == LUA_TSTRING)
		s = lua_tolstring(L, -1, len);
	lua_pop(L, 1);		/* the table keeps it */
	return s;
}

static int
fail(lua_State *L, const char *err)
{
	lua_pushnil(L);
	lua_pushstring(L, err);
	return 2;
}

/*
 * platform.http(req, fn) -> handle | nil, err (upvalue: the context)
 * req: method, url, headers (name -> value or list of values), body (string or body buffer),
 * timeout (s), max_body (octets), verify (boolean), host_header (string)
 */
static int
lhttp_request(lua_State *L)
{
	struct hctx		*c = luaL_checkudata(L, lua_upvalueindex(1), HTTP_CTX_MT);
	const char		*method, *url, *scheme, *host, *path, *query, *body = NULL;
	size_t			 blen = 0;
	struct evhttp_uri	*uri = NULL;
	struct evhttp_request	*r = NULL;
	struct evkeyvalq	*out;
	struct hbody		*hb = NULL;
	struct hreq		*q;
	struct timeval		 tv;
	enum evhttp_cmd_type	 type = EVHTTP_REQ_GET;
	lua_Number		 timeout;
	lua_Integer		 max_body, max_inflight;
	char			 target[8192], hosthdr[300], err[256], num[32], addr[256];
	int			 port, https, verify, has_len = 0, has_host = 0;
	SSL			*ssl = NULL;

	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	method = opt_string(L, "method", NULL);
	url = opt_string(L, "url", NULL);
	luaL_argcheck(L, method != NULL && method_of(method, &type) == 0, 1, "bad method");
	luaL_argcheck(L, url != NULL, 1, "url missing");
	lua_getfield(L, 1, "timeout");
	timeout = luaL_optnumber(L, -1, 30);
	lua_getfield(L, 1, "max_body");
	max_body = luaL_optinteger(L, -1, 16 << 20);
	lua_getfield(L, 1, "max_inflight");
	max_inflight = luaL_optinteger(L, -1, 1000);
	lua_getfield(L, 1, "verify");
	verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
	lua_pop(L, 4);
	luaL_argcheck(L, timeout > 0 && timeout <= 3600, 1, "timeout out of range");
	luaL_argcheck(L, max_body >= 0, 1, "max_body out of range");
	if (lua_getfield(L, 1, "body") == LUA_TSTRING)
		body = lua_tolstring(L, -1, &blen);
	else if (!lua_isnil(L, -1))
		hb = luaL_checkudata(L, -1, HTTP_BODY_MT);
	lua_pop(L, 1);
	if (hb != NULL && hb->buf == NULL)
		return luaL_argerror(L, 1, "body buffer sent already");

	if (c->inflight >= (unsigned)max_inflight)
		return fail(L, "too many requests in flight");
	if ((uri = evhttp_uri_parse_with_flags(url, 0)) == NULL)
		return fail(L, "bad url");
	scheme = evhttp_uri_get_scheme(uri);
	host = evhttp_uri_get_host(uri);
	if (scheme == NULL || host == NULL || host[0] == '\0' ||
	    (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
		evhttp_uri_free(uri);
		return fail(L, "bad url: http://host[:port]/path or https://...");
	}
	/* "[::1]": the brackets are the URL's, not the address's */
	if (host[0] == '[') {
		size_t n = strlen(host);

		if (n < 3 || n - 2 >= sizeof(addr) || host[n - 1] != ']') {
			evhttp_uri_free(uri);
			return fail(L, "bad url");
		}
		memcpy(addr, host + 1, n - 2);
		addr[n - 2] = '\0';
		host = addr;
	}
	https = strcmp(scheme, "https") == 0;
	port = evhttp_uri_get_port(uri);
	if (port <= 0)
		port = https ? 443 : 80;
	path = evhttp_uri_get_path(uri);
	query = evhttp_uri_get_query(uri);
	snprintf(target, sizeof(target), "%s%s%s", path != NULL && path[0] != '\0' ? path : "/",
	    query != NULL ? "?" : "", query != NULL ? query : "");
	if (strchr(host, ':') != NULL)
		snprintf(hosthdr, sizeof(hosthdr), "[%s]", host);
	else
		snprintf(hosthdr, sizeof(hosthdr), "%s", host);
	if (port != (https ? 443 : 80)) {
		snprintf(num, sizeof(num), ":%d", port);
		strncat(hosthdr, num, sizeof(hosthdr) - strlen(hosthdr) - 1);
	}

	q = lua_newuserdatauv(L, sizeof(*q), 0);
	memset(q, 0, sizeof(*q));
	q->ctx = c;
	q->fn_ref = q->self_ref = LUA_NOREF;
	luaL_setmetatable(L, HTTP_REQ_MT);
	if ((q->timer = evtimer_new(c->base, on_timeout, q)) == NULL)
		goto oom;
	if (c->dns == NULL && (c->dns = evdns_base_new(c->base,
	    EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL &&
	    (c->dns = evdns_base_new(c->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL)
		goto oom;
	if (https) {
		if ((ssl = ssl_for(c, host, verify, err, sizeof(err))) == NULL) {
			evhttp_uri_free(uri);
			return fail(L, err);
		}
		q->bev = bufferevent_openssl_socket_new(c->base, -1, ssl,
		    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (q->bev == NULL) {
			SSL_free(ssl);
			goto oom;
		}
		bufferevent_openssl_set_allow_dirty_shutdown(q->bev, 1);
		q->ssl = ssl;
	}
	q->evcon = evhttp_connection_base_bufferevent_new(c->base, c->dns, q->bev, host,
	    (unsigned short)port);
	if (q->evcon == NULL) {
		if (q->bev != NULL)
			bufferevent_free(q->bev);
		q->bev = NULL;
		q->ssl = NULL;
		goto oom;
	}
	q->bev = evhttp_connection_get_bufferevent(q->evcon);
	c->inflight++;		/* req_detach's from here on */
	tv.tv_sec = (time_t)timeout + 1;
	tv.tv_usec = 0;
	evhttp_connection_set_timeout_tv(q->evcon, &tv);	/* ours comes first */
	evhttp_connection_set_retries(q->evcon, 0);
	evhttp_connection_set_max_body_size(q->evcon, (ev_ssize_t)max_body);
	evhttp_connection_set_max_headers_size(q->evcon, HTTP_HEADERS_MAX);
	if ((r = evhttp_request_new(on_done, q)) == NULL)
		goto oom;
	evhttp_request_set_error_cb(r, on_error);
	out = evhttp_request_get_output_headers(r);
	if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
		lua_pushnil(L);
		while (lua_next(L, -2) != 0) {
			const char	*k = lua_tostring(L, -2);
			int		 bad = lua_type(L, -2) != LUA_TSTRING, i, n;

			/* a value, or a list of values: the header repeated */
			n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 1;
			for (i = 1; i <= n && !bad; i++) {
				const char *v;

				if (lua_istable(L, -1))
					lua_geti(L, -1, i);
				else
					lua_pushvalue(L, -1);
				v = lua_tostring(L, -1);
				bad = v == NULL || evhttp_add_header(out, k, v) == -1;
				lua_pop(L, 1);
			}
			if (bad) {
				evhttp_request_free(r);
				evhttp_uri_free(uri);
				req_detach(q, 1);
				return luaL_argerror(L, 1, "headers: name -> value(s), no CR or LF");
			}
			has_len |= strcasecmp(k, "Content-Length") == 0;
			has_host |= strcasecmp(k, "Host") == 0;
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	if (!has_host)
		evhttp_add_header(out, "Host", hosthdr);
	evhttp_remove_header(out, "Connection");
	evhttp_add_header(out, "Connection", "close");
	if (hb != NULL) {
		blen = evbuffer_get_length(hb->buf);
		evbuffer_add_buffer(evhttp_request_get_output_buffer(r), hb->buf);
		evbuffer_free(hb->buf);
		hb->buf = NULL;
	} else if (body != NULL && evbuffer_add(evhttp_request_get_output_buffer(r), body, blen) == -1) {
		evhttp_request_free(r);
		goto oom;
	}
	if (!has_len && (blen > 0 || type == EVHTTP_REQ_POST || type == EVHTTP_REQ_PUT)) {
		snprintf(num, sizeof(num), "%zu", blen);
		evhttp_add_header(out, "Content-Length", num);
	}
	if (evhttp_make_request(q->evcon, r, type, target) == -1) {	/* frees r */
		evhttp_uri_free(uri);
		req_detach(q, 1);
		return fail(L, "cannot send the request");
	}
	evhttp_uri_free(uri);
	tv.tv_sec = (time_t)timeout;
	tv.tv_usec = (suseconds_t)((timeout - (lua_Number)tv.tv_sec) * 1e6);
	evtimer_add(q->timer, &tv);
	lua_pushvalue(L, 2);
	q->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, -1);
	q->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 1;
oom:
	evhttp_uri_free(uri);
	req_detach(q, 1);
	return luaL_error(L, "out of memory");
}

/* ---- the context -------------------------------------------------------- */

static int
hctx_gc(lua_State *L)
{
	struct hctx *c = luaL_checkudata(L, 1, HTTP_CTX_MT);

	reap(-1, 0, c);
	free(c->dead);
	c->dead = NULL;
	if (c->reaper != NULL)
		event_free(c->reaper);
	c->reaper = NULL;
	if (c->dns != NULL)
		evdns_base_free(c->dns, 1);
	c->dns = NULL;
	if (c->ssl != NULL)
		SSL_CTX_free(c->ssl);
	c->ssl = NULL;
	return 0;
}

/*
 * Sets platform.http and platform.http_body in the table on top of the
 * stack, for the worker's event base.
 */
void
lhttp_install(lua_State *L, struct event_base *base)
{
	struct hctx *c;

	if (luaL_newmetatable(L, HTTP_REQ_MT)) {
		lua_createtable(L, 0, 1);
		lua_pushcfunction(L, hreq_cancel);
		lua_setfield(L, -2, "cancel");
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, hreq_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, HTTP_BODY_MT)) {
		lua_createtable(L, 0, 3);
		lua_pushcfunction(L, hbody_write);
		lua_setfield(L, -2, "write");
		lua_pushcfunction(L, hbody_size);
		lua_setfield(L, -2, "size");
		lua_pushcfunction(L, hbody_gc);
		lua_setfield(L, -2, "free");
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, hbody_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	c = lua_newuserdatauv(L, sizeof(*c), 0);
	memset(c, 0, sizeof(*c));
	if (luaL_newmetatable(L, HTTP_CTX_MT)) {
		lua_pushcfunction(L, hctx_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	c->base = base;
	lua_getfield(L, LUA_REGISTRYINDEX, "luasmtpd.main");
	c->L = lua_tothread(L, -1);
	lua_pop(L, 1);
	if ((c->reaper = evtimer_new(base, reap, c)) == NULL)
		luaL_error(L, "out of memory");
	lua_pushcclosure(L, lhttp_request, 1);
	lua_setfield(L, -2, "http");
	lua_pushcfunction(L, lhttp_body);
	lua_setfield(L, -2, "http_body");
}
