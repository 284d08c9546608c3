/*
 * lua_tcp.c -- client TCP and TLS sockets on the worker's event base, for
 * smtp.tcp (lua/smtp/tcp.lua): platform.tcp_connect(host, port, opts, fn).
 *
 * Owns the bufferevents of the sockets a policy opens, the worker's count
 * of them (opts.max: "too many sockets"), name resolution without blocking
 * (libevent's evdns: A/AAAA and /etc/hosts) and the TLS client side
 * (bufferevent_openssl over the plain bufferevent: verification against the
 * system's CA store, or opts.cafile, SNI and the name check).  Nothing here
 * waits or times out: a socket has at most one operation in flight, which
 * returns its result at once when it can, or false and later calls fn with
 * it from the event loop.  lua/smtp/tcp.lua yields the handler's coroutine
 * meanwhile and owns the deadlines (platform timers), so smtp.testing's
 * fake sockets (lua/smtp/testing/tcp.lua) get the same ones.
 *
 * Callbacks are deferred (BEV_OPT_DEFER_CALLBACKS): a result never comes
 * back into Lua from inside the call that started the operation.  A socket
 * is freed by close(), by a fatal error, or by __gc; while an operation is
 * in flight the registry holds it, so it cannot be collected under libevent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "lua_core.h"
#include "lua_tcp.h"
#include "tlsclient.h"

#define TCP_MT		"luasmtpd.tcp"
#define TCP_CTX_MT	"luasmtpd.tcp.ctx"
#define SEND_HIGH	65536	/* octets send() leaves in the output buffer without waiting */
#define READ_HIGH	65536	/* octets read ahead while no receive waits */

struct tcp_ctx {
	struct event_base	*base;
	struct evdns_base	*dns;		/* made on first use */
	SSL_CTX			*ssl;		/* the system CA store; made on first use */
	int			 open;		/* sockets of this state not yet closed */
};

enum tcp_op { OP_NONE, OP_CONNECT, OP_SEND, OP_RECV, OP_TLS };
enum recv_mode { RM_LINE, RM_COUNT, RM_ALL };
enum recv_result { R_WAIT, R_DATA, R_ERR };

struct tsock {
	struct tcp_ctx		*ctx;
	struct bufferevent	*bev;		/* NULL: closed */
	lua_State		*L;		/* the main thread: results run there */
	enum tcp_op		 op;		/* in flight */
	int			 fn_ref;	/* its result goes there */
	int			 self_ref;	/* anchors the socket meanwhile */
	enum recv_mode		 rmode;
	size_t			 rn;		/* a line's or "*a"'s limit, or the count */
	int			 eof;
	int			 tls;		/* handshake done */
	int			 tls_at_connect, verify;
	char			 host[256];	/* as connect() was given it */
	char			 servername[256];
	char			*cafile;
	char			 why[384];	/* why it closed */
};

/* frees the bufferevent (and with it the fd); the object stays for Lua */
static void
sock_shut(struct tsock *s, const char *why)
{
	if (s->bev == NULL)
		return;
	bufferevent_free(s->bev);
	s->bev = NULL;
	s->ctx->open--;
	snprintf(s->why, sizeof(s->why), "%s", why);
}

/* forgets the operation in flight without calling it */
static void
sock_forget(struct tsock *s)
{
	luaL_unref(s->L, LUA_REGISTRYINDEX, s->fn_ref);
	luaL_unref(s->L, LUA_REGISTRYINDEX, s->self_ref);
	s->fn_ref = s->self_ref = LUA_NOREF;
	s->op = OP_NONE;
}

/*
 * The result of the operation in flight: deliver_begin pushes the socket
 * (kept alive through the call), the traceback and fn, or returns NULL if
 * nobody waits; the caller pushes nargs values and calls deliver_end.  s
 * may be gone after deliver_end (Lua closed it and let it go).
 */
