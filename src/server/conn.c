/*
 * conn.c -- one accepted client: the bufferevent, its session and their glue.
 *
 * Owns the socket's bufferevent, the session's timer and wake events, and the
 * session itself (session_create .. session_destroy).  Implements struct
 * session_io over the bufferevent: replies go to the output buffer, held
 * input is fed again on wake, close flushes (bounded in time) then frees.
 * Every call into the engine is made from a libevent callback of this file,
 * and the conn is freed only after that call returned (conn_settle), never
 * from inside one of the io functions the engine calls.
 *
 * TLS (tls.h owns the OpenSSL context): io->starttls waits for the 220 to
 * be flushed, drops the unread plaintext, and moves the socket from the
 * plain bufferevent to a bufferevent_openssl that accepts the handshake;
 * an implicit-TLS conn starts on one and creates its session only once the
 * handshake is done.  Both kinds keep one buffer layer, so "output empty"
 * still means "handed to the kernel" for flow control and the last flush.
 *
 * PROXY protocol (proxy.h): on a listener with {proxy = true} the conn
 * first reads the header, then starts its session (or the implicit TLS
 * handshake) with the client's address as its peer.  The header is usually
 * in by the accept (HAProxy sends it on connect), so conn_create reads at
 * once: a plain conn one recv onto the stack (octets after the header go to
 * its bufferevent's input for the session), an implicit-TLS conn a peek,
 * then exactly the header's octets, so that not one octet of the
 * ClientHello is taken.  Only a header not in yet, or in part, is waited
 * for: through the bufferevent, or a read event that peeks again.  A bad
 * header, an EOF or the deadline closes the conn with a log line and no
 * reply.
 *
 * Deadlines: the engine's timer (io->timer) bounds everything a session
 * waits for; c->limit bounds what only the transport sees, from its start,
 * whatever the client sends: the PROXY header (proxyTimeout), a handshake
 * (tlsHandshakeTimeout) and the last flush of a closing conn
 * (CONN_CLOSE_SECS).  A conn that closes during a
 * STARTTLS switch or a handshake has no channel for a reply: freed at once.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "session.h"
#include "tls.h"

#define CONN_IN_HIGH	(64 * 1024)	/* input buffered before reading stops */
#define CONN_OUT_HIGH	(64 * 1024)	/* unread replies before reading stops */
#define CONN_OUT_LOW	(16 * 1024)	/* ... and where it resumes */
#define CONN_FEED_MIN	4096		/* contiguous bytes offered to the engine */
#define CONN_LIBEVENT_READ 4096		/* libevent 2.1's most in one read (EVBUFFER_MAX_READ) */
#define CONN_CLOSE_SECS	10		/* bound on flushing a closing conn */
#define CONN_TOO_MANY	"421 4.7.0 Too many connections\r\n"

/* What c->limit is armed for. */
enum conn_limit {
	LIMIT_NONE,
	LIMIT_PROXY,		/* the PROXY header's timeout from the accept */
	LIMIT_HANDSHAKE,	/* cfg.timeout_tls_ms from the handshake's start */
	LIMIT_CLOSE,		/* CONN_CLOSE_SECS from the close */
};

struct conn {
	struct conn		*next, *prev;	/* in list */
	struct conn_list	*list;
	struct bufferevent	*bev;
	struct session		*s;
	struct event		*timer;		/* io->timer */
	uint64_t		 deadline;	/* when the engine's timeout is due (conn_now) */
	uint64_t		 expiry;	/* when c->timer fires (never later) */
	struct event		*limit;		/* the transport's own deadline */
	enum conn_limit		 limit_for;
	struct event		*deferred;	/* wake or close outside a feed */
	uint64_t		 id;		/* session_id(), kept for the last log line */
	struct session_peer	 peer;
	uint64_t		 bytes_in;
	size_t			 in_left;	/* input the last feed left: a read callback's new octets are the rest */
	const char		*why;		/* why the conn ended, for the log */
	const char		*hint;		/* the reason if the engine closes now */
	struct session_config	 cfg;		/* its port's (server.c) */
	struct tls_ctx		*tls;		/* NULL: no TLS */
	bool			 implicit_tls;	/* handshake before the greeting */
	const struct session_hooks *hooks;
	void			*hook_ctx;
	struct session_tls	 tls_info;	/* once a handshake is done */
	bool			 tls_pending;	/* STARTTLS: 220 queued, switch once flushed */
	bool			 handshaking;	/* a TLS handshake is running */
	bool			 tls_up;	/* c->bev is a bufferevent_openssl, handshake done */
	bool			 feeding;	/* inside session_feed() */
	bool			 woken;		/* io->wake during that feed */
	bool			 held;		/* the engine took less: wait for wake */
	bool			 out_full;	/* reading stopped: replies unread */
	bool			 eof;		/* the client closed its side */
	bool			 closing;	/* io->close: flush, then free */
	bool			 freeing;	/* in conn_free(): ignore the engine */
	bool			 keyed;		/* counted by its peer's key, not in the total only */
	bool			 uncounted;	/* not counted at all: no closed callback */
	bool			 proxying;	/* waiting for the PROXY header */
	struct event		*proxy_ev;	/* implicit TLS: reading it from the socket (owns it) */
	uint8_t			*pbuf;		/* the header so far */
	size_t			 phave;
	unsigned		 proxy_ms;
	char			 via[PROXY_ADDR_MAX];	/* the proxy, once a header named the client */
	uint16_t		 via_port;
};