static lua_State *
deliver_begin(struct tsock *s, int *top)
{
	lua_State	*L = s->L;
	int		 fn = s->fn_ref, self = s->self_ref;

	s->op = OP_NONE;
	s->fn_ref = s->self_ref = LUA_NOREF;
	if (fn == LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, self);
		return NULL;
	}
	*top = lua_gettop(L);
	lcore_enter(0, "tcp");
	lua_rawgeti(L, LUA_REGISTRYINDEX, self);
	luaL_unref(L, LUA_REGISTRYINDEX, self);
	lua_pushcfunction(L, lcore_traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
	luaL_unref(L, LUA_REGISTRYINDEX, fn);
	return L;
}

static void
deliver_end(lua_State *L, int top, int nargs)
{
	if (lua_pcall(L, nargs, 0, top + 2) != LUA_OK)
		log_warn(0, "lua: socket result handler failed: %s", lua_tostring(L, -1));
	lua_settop(L, top);
	lcore_leave(L);
}

static void
deliver_ok(struct tsock *s)
{
	lua_State	*L;
	int		 top;

	if ((L = deliver_begin(s, &top)) == NULL)
		return;
	lua_pushboolean(L, 1);
	deliver_end(L, top, 1);
}

/* the operation failed and the socket is closed (why) */
static void
deliver_fail(struct tsock *s, const char *why)
{
	lua_State	*L;
	int		 top;

	sock_shut(s, why);
	if ((L = deliver_begin(s, &top)) == NULL)
		return;
	lua_pushnil(L);
	lua_pushstring(L, s->why);
	deliver_end(L, top, 2);
}

/* ---- receiving ------------------------------------------------------------ */

/*
 * What the input holds for the receive asked: R_DATA (the first *len
 * octets, then *skip more to drop), R_ERR (*err; a fatal one sets *fatal),
 * or R_WAIT.
 */
static enum recv_result
recv_check(struct tsock *s, size_t *len, size_t *skip, const char **err, int *fatal)
{
	struct evbuffer		*in = bufferevent_get_input(s->bev);
	size_t			 have = evbuffer_get_length(in), eol = 0;
	struct evbuffer_ptr	 p;
	char			 cr;

	*fatal = 0;
	switch (s->rmode) {
	case RM_LINE:
		p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_LF);
		if (p.pos >= 0) {
			if ((size_t)p.pos > s->rn) {
				*err = "line too long";
				*fatal = 1;
				return R_ERR;
			}
			*len = (size_t)p.pos;
			*skip = eol;
			if (*len > 0) {
				struct evbuffer_ptr q;

				evbuffer_ptr_set(in, &q, *len - 1, EVBUFFER_PTR_SET);
				if (evbuffer_copyout_from(in, &q, &cr, 1) == 1 && cr == '\r') {
					(*len)--;
					(*skip)++;
				}
			}
			return R_DATA;
		}
		if (have > s->rn) {
			*err = "line too long";
			*fatal = 1;
			return R_ERR;
		}
		break;
	case RM_COUNT:
		if (have >= s->rn) {
			*len = s->rn;
			*skip = 0;
			return R_DATA;
		}
		break;
	case RM_ALL:
		if (have > s->rn) {
			*err = "too large";
			*fatal = 1;
			return R_ERR;
		}
		if (s->eof) {
			*len = have;
			*skip = 0;
			return R_DATA;
		}
		return R_WAIT;
	}
	if (s->eof) {
		*err = "closed";
		return R_ERR;
	}
	return R_WAIT;
}