static void	conn_io_write(void *, const char *, size_t);
static void	conn_io_close(void *);
static void	conn_io_wake(void *);
static void	conn_io_timer(void *, unsigned);
static void	conn_io_starttls(void *);
static uint64_t	conn_io_now(void *);
static void	conn_read_cb(struct bufferevent *, void *);
static void	conn_write_cb(struct bufferevent *, void *);
static void	conn_event_cb(struct bufferevent *, short, void *);
static void	conn_timer_cb(evutil_socket_t, short, void *);
static void	conn_limit_cb(evutil_socket_t, short, void *);
static void	conn_deferred_cb(evutil_socket_t, short, void *);
static void	conn_pump(struct conn *);
static int	conn_read_more(struct conn *);
static bool	conn_settle(struct conn *);
static void	conn_end_session(struct conn *, const char *);
static void	conn_free(struct conn *);
static void	conn_peer_fill(evutil_socket_t, struct session_peer *);
static int	conn_start_session(struct conn *);
static int	conn_tls_accept(struct conn *, struct event_base *, evutil_socket_t);
static bool	conn_tls_switch(struct conn *);
static void	conn_tls_done(struct conn *);
static void	conn_tls_failed(struct conn *, short);
static bool	conn_begin(struct conn *, struct event_base *, evutil_socket_t);
static void	conn_proxy_cb(evutil_socket_t, short, void *);
static int	conn_proxy_peek(struct conn *, evutil_socket_t);
static int	conn_proxy_first(struct conn *, evutil_socket_t);
static int	conn_proxy_read(struct conn *);
static bool	conn_proxy_done(struct conn *, const struct proxy_header *, evutil_socket_t);
static void	conn_proxy_fail(struct conn *, const char *);
static int	conn_bev_new(struct conn *, struct event_base *, evutil_socket_t);

static const struct session_io conn_io = {
	.write = conn_io_write,
	.close = conn_io_close,
	.wake = conn_io_wake,
	.timer = conn_io_timer,
	.starttls = conn_io_starttls,
	.now = conn_io_now,
};

/* Milliseconds on the monotonic clock: the engine's deadlines and c->timer's. */
static uint64_t
conn_now(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct timeval
conn_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	return tv;
}

struct conn *
conn_create(struct event_base *base, evutil_socket_t fd,
    const struct session_config *cfg, struct tls_ctx *tls, bool implicit_tls,
    const struct proxy_listen *proxy, const struct session_hooks *hooks,
    void *hook_ctx, struct conn_list *list)
{
	struct conn	*c;
	struct timeval	 tv;
	int		 one = 1, r;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		log_error(0, "connection: out of memory");
		evutil_closesocket(fd);
		return NULL;
	}
	c->list = list;
	c->cfg = *cfg;
	c->tls = tls;
	c->implicit_tls = implicit_tls;
	c->hooks = hooks;
	c->hook_ctx = hook_ctx;
	c->keyed = proxy == NULL || !proxy->on;	/* a proxy's conn: the total only */
	if ((c->next = list->head) != NULL)
		c->next->prev = c;
	list->head = c;
	list->count++;
	metrics_open(1);
	metrics_count(M_CONNECTIONS);

	conn_peer_fill(fd, &c->peer);
	if (c->tls == NULL)
		c->cfg.starttls = c->implicit_tls = false;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (evutil_make_socket_nonblocking(fd) == -1) {
		evutil_closesocket(fd);
		goto fail;
	}
	if ((c->timer = evtimer_new(base, conn_timer_cb, c)) == NULL ||
	    (c->limit = evtimer_new(base, conn_limit_cb, c)) == NULL ||
	    (c->deferred = event_new(base, -1, 0, conn_deferred_cb, c)) == NULL) {
		evutil_closesocket(fd);
		goto fail;
	}
	if (proxy != NULL && proxy->on) {
		/*
		 * The header first; then conn_begin.  HAProxy sends it on
		 * connect, so it is usually in already: read at once, and
		 * wait for it (bounded) only when it is not.
		 */
		c->proxying = true;
		c->proxy_ms = proxy->timeout_ms;
		if (!c->implicit_tls) {
			if (conn_bev_new(c, base, fd) == -1)
				goto fail;
			r = conn_proxy_first(c, fd);
		} else if ((c->proxy_ev = event_new(base, fd, EV_READ | EV_PERSIST,
		    conn_proxy_cb, c)) == NULL) {
			evutil_closesocket(fd);
			goto fail;
		} else {
			r = conn_proxy_peek(c, fd);
		}
		if (r != 0)
			return r == 1 ? c : NULL;	/* -1: c was freed */
		log_debug(0, "connection from %s port %u: no complete PROXY header "
		    "yet: waiting up to %u ms (proxyTimeout)", c->peer.remote_addr,
		    c->peer.remote_port, c->proxy_ms);
		c->limit_for = LIMIT_PROXY;
		tv = conn_tv(proxy->timeout_ms);
		evtimer_add(c->limit, &tv);
		if (c->bev != NULL)
			bufferevent_enable(c->bev, EV_READ);
		else
			event_add(c->proxy_ev, NULL);
		return c;
	}
	return conn_begin(c, base, fd) ? NULL : c;
fail:
	log_error(0, "connection from %s port %u: %s", c->peer.remote_addr,
	    c->peer.remote_port, "out of memory");
	c->why = "out of memory";
	conn_free(c);
	return NULL;
}

/* The plain bufferevent over fd (taken, even on error). */
static int
conn_bev_new(struct conn *c, struct event_base *base, evutil_socket_t fd)
{
	if ((c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
		evutil_closesocket(fd);
		return -1;
	}
	bufferevent_setwatermark(c->bev, EV_READ, 0, CONN_IN_HIGH);
	bufferevent_setwatermark(c->bev, EV_WRITE, CONN_OUT_LOW, 0);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	return 0;
}

/*
 * The socket is the client's from here on: the implicit TLS handshake, or
 * the session on the plain bufferevent (made now, or kept from reading a
 * PROXY header, with any octets after it still in its buffer).  Returns
 * true if c was freed (a failure, or a session that closed at once).
 */
static bool
conn_begin(struct conn *c, struct event_base *base, evutil_socket_t fd)
{
	if (c->implicit_tls) {
		/* RFC 8314: the handshake first, the session on its success */
		if (conn_tls_accept(c, base, fd) == -1)
			goto fail;
		return false;
	}
	if (c->bev == NULL && conn_bev_new(c, base, fd) == -1)
		goto fail;
	if (conn_start_session(c) == -1)
		goto fail;
	if (conn_settle(c))
		return true;	/* rejected and flushed already */
	if (!c->closing)
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return false;
fail:
	log_error(0, "connection from %s port %u: %s", c->peer.remote_addr,
	    c->peer.remote_port, "out of memory");
	c->why = "out of memory";
	conn_free(c);
	return true;
}

/*
 * The PROXY header of an implicit-TLS conn, from the socket: peek at what
 * arrived (after what was taken already), take exactly the header's octets
 * once it is complete, or all of them while it is not (each of them is the
 * header's then, and taking them keeps a level-triggered read event from
 * firing again at once).  The first peek (at the accept) uses the stack:
 * c->pbuf is made only for a header that comes in pieces.  Returns 1 when
 * the header is in and the conn has begun, 0 while more is needed, -1 when
 * c was freed.
 */
static int
conn_proxy_peek(struct conn *c, evutil_socket_t fd)
{
	uint8_t			 first[PROXY_HEADER_MAX], *buf;
	struct proxy_header	 h;
	const char		*why;
	ssize_t			 n;
	size_t			 take;
	int			 r;

	buf = c->pbuf != NULL ? c->pbuf : first;
	n = recv(fd, buf + c->phave, PROXY_HEADER_MAX - c->phave, MSG_PEEK);
	if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n <= 0) {
		conn_proxy_fail(c, n == 0 ? "the client closed the connection before "
		    "its PROXY header" : strerror(errno));
		return -1;
	}
	if ((r = proxy_parse(buf, c->phave + (size_t)n, &h, &why)) == -1) {
		conn_proxy_fail(c, why);
		return -1;
	}
	if (r == 0 && c->pbuf == NULL) {	/* a first piece: kept until the rest */
		if ((c->pbuf = malloc(PROXY_HEADER_MAX)) == NULL) {
			conn_proxy_fail(c, "out of memory");
			return -1;
		}
		buf = c->pbuf;
	}
	take = r == 0 ? (size_t)n : (size_t)r - c->phave;
	if (recv(fd, buf + c->phave, take, 0) != (ssize_t)take) {
		conn_proxy_fail(c, "cannot read the PROXY header");
		return -1;
	}
	c->phave += take;
	if (r == 0)
		return 0;
	event_free(c->proxy_ev);
	c->proxy_ev = NULL;
	free(c->pbuf);
	c->pbuf = NULL;
	return conn_proxy_done(c, &h, fd) ? -1 : 1;
}

static void
conn_proxy_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	(void)conn_proxy_peek(arg, fd);	/* may free the conn */
}

/*
 * A plain conn's header at the accept: one recv of at most the header's
 * bound onto the stack, parsed there.  What is not the header (octets
 * after it, or a header still incomplete) goes to the bufferevent's input,
 * where the session (or conn_proxy_read) finds it.  Saves the event loop's
 * turn, libevent's FIONREAD and readv, and the input buffer's work when the
 * header is in already and alone.  Returns as conn_proxy_peek.
 */
static int
conn_proxy_first(struct conn *c, evutil_socket_t fd)
{
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	uint8_t			 buf[PROXY_HEADER_MAX];
	struct proxy_header	 h;
	const char		*why;
	ssize_t			 n;
	size_t			 used;
	int			 r, added = 0;

	n = recv(fd, buf, sizeof(buf), 0);
	if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n <= 0) {
		conn_proxy_fail(c, n == 0 ? "the client closed the connection before "
		    "its PROXY header" : strerror(errno));
		return -1;
	}
	if ((r = proxy_parse(buf, (size_t)n, &h, &why)) == -1) {
		conn_proxy_fail(c, why);
		return -1;
	}
	if ((used = (size_t)r) < (size_t)n) {
		/* the bufferevent keeps its input's end frozen but while it reads */
		evbuffer_unfreeze(in, 0);
		added = evbuffer_add(in, buf + used, (size_t)n - used);
		evbuffer_freeze(in, 0);
	}
	if (added == -1) {
		conn_proxy_fail(c, "out of memory");
		return -1;
	}
	if (r == 0)
		return 0;	/* the rest through the bufferevent */
	return conn_proxy_done(c, &h, fd) ? -1 : 1;
}