/* pushes a receive's result (data, or nil, err, partial) and consumes it */
static int
recv_push(lua_State *L, struct tsock *s, enum recv_result r, size_t len, size_t skip,
    const char *err, int fatal)
{
	struct evbuffer	*in = bufferevent_get_input(s->bev);
	size_t		 have = evbuffer_get_length(in);

	if (r == R_DATA) {
		lua_pushlstring(L, (const char *)evbuffer_pullup(in, (ev_ssize_t)len), len);
		evbuffer_drain(in, len + skip);
		return 1;
	}
	lua_pushnil(L);
	lua_pushstring(L, err);
	if (fatal) {
		lua_pushliteral(L, "");
		sock_shut(s, err);
	} else {
		/* closed: what came before the end */
		lua_pushlstring(L, (const char *)evbuffer_pullup(in, (ev_ssize_t)have), have);
		evbuffer_drain(in, have);
	}
	return 3;
}

static void
recv_try(struct tsock *s)
{
	lua_State		*L;
	enum recv_result	 r;
	size_t			 len = 0, skip = 0;
	const char		*err = NULL;
	int			 fatal, top;

	if ((r = recv_check(s, &len, &skip, &err, &fatal)) == R_WAIT)
		return;
	if ((L = deliver_begin(s, &top)) == NULL) {
		/* nobody waits: leave the input as it is */
		return;
	}
	deliver_end(L, top, recv_push(L, s, r, len, skip, err, fatal));
}

/* ---- events --------------------------------------------------------------- */

static void	sock_event(struct bufferevent *, short, void *);
static int	tls_start(struct tsock *, char *, size_t);

static void
sock_read(struct bufferevent *bev, void *arg)
{
	struct tsock *s = arg;

	(void)bev;
	if (s->op == OP_RECV)
		recv_try(s);
}

static void
sock_write(struct bufferevent *bev, void *arg)
{
	struct tsock *s = arg;

	(void)bev;
	if (s->op == OP_SEND)
		deliver_ok(s);
}

/* "Connection refused" -> "connection refused" */
static void
errno_words(int e, char *buf, size_t len)
{
	switch (e) {
	case ECONNREFUSED:
		snprintf(buf, len, "connection refused");
		break;
	case ECONNRESET:
		snprintf(buf, len, "connection reset");
		break;
	default:
		snprintf(buf, len, "%s", evutil_socket_error_to_string(e));
		if (buf[0] >= 'A' && buf[0] <= 'Z')
			buf[0] = (char)(buf[0] - 'A' + 'a');
	}
}

/* what went wrong on bev, in words */
static void
sock_error_words(struct tsock *s, char *buf, size_t len)
{
	int	dns, err = EVUTIL_SOCKET_ERROR();

	if (s->op == OP_CONNECT && (dns = bufferevent_socket_get_dns_error(s->bev)) != 0) {
		snprintf(buf, len, "cannot resolve %s: %s", s->host, evutil_gai_strerror(dns));
		return;
	}
	if (tlsclient_error(s->bev, buf, len))
		return;
	if (err == 0) {
		snprintf(buf, len, s->op == OP_TLS ? "tls: connection closed during the handshake" :
		    "connection lost");
		return;
	}
	errno_words(err, buf, len);
	if (s->op == OP_TLS) {
		char words[160];

		snprintf(words, sizeof(words), "%s", buf);
		snprintf(buf, len, "tls: %s", words);
	}
}

static void
sock_event(struct bufferevent *bev, short what, void *arg)
{
	struct tsock	*s = arg;
	char		 why[384];

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		if (s->op == OP_TLS) {
			s->tls = 1;
			deliver_ok(s);
		} else if (s->op == OP_CONNECT && s->tls_at_connect) {
			if (tls_start(s, why, sizeof(why)) == -1)
				deliver_fail(s, why);
			else
				s->op = OP_TLS;
		} else if (s->op == OP_CONNECT) {
			deliver_ok(s);
		}
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		sock_error_words(s, why, sizeof(why));
		deliver_fail(s, why);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		s->eof = 1;
		if (s->op == OP_RECV)
			recv_try(s);
		else if (s->op == OP_CONNECT || s->op == OP_TLS)
			deliver_fail(s, s->op == OP_TLS ? "tls: connection closed during the handshake" :
			    "closed");
		else if (s->op == OP_SEND)
			deliver_fail(s, "closed");
	}
}