/* A plain conn's PROXY header, from its bufferevent's input.  Returns as conn_proxy_peek. */
static int
conn_proxy_read(struct conn *c)
{
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	struct proxy_header	 h;
	const char		*why;
	size_t			 len = evbuffer_get_length(in);
	uint8_t			*p;
	int			 r;

	if (len > PROXY_HEADER_MAX)
		len = PROXY_HEADER_MAX;
	if ((p = evbuffer_pullup(in, (ev_ssize_t)len)) == NULL) {
		conn_proxy_fail(c, "out of memory");
		return -1;
	}
	if ((r = proxy_parse(p, len, &h, &why)) == -1) {
		conn_proxy_fail(c, why);
		return -1;
	}
	if (r == 0)
		return 0;	/* more to come (within PROXY_HEADER_MAX) */
	evbuffer_drain(in, (size_t)r);
	return conn_proxy_done(c, &h, bufferevent_getfd(c->bev)) ? -1 : 1;
}

/*
 * The header is in: the client it names becomes the peer (counted as that
 * client), and the conn begins.  A plain conn's octets after the header
 * are the session's first input.
 */
static bool
conn_proxy_done(struct conn *c, const struct proxy_header *hp, evutil_socket_t fd)
{
	const struct proxy_header	 h = *hp;
	struct session_peer		 client;

	log_debug(0, "connection from %s port %u: PROXY v%d header read %s",
	    c->peer.remote_addr, c->peer.remote_port, h.version,
	    c->limit_for == LIMIT_PROXY ? "after a wait" : "at the accept");
	c->proxying = false;
	evtimer_del(c->limit);
	c->limit_for = LIMIT_NONE;
	if (h.known) {
		/* same-size NUL-terminated arrays: copies, not printf (per connection) */
		_Static_assert(sizeof(client.remote_addr) == sizeof(h.src_addr) &&
		    sizeof(c->via) == sizeof(c->peer.remote_addr), "address sizes");
		client = c->peer;
		memcpy(client.remote_addr, h.src_addr, sizeof(client.remote_addr));
		client.remote_port = h.src_port;
		memcpy(client.local_addr, h.dst_addr, sizeof(client.local_addr));
		client.local_port = h.dst_port;
		memcpy(c->via, c->peer.remote_addr, sizeof(c->via));
		c->via_port = c->peer.remote_port;
		memcpy(client.via, c->via, sizeof(client.via));
		client.via_port = c->via_port;
		/* counted in the total only so far: now as this client */
		if (c->list->proxied != NULL && !c->list->proxied(c->list->arg, &client)) {
			metrics_count(M_REFUSED_LIMIT);
			(void)send(fd, CONN_TOO_MANY, sizeof(CONN_TOO_MANY) - 1,
			    MSG_DONTWAIT | MSG_NOSIGNAL);
			log_warn(0, "connection from %s port %u via proxy %s port %u "
			    "refused: 421 too many connections", client.remote_addr,
			    client.remote_port, c->via, c->via_port);
			c->uncounted = true;
			if (c->bev == NULL)
				close(fd);
			conn_free(c);
			return true;
		}
		c->keyed = c->list->proxied != NULL;
		c->peer = client;
	} else {
		log_debug(0, "connection from %s port %u: PROXY v%d header without "
		    "a client address (LOCAL or UNKNOWN): the proxy is the peer",
		    c->peer.remote_addr, c->peer.remote_port, h.version);
	}
	if (conn_begin(c, event_get_base(c->timer), fd))
		return true;
	if (c->bev == NULL || c->implicit_tls)
		return false;
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 && !c->held) {
		conn_pump(c);	/* what came with the header */
		return conn_settle(c);
	}
	return false;
}

/* No header, a bad one, or none in time: a log line, no reply (nothing to say it in). */
static void
conn_proxy_fail(struct conn *c, const char *why)
{
	metrics_count(M_REFUSED_PROXY);
	log_info(0, "connection from %s port %u closed: %s (a PROXY protocol "
	    "header was expected)", c->peer.remote_addr, c->peer.remote_port, why);
	c->why = "bad PROXY header";
	conn_free(c);
}

void
conn_destroy(struct conn *c)
{
	if (c == NULL)
		return;
	if (c->why == NULL)
		c->why = "dropped";
	conn_free(c);
}

void
conn_shutdown(struct conn *c)
{
	if (c != NULL && c->s == NULL && (c->handshaking || c->proxying) &&
	    !c->closing) {
		c->why = "server shutdown";	/* no session yet: nothing to say */
		conn_free(c);
		return;
	}
	if (c == NULL || c->s == NULL || c->closing)
		return;
	c->hint = "server shutdown";
	session_shutdown(c->s);
	c->hint = NULL;
	if (!c->closing)	/* the engine must close; make sure it does */
		conn_io_close(c);
	(void)conn_settle(c);
}

void
conn_list_shutdown(struct conn_list *list)
{
	struct conn	*c, *next;

	for (c = list->head; c != NULL; c = next) {
		next = c->next;
		conn_shutdown(c);	/* may free c, never another conn */
	}
}

void
conn_list_destroy(struct conn_list *list)
{
	while (list->head != NULL)
		conn_destroy(list->head);
}

/* --- the session's io ---------------------------------------------------- */

static void
conn_io_write(void *arg, const char *buf, size_t len)
{
	struct conn	*c = arg;

	if (c->freeing || c->bev == NULL)
		return;
	if (evbuffer_add(bufferevent_get_output(c->bev), buf, len) == -1)
		log_error(c->id, "reply lost: out of memory");
}

static void
conn_io_close(void *arg)
{
	struct conn	*c = arg;

	if (c->freeing || c->closing)
		return;
	c->closing = true;
	if (c->why == NULL)
		c->why = c->hint != NULL ? c->hint : "session ended";
	bufferevent_disable(c->bev, EV_READ);
	/* when called outside a callback of ours, settle from the loop */
	if (!c->feeding)
		event_active(c->deferred, 0, 0);
}

static void
conn_io_wake(void *arg)
{
	struct conn	*c = arg;

	if (c->freeing)
		return;
	if (c->feeding) {		/* session_feed() is on the stack */
		c->woken = true;
		return;
	}
	event_active(c->deferred, 0, 0);
}

/*
 * The engine re-arms its timer after every command; moving a libevent timer
 * costs a heap operation each time.  So the timer stays where it is when it
 * would fire no later than the new deadline, and conn_timer_cb re-arms it for
 * the rest when it fires early.
 */
static void
conn_io_timer(void *arg, unsigned ms)
{
	struct conn	*c = arg;
	struct timeval	 tv;

	if (c->freeing || c->timer == NULL)
		return;
	if (ms == 0) {
		evtimer_del(c->timer);
		return;
	}
	c->deadline = conn_now() + ms;
	if (evtimer_pending(c->timer, NULL) && c->expiry <= c->deadline)
		return;
	c->expiry = c->deadline;
	tv = conn_tv(ms);
	evtimer_add(c->timer, &tv);
}

static uint64_t
conn_io_now(void *arg)
{
	(void)arg;
	return conn_now();
}

/*
 * STARTTLS's 220 is in the output buffer and the engine discards what it is
 * fed from now on: stop reading; conn_write_cb switches once it is flushed.
 */
static void
conn_io_starttls(void *arg)
{
	struct conn	*c = arg;

	if (c->freeing || c->closing || c->bev == NULL)
		return;
	if (c->tls == NULL) {	/* cannot happen: cfg.starttls needs tls */
		log_error(c->id, "STARTTLS without a TLS context");
		conn_io_close(c);
		return;
	}
	c->tls_pending = true;
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);	/* call back when empty */
	bufferevent_enable(c->bev, EV_WRITE);
}

/* --- libevent callbacks -------------------------------------------------- */

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn	*c = arg;
	int		 err;

	if (c->proxying) {
		(void)conn_proxy_read(c);	/* may free c */
		return;
	}
	if (c->held)		/* the engine waits: keep bytes until io->wake */
		return;
	err = conn_read_more(c);
	conn_pump(c);
	if (err != 0) {		/* as libevent says it after its own read */
		errno = err;
		conn_event_cb(bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);	/* frees c */
		return;
	}
	(void)conn_settle(c);
}

/*
 * libevent 2.1 reads at most 4 KiB in a read callback (EVBUFFER_MAX_READ;
 * evbuffer_set_max_read is 2.2's): a 100 KiB message would take 25 turns
 * of the loop, each an ioctl(FIONREAD), a readv and a feed.  When libevent's
 * read was a full 4 KiB (more is likely waiting: a command's few octets
 * never pay a read that finds nothing), a plain conn takes what else the
 * socket holds now, up to just below the input's high watermark (reaching
 * it would stop and restart the reading, two epoll_ctl, though the feed
 * that follows takes it all), in one readv; the input's callbacks see it
 * as they see libevent's reads.  Not under TLS (the records are
 * bufferevent_openssl's) nor while a STARTTLS switch waits (octets after it
 * are never read as plaintext).  An EOF is left in the socket for
 * libevent's next read.  Returns 0, or the socket error that ended it.
 */