/* ---- TLS ------------------------------------------------------------------ */

/* wraps the plain bufferevent in a TLS client; the handshake runs next */
static int
tls_start(struct tsock *s, char *err, size_t errlen)
{
	SSL_CTX			*c;
	struct bufferevent	*b;

	if (s->cafile != NULL)
		c = tlsclient_ctx(s->cafile, err, errlen);
	else {
		if (s->ctx->ssl == NULL)
			s->ctx->ssl = tlsclient_ctx(NULL, err, errlen);
		c = s->ctx->ssl;
	}
	if (c == NULL)
		return -1;
	b = tlsclient_wrap(s->bev, c, s->servername, s->verify, err, errlen);
	if (s->cafile != NULL)
		SSL_CTX_free(c);	/* the SSL keeps its reference */
	if (b == NULL)
		return -1;
	s->bev = b;
	bufferevent_setcb(b, sock_read, sock_write, sock_event, s);
	bufferevent_setwatermark(b, EV_READ, 0, READ_HIGH);
	bufferevent_enable(b, EV_READ | EV_WRITE);
	return 0;
}

/* ---- methods -------------------------------------------------------------- */

static struct tsock *
check_sock(lua_State *L)
{
	struct tsock *s = luaL_checkudata(L, 1, TCP_MT);

	if (s->op != OP_NONE)
		luaL_error(L, "socket busy: one operation at a time");
	return s;
}

static int
push_closed(lua_State *L, struct tsock *s)
{
	lua_pushnil(L);
	lua_pushstring(L, s->why[0] != '\0' ? s->why : "closed");
	return 2;
}

/* keeps fn (at idx) for the result, and the socket while it is in flight */
static void
sock_wait(lua_State *L, struct tsock *s, enum tcp_op op, int idx, int self)
{
	luaL_checktype(L, idx, LUA_TFUNCTION);
	lua_pushvalue(L, idx);
	s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, self);
	s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	s->op = op;
}

/* sock:send(data, fn) -> true (buffered) | false (fn(true | nil, err) later) | nil, err */
static int
tsock_send(lua_State *L)
{
	struct tsock	*s = check_sock(L);
	size_t		 len;
	const char	*data = luaL_checklstring(L, 2, &len);
	struct evbuffer	*out;

	luaL_checktype(L, 3, LUA_TFUNCTION);
	if (s->bev == NULL)
		return push_closed(L, s);
	out = bufferevent_get_output(s->bev);
	if (evbuffer_add(out, data, len) == -1) {
		lua_pushnil(L);
		lua_pushliteral(L, "out of memory");
		return 2;
	}
	if (evbuffer_get_length(out) <= SEND_HIGH) {
		lua_pushboolean(L, 1);
		return 1;
	}
	sock_wait(L, s, OP_SEND, 3, 1);	/* the write callback: output drained */
	lua_pushboolean(L, 0);
	return 1;
}

/* sock:receive(mode, n, fn) -> data | false (fn(...) later) | nil, err, partial
 * mode "l": a line (LF, CR stripped) of at most n octets; "n": n octets;
 * "a": until the peer closes, at most n octets */