static int
conn_read_more(struct conn *c)
{
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	struct evbuffer_iovec	 vec[2];
	struct iovec		 iov[2];
	size_t			 have = evbuffer_get_length(in), left;
	ssize_t			 n;
	int			 nvec, i, used, err;

	if (c->tls_up || c->handshaking || c->tls_pending || c->out_full || c->eof ||
	    c->closing || c->s == NULL || have >= CONN_IN_HIGH - 1 ||
	    have < c->in_left || have - c->in_left < CONN_LIBEVENT_READ)
		return 0;
	/* the bufferevent keeps its input's end frozen but while it reads */
	evbuffer_unfreeze(in, 0);
	if ((nvec = evbuffer_reserve_space(in, (ev_ssize_t)(CONN_IN_HIGH - 1 - have), vec, 2)) < 1) {
		evbuffer_freeze(in, 0);
		return 0;
	}
	for (i = 0, left = CONN_IN_HIGH - 1 - have; i < nvec; i++) {	/* a chain may offer more */
		iov[i].iov_base = vec[i].iov_base;
		iov[i].iov_len = vec[i].iov_len < left ? vec[i].iov_len : left;
		left -= iov[i].iov_len;
	}
	do
		n = readv(bufferevent_getfd(c->bev), iov, nvec);
	while (n == -1 && errno == EINTR);
	err = n == -1 && errno != EAGAIN && errno != EWOULDBLOCK ? errno : 0;
	if (n > 0) {	/* nothing reserved is committed otherwise */
		for (i = used = 0, left = (size_t)n; i < nvec && left > 0; i++, used++) {
			vec[i].iov_len = iov[i].iov_len < left ? iov[i].iov_len : left;
			left -= vec[i].iov_len;
		}
		(void)evbuffer_commit_space(in, vec, used);
	}
	evbuffer_freeze(in, 0);
	return err;
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn	*c = arg;
	size_t		 left = evbuffer_get_length(bufferevent_get_output(bev));

	if (c->handshaking)
		return;
	if (c->closing || c->s == NULL) {
		(void)conn_settle(c);	/* frees once drained */
		return;
	}
	if (c->tls_pending) {
		if (left == 0)
			(void)conn_tls_switch(c);	/* may free c */
		return;
	}
	if (c->out_full && left <= CONN_OUT_LOW) {
		c->out_full = false;
		if (!c->eof)
			bufferevent_enable(bev, EV_READ);
		if (!c->held)
			conn_pump(c);
		(void)conn_settle(c);
	}
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn	*c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		conn_tls_done(c);	/* may free c */
		return;
	}
	if (c->proxying && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
		conn_proxy_fail(c, (what & BEV_EVENT_EOF) ? "the client closed the "
		    "connection before its PROXY header" :
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		return;
	}
	if (c->handshaking &&
	    (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))) {
		conn_tls_failed(c, what);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		c->eof = true;
		bufferevent_disable(bev, EV_READ);
		if (c->s == NULL || c->closing) {
			c->why = c->why != NULL ? c->why : "client closed";
			conn_free(c);
			return;
		}
		/* pipelined commands before the EOF are still answered */
		if (!c->held)
			conn_pump(c);
		(void)conn_settle(c);
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		int	 err = EVUTIL_SOCKET_ERROR();

		if (c->why == NULL || !c->closing)
			c->why = c->tls_up && err == 0 ? "TLS error" :
			    evutil_socket_error_to_string(err);
	} else if (what & BEV_EVENT_TIMEOUT) {
		c->why = "flush timed out";
	} else {
		return;
	}
	conn_end_session(c, c->why);
	conn_free(c);
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn	*c = arg;
	struct timeval	 left;
	uint64_t	 now;

	(void)fd, (void)what;
	if (c->s == NULL)
		return;
	if ((now = conn_now()) < c->deadline) {
		left = conn_tv(c->deadline - now);	/* early: the deadline moved */
		c->expiry = c->deadline;
		evtimer_add(c->timer, &left);
		return;
	}
	c->hint = "timeout";
	session_timeout(c->s);
	c->hint = NULL;
	if (!c->held)
		conn_pump(c);
	(void)conn_settle(c);
}

/* A handshake or a closing conn's flush took too long: no reply, free. */
static void
conn_limit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn	*c = arg;
	unsigned	 ms = c->cfg.timeout_tls_ms;
	char		 t[24], why[96];

	(void)fd, (void)what;
	if (c->limit_for == LIMIT_PROXY && c->proxying) {
		ms = c->proxy_ms;
		if (ms % 1000 == 0)
			snprintf(t, sizeof(t), "%u", ms / 1000);
		else
			snprintf(t, sizeof(t), "%u.%03u", ms / 1000, ms % 1000);
		snprintf(why, sizeof(why), "no complete PROXY header within %s s "
		    "(proxyTimeout)", t);
		conn_proxy_fail(c, why);
		return;
	}
	if (c->limit_for == LIMIT_HANDSHAKE && c->handshaking) {
		if (ms % 1000 == 0)
			snprintf(t, sizeof(t), "%u", ms / 1000);
		else
			snprintf(t, sizeof(t), "%u.%03u", ms / 1000, ms % 1000);
		log_info(c->id, "TLS handshake with %s port %u failed: not done "
		    "within %s s (tlsHandshakeTimeout)", c->peer.remote_addr,
		    c->peer.remote_port, t);
		metrics_count(M_TLS_FAILED);
		c->handshaking = false;
		c->why = "TLS handshake timed out";
	} else if (c->limit_for == LIMIT_CLOSE) {
		c->why = "flush timed out";
	} else {
		return;
	}
	conn_end_session(c, c->why);
	conn_free(c);
}

static void
conn_deferred_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn	*c = arg;

	(void)fd, (void)what;
	if (!c->closing && (c->handshaking || c->tls_pending))
		return;		/* the switch or the handshake's end pumps */
	if (c->s != NULL && !c->closing) {
		c->held = false;
		conn_pump(c);
	}
	(void)conn_settle(c);
}

/* --- feeding and ending -------------------------------------------------- */