static int
tsock_receive(lua_State *L)
{
	struct tsock		*s = check_sock(L);
	const char		*mode = luaL_checkstring(L, 2);
	lua_Integer		 n = luaL_checkinteger(L, 3);
	enum recv_result	 r;
	size_t			 len = 0, skip = 0, high;
	const char		*err = NULL;
	int			 fatal;

	luaL_argcheck(L, n >= 0 && n <= (1 << 30), 3, "out of range");
	luaL_checktype(L, 4, LUA_TFUNCTION);
	if (mode[0] == 'l' && mode[1] == '\0')
		s->rmode = RM_LINE;
	else if (mode[0] == 'n' && mode[1] == '\0')
		s->rmode = RM_COUNT;
	else if (mode[0] == 'a' && mode[1] == '\0')
		s->rmode = RM_ALL;
	else
		return luaL_argerror(L, 2, "\"l\", \"n\" or \"a\" expected");
	s->rn = (size_t)n;
	if (s->bev == NULL)
		return push_closed(L, s);
	if ((r = recv_check(s, &len, &skip, &err, &fatal)) != R_WAIT)
		return recv_push(L, s, r, len, skip, err, fatal);
	/* read what the answer needs, not more */
	high = s->rn + 2 > READ_HIGH ? s->rn + 2 : READ_HIGH;
	bufferevent_setwatermark(s->bev, EV_READ, 0, high);
	sock_wait(L, s, OP_RECV, 4, 1);
	lua_pushboolean(L, 0);
	return 1;
}

/* sock:starttls(servername, verify, cafile, fn) -> false (fn(true | nil, err) later) | nil, err */
static int
tsock_starttls(lua_State *L)
{
	struct tsock	*s = check_sock(L);
	const char	*name = luaL_optstring(L, 2, "");
	int		 verify = lua_toboolean(L, 3);
	const char	*cafile = luaL_optstring(L, 4, NULL);
	char		 err[384];

	luaL_argcheck(L, strlen(name) < sizeof(s->servername), 2, "name too long");
	luaL_checktype(L, 5, LUA_TFUNCTION);
	if (s->bev == NULL)
		return push_closed(L, s);
	if (s->tls) {
		lua_pushnil(L);
		lua_pushliteral(L, "tls: already on");
		return 2;
	}
	snprintf(s->servername, sizeof(s->servername), "%s", name);
	s->verify = verify;
	free(s->cafile);
	s->cafile = NULL;
	if (cafile != NULL && (s->cafile = strdup(cafile)) == NULL)
		return luaL_error(L, "out of memory");
	if (tls_start(s, err, sizeof(err)) == -1) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	sock_wait(L, s, OP_TLS, 5, 1);
	lua_pushboolean(L, 0);
	return 1;
}

/* sock:cancel(): the operation in flight is forgotten (its fn never runs) */
static int
tsock_cancel(lua_State *L)
{
	struct tsock *s = luaL_checkudata(L, 1, TCP_MT);

	sock_forget(s);
	return 0;
}

/* sock:close() (again: nothing) */
static int
tsock_close(lua_State *L)
{
	struct tsock *s = luaL_checkudata(L, 1, TCP_MT);

	sock_forget(s);
	sock_shut(s, "closed");
	return 0;
}

/* sock:isopen() -> boolean; sock:tls() -> boolean */
static int
tsock_isopen(lua_State *L)
{
	struct tsock *s = luaL_checkudata(L, 1, TCP_MT);

	lua_pushboolean(L, s->bev != NULL);
	return 1;
}

static int
tsock_gc(lua_State *L)
{
	struct tsock *s = luaL_checkudata(L, 1, TCP_MT);

	sock_forget(s);
	sock_shut(s, "closed");
	free(s->cafile);
	s->cafile = NULL;
	return 0;
}

static int
ctx_gc(lua_State *L)
{
	struct tcp_ctx *ctx = luaL_checkudata(L, 1, TCP_CTX_MT);

	if (ctx->dns != NULL)
		evdns_base_free(ctx->dns, 1);
	ctx->dns = NULL;
	SSL_CTX_free(ctx->ssl);
	ctx->ssl = NULL;
	return 0;
}

static const luaL_Reg tsock_methods[] = {
	{ "send",	tsock_send },
	{ "receive",	tsock_receive },
	{ "starttls",	tsock_starttls },
	{ "cancel",	tsock_cancel },
	{ "close",	tsock_close },
	{ "isopen",	tsock_isopen },
	{ NULL,		NULL },
};