/* Feeds buffered input to the engine until it is empty or the engine waits. */
static void
conn_pump(struct conn *c)
{
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	struct evbuffer		*out = bufferevent_get_output(c->bev);
	struct evbuffer_iovec	 vec;
	size_t			 len, took;
	char			*p;

	c->feeding = true;
	while (c->s != NULL && !c->closing && !c->held &&
	    evbuffer_get_length(out) <= CONN_OUT_HIGH &&
	    (len = evbuffer_get_length(in)) > 0) {
		if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
			break;
		if (vec.iov_len < len && vec.iov_len < CONN_FEED_MIN) {
			/* a small first chunk: offer a few KiB in one piece */
			vec.iov_len = len < CONN_FEED_MIN ? len : CONN_FEED_MIN;
			if ((p = (char *)evbuffer_pullup(in, (ev_ssize_t)vec.iov_len)) == NULL)
				break;
			vec.iov_base = p;
		}
		c->woken = false;
		took = session_feed(c->s, vec.iov_base, vec.iov_len);
		if (took > vec.iov_len)		/* never trust a count */
			took = vec.iov_len;
		evbuffer_drain(in, took);
		c->bytes_in += took;
		if (took < vec.iov_len && !c->woken)
			c->held = true;
	}
	c->feeding = false;
	c->in_left = evbuffer_get_length(in);
	if (c->s != NULL && !c->closing && c->eof && !c->held &&
	    evbuffer_get_length(in) == 0) {
		/* everything before the client's EOF was answered */
		session_eof(c->s);
		conn_end_session(c, "client closed");
		c->closing = true;
	}
}

/*
 * After any call into the engine, from a callback of ours: free the conn
 * if it is closing and its replies left, stop reading if the client does
 * not read its replies.  Returns true if the conn was freed.
 */
static bool
conn_settle(struct conn *c)
{
	struct evbuffer	*out = bufferevent_get_output(c->bev);
	struct timeval	 tv = { CONN_CLOSE_SECS, 0 };

	if (c->tls_pending && !c->closing && c->s != NULL) {
		if (evbuffer_get_length(out) == 0)
			return conn_tls_switch(c);
		return false;		/* conn_write_cb switches once flushed */
	}
	if (c->closing || c->s == NULL) {
		/* nothing leaves during a STARTTLS switch or a handshake */
		if (evbuffer_get_length(out) == 0 || c->handshaking || c->tls_pending) {
			conn_free(c);
			return true;
		}
		bufferevent_disable(c->bev, EV_READ);
		bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
		if (c->limit_for != LIMIT_CLOSE) {
			/* from the close on: a client reading slowly does not extend it */
			c->limit_for = LIMIT_CLOSE;
			evtimer_add(c->limit, &tv);
		}
		bufferevent_enable(c->bev, EV_WRITE);
		return false;
	}
	if (!c->out_full && evbuffer_get_length(out) > CONN_OUT_HIGH) {
		c->out_full = true;
		bufferevent_disable(c->bev, EV_READ);
	}
	return false;
}

/* Ends the session (no reply) and keeps the bufferevent to flush or free. */
static void
conn_end_session(struct conn *c, const char *why)
{
	struct session	*s = c->s;

	if (s == NULL)
		return;
	if (c->why == NULL)
		c->why = why;
	if (!c->closing && !c->eof)
		session_eof(s);		/* the socket failed: abort the message */
	session_set_end(s, c->why);
	c->s = NULL;
	c->freeing = true;	/* the engine's last calls are ignored */
	session_destroy(s);
	c->freeing = false;
}

static void
conn_free(struct conn *c)
{
	struct session	*s = c->s;

	c->freeing = true;
	c->s = NULL;
	if (s != NULL)		/* its summary line says why it ended */
		session_set_end(s, c->why != NULL ? c->why : "done");
	session_destroy(s);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->limit != NULL)
		event_free(c->limit);
	if (c->deferred != NULL)
		event_free(c->deferred);
	if (c->proxy_ev != NULL) {	/* still reading the header: the socket is ours */
		evutil_closesocket(event_get_fd(c->proxy_ev));
		event_free(c->proxy_ev);
	}
	free(c->pbuf);
	if (c->bev != NULL && c->tls_up) {
		SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

		/* a closure alert when the replies left; never waits */
		if (ssl != NULL && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
			(void)SSL_shutdown(ssl);
		ERR_clear_error();
	}
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	if (c->list->closed != NULL && !c->uncounted)
		c->list->closed(c->list->arg, c->keyed ? &c->peer : NULL);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		c->list->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->list->count--;
	metrics_open(-1);
	if (c->list->count == 0 && c->list->empty != NULL) {
		struct conn_list *list = c->list;

		free(c);
		list->empty(list->arg);
		return;
	}
	free(c);
}

/* --- sessions and TLS ------------------------------------------------------ */

/* Creates the session (asks CONNECT); the caller settles. */
static int
conn_start_session(struct conn *c)
{
	c->s = session_create(&c->cfg, c->hooks, c->hook_ctx, &conn_io, c,
	    &c->peer);
	if (c->s == NULL)
		return -1;
	c->id = session_id(c->s);
	if (c->via[0] != '\0')
		log_info(c->id, "connection from %s port %u to %s port %u via proxy "
		    "%s port %u%s", c->peer.remote_addr, c->peer.remote_port,
		    c->peer.local_addr, c->peer.local_port, c->via, c->via_port,
		    c->peer.tls != NULL ? " (implicit TLS)" : "");
	else
		log_info(c->id, "connection from %s port %u to %s port %u%s",
		    c->peer.remote_addr, c->peer.remote_port,
		    c->peer.local_addr, c->peer.local_port,
		    c->peer.tls != NULL ? " (implicit TLS)" : "");
	return 0;
}

/* Puts a bufferevent_openssl accepting a handshake on fd (taken, even on error). */
static int
conn_tls_accept(struct conn *c, struct event_base *base, evutil_socket_t fd)
{
	struct timeval	 tv = conn_tv(c->cfg.timeout_tls_ms);
	SSL		*ssl;

	if ((ssl = tls_ssl_new(c->tls)) == NULL) {
		evutil_closesocket(fd);
		return -1;
	}
	c->bev = bufferevent_openssl_socket_new(base, fd, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		SSL_free(ssl);
		evutil_closesocket(fd);
		return -1;
	}
	/* a client that closes without a closure alert is an EOF, not an error */
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CONN_IN_HIGH);
	bufferevent_setwatermark(c->bev, EV_WRITE, CONN_OUT_LOW, 0);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	/* from the start, whatever arrives: a trickled ClientHello gains nothing */
	c->handshaking = true;
	c->limit_for = LIMIT_HANDSHAKE;
	evtimer_add(c->limit, &tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return 0;
}

/*
 * STARTTLS's 220 left: drop the plaintext read after the STARTTLS line
 * (the engine discarded what it saw; this is what it was not fed), and
 * hand the socket to a bufferevent_openssl.  Returns true if c was freed.
 */
static bool
conn_tls_switch(struct conn *c)
{
	struct event_base	*base = bufferevent_get_base(c->bev);
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	evutil_socket_t		 fd = bufferevent_getfd(c->bev);
	size_t			 left = evbuffer_get_length(in);

	c->tls_pending = false;
	c->held = false;
	c->out_full = false;
	if (left > 0) {
		log_info(c->id, "discarded %zu octets sent after STARTTLS", left);
		evbuffer_drain(in, left);
	}
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	bufferevent_setfd(c->bev, -1);		/* the socket moves, not closed */
	bufferevent_free(c->bev);
	c->bev = NULL;
	if (fd == -1 || conn_tls_accept(c, base, fd) == -1) {
		log_error(c->id, "STARTTLS: cannot start the handshake");
		conn_end_session(c, "TLS setup failed");
		conn_free(c);
		return true;
	}
	return false;
}

/* The handshake is done: restart the session (STARTTLS) or create it (implicit). */
static void
conn_tls_done(struct conn *c)
{
	SSL	*ssl = bufferevent_openssl_get_ssl(c->bev);

	if (!c->handshaking || ssl == NULL)
		return;
	c->handshaking = false;
	c->tls_up = true;
	metrics_count(M_TLS_OK);
	evtimer_del(c->limit);
	c->limit_for = LIMIT_NONE;
	tls_info(ssl, &c->tls_info);
	if (c->s == NULL) {		/* implicit TLS: the session starts now */
		c->peer.tls = &c->tls_info;
		if (conn_start_session(c) == -1) {
			log_error(0, "connection from %s port %u: out of memory",
			    c->peer.remote_addr, c->peer.remote_port);
			c->why = "out of memory";
			conn_free(c);
			return;
		}
		log_info(c->id, "TLS started: %s %s", c->tls_info.version, c->tls_info.cipher);
	} else {
		session_tls_started(c->s, &c->tls_info);	/* wakes: the deferred pump */
	}
	if (conn_settle(c))
		return;
	if (!c->closing)
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* A failed handshake: a log line, no reply (there is no channel for one). */
static void
conn_tls_failed(struct conn *c, short what)
{
	char		 buf[256];
	const char	*why;
	unsigned long	 e;

	if (what & BEV_EVENT_TIMEOUT) {
		why = "timed out";
	} else if ((e = bufferevent_get_openssl_error(c->bev)) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		while (bufferevent_get_openssl_error(c->bev) != 0)
			;
		why = buf;
	} else if ((what & BEV_EVENT_ERROR) && EVUTIL_SOCKET_ERROR() != 0) {
		why = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
	} else {
		why = "the client closed the connection";
	}
	ERR_clear_error();
	log_info(c->id, "TLS handshake with %s port %u failed: %s",
	    c->peer.remote_addr, c->peer.remote_port, why);
	metrics_count(M_TLS_FAILED);
	c->handshaking = false;
	c->why = "TLS handshake failed";
	conn_end_session(c, c->why);
	conn_free(c);
}

/* an IPv4 or IPv6 address as text and its port; other families leave both alone */
static void
conn_addr_format(const struct sockaddr_storage *ss, char *addr, size_t size,
    uint16_t *port)
{
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, addr, size);
		*port = ntohs(sin6->sin6_port);
	} else if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, addr, size);
		*port = ntohs(sin->sin_port);
	}
}

static void
conn_peer_fill(evutil_socket_t fd, struct session_peer *peer)
{
	struct sockaddr_storage	 ss;
	socklen_t		 len;

	memset(peer, 0, sizeof(*peer));
	len = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
		conn_addr_format(&ss, peer->remote_addr,
		    sizeof(peer->remote_addr), &peer->remote_port);
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
		conn_addr_format(&ss, peer->local_addr,
		    sizeof(peer->local_addr), &peer->local_port);
	if (peer->remote_addr[0] == '\0')
		strcpy(peer->remote_addr, "unknown");
}