/*
 * platform.tcp_connect(host, port, opts, fn) -> socket | nil, err
 * opts: max (open sockets allowed), tls, servername, verify, cafile.
 * fn(true) once connected (and the handshake done, with tls), or
 * fn(nil, err) with the socket closed.  (upvalue: the context)
 */
static int
ltcp_connect(lua_State *L)
{
	struct tcp_ctx	*ctx = luaL_checkudata(L, lua_upvalueindex(1), TCP_CTX_MT);
	const char	*host = luaL_checkstring(L, 1), *name, *cafile;
	lua_Integer	 port = luaL_checkinteger(L, 2), max;
	struct tsock	*s;

	luaL_checktype(L, 3, LUA_TTABLE);
	luaL_checktype(L, 4, LUA_TFUNCTION);
	luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
	luaL_argcheck(L, strlen(host) < sizeof(s->servername), 1, "host name too long");
	lua_getfield(L, 3, "max");
	max = luaL_optinteger(L, -1, 256);
	lua_getfield(L, 3, "servername");
	name = luaL_optstring(L, -1, host);
	luaL_argcheck(L, strlen(name) < sizeof(s->servername), 3, "servername too long");
	lua_getfield(L, 3, "cafile");
	cafile = luaL_optstring(L, -1, NULL);
	if (ctx->open >= max) {
		lua_pushnil(L);
		lua_pushliteral(L, "too many sockets");
		return 2;
	}
	s = lua_newuserdatauv(L, sizeof(*s), 1);
	memset(s, 0, sizeof(*s));
	s->fn_ref = s->self_ref = LUA_NOREF;
	luaL_setmetatable(L, TCP_MT);
	lua_pushvalue(L, lua_upvalueindex(1));	/* the context outlives its sockets */
	lua_setiuservalue(L, -2, 1);
	s->ctx = ctx;
	lua_getfield(L, LUA_REGISTRYINDEX, "luasmtpd.main");
	s->L = lua_tothread(L, -1);
	lua_pop(L, 1);
	lua_getfield(L, 3, "tls");
	s->tls_at_connect = lua_toboolean(L, -1);
	lua_getfield(L, 3, "verify");
	s->verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
	lua_pop(L, 2);
	snprintf(s->host, sizeof(s->host), "%s", host);
	snprintf(s->servername, sizeof(s->servername), "%s", name);
	if (cafile != NULL && (s->cafile = strdup(cafile)) == NULL)
		return luaL_error(L, "out of memory");
	if (ctx->dns == NULL && (ctx->dns = evdns_base_new(ctx->base,
	    EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL) {
		lua_pushnil(L);
		lua_pushliteral(L, "cannot start the resolver");
		return 2;
	}
	s->bev = bufferevent_socket_new(ctx->base, -1,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (s->bev == NULL) {
		lua_pushnil(L);
		lua_pushliteral(L, "out of memory");
		return 2;
	}
	ctx->open++;
	bufferevent_setcb(s->bev, sock_read, sock_write, sock_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, READ_HIGH);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	sock_wait(L, s, OP_CONNECT, 4, lua_gettop(L));
	if (bufferevent_socket_connect_hostname(s->bev, ctx->dns, AF_UNSPEC, host,
	    (int)port) == -1) {
		char why[384];

		sock_error_words(s, why, sizeof(why));
		sock_forget(s);
		sock_shut(s, why);
		return push_closed(L, s);
	}
	return 1;
}

void
ltcp_push_connect(lua_State *L, struct event_base *base)
{
	struct tcp_ctx *ctx;

	if (luaL_newmetatable(L, TCP_MT)) {
		luaL_newlib(L, tsock_methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, tsock_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	ctx = lua_newuserdatauv(L, sizeof(*ctx), 0);
	memset(ctx, 0, sizeof(*ctx));
	ctx->base = base;
	if (luaL_newmetatable(L, TCP_CTX_MT)) {
		lua_pushcfunction(L, ctx_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	lua_pushcclosure(L, ltcp_connect, 1);
}
