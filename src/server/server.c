/*
 * server.c -- the listeners, the settings of each port, the list of live
 * connections and the stop sequence.
 *
 * Owns every listener, the settings of each local port (what the host of
 * the Lua state computed from the script: session config, TLS context) and
 * the conn_list; creates each conn with its listener's port settings; turns
 * SIGTERM/SIGINT into the stop sequence described in server.h: stop
 * accepting, grace period, 421 to who is left, a bounded flush, loop exit.
 * Counts each client in the shared connection counters (connlimit.h) as it
 * is accepted and as its conn is freed; over server.maxConnections or
 * server.maxConnectionsPerClient the client gets 421 at once, before any
 * Lua runs, and is closed.  On a PROXY listener only the sources of
 * proxyFrom are served (others are closed with a log line), counted in the
 * total only until their header names the client (server_conn_proxied).
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "conn.h"
#include "connlimit.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "server.h"

#define SERVER_LISTENERS_MAX	32
#define SERVER_FLUSH_SECS	15	/* after the 421s: then drop what is left */
#define SERVER_REFUSED_LOG_SECS	1	/* at most one line about refusals this often */
#define SERVER_TOO_MANY		"421 4.7.0 Too many connections\r\n"

enum server_state {
	SRV_RUNNING,
	SRV_GRACE,	/* not accepting; sessions may finish */
	SRV_CLOSING,	/* 421 sent; waiting for the flushes */
	SRV_DONE,
};

/* An accepting socket; its clients' local port is the port it is bound to. */
struct server_listener {
	struct server	*srv;
	struct listener	*l;
	uint16_t	 port;
	const char	*path;		/* a unix socket's, or NULL */
};

/* The settings of one local port (server_set_port) or socket path (server_set_path). */
struct server_port_entry {
	uint16_t		 port;
	char			 path[LISTENER_PATH_MAX];	/* "": a TCP port */
	struct server_port	 sp;
};

struct server {
	struct event_base		*base;
	struct server_port		 dflt;		/* ports not in ports[] */
	struct server_port_entry	*ports;
	size_t				 nports;
	const struct session_hooks	*hooks;
	void				*hook_ctx;
	unsigned			 grace_secs;
	enum server_state		 state;
	struct server_listener		 listeners[SERVER_LISTENERS_MAX];
	size_t				 nlisteners;
	struct conn_list		 conns;
	struct event			*sigterm, *sigint;
	struct event			*timer;		/* grace, then flush bound */
	size_t				 nfreed;	/* conns freed (server_conn_closed) */
	time_t				 refused_logged;	/* the last line about refusals */
	unsigned long			 refused_quiet;	/* refusals since, not logged */
};

static const struct server_port *server_port_find(const struct server *,
		    const struct server_listener *);
static int	server_set_entry(struct server *, uint16_t, const char *,
		    const struct server_port *);
static void	server_accept(void *, evutil_socket_t, const struct sockaddr *, int);
static void	server_refuse(struct server *, evutil_socket_t,
		    const struct sockaddr *, enum connlimit_verdict, unsigned);
static void	server_conn_closed(void *, const struct session_peer *);
static bool	server_conn_proxied(void *, const struct session_peer *);
static void	server_addr(const struct sockaddr *, char *, size_t);
static void	server_signal_cb(evutil_socket_t, short, void *);
static void	server_timer_cb(evutil_socket_t, short, void *);
static void	server_conns_empty(void *);
static void	server_close_listeners(struct server *);
static void	server_close_all(struct server *);
static void	server_finish(struct server *);

struct server *
server_create(struct event_base *base, const struct server_port *dflt,
    const struct session_hooks *hooks, void *hook_ctx, unsigned grace_secs)
{
	struct server	*srv;

	if ((srv = calloc(1, sizeof(*srv))) == NULL)
		return NULL;
	srv->base = base;
	srv->dflt = *dflt;
	srv->hooks = hooks;
	srv->hook_ctx = hook_ctx;
	srv->grace_secs = grace_secs;
	srv->conns.empty = server_conns_empty;
	srv->conns.closed = server_conn_closed;
	srv->conns.proxied = server_conn_proxied;
	srv->conns.arg = srv;
	if ((srv->sigterm = evsignal_new(base, SIGTERM, server_signal_cb, srv)) == NULL ||
	    (srv->sigint = evsignal_new(base, SIGINT, server_signal_cb, srv)) == NULL ||
	    (srv->timer = evtimer_new(base, server_timer_cb, srv)) == NULL ||
	    evsignal_add(srv->sigterm, NULL) == -1 ||
	    evsignal_add(srv->sigint, NULL) == -1)
		goto fail;
	return srv;
fail:
	server_destroy(srv);
	return NULL;
}

void
server_destroy(struct server *srv)
{
	if (srv == NULL)
		return;
	server_close_listeners(srv);
	srv->conns.empty = NULL;
	conn_list_destroy(&srv->conns);
	if (srv->sigterm != NULL)
		event_free(srv->sigterm);
	if (srv->sigint != NULL)
		event_free(srv->sigint);
	if (srv->timer != NULL)
		event_free(srv->timer);
	free(srv->ports);
	free(srv);
}

int
server_set_port(struct server *srv, uint16_t port, const struct server_port *sp)
{
	return server_set_entry(srv, port, "", sp);
}

int
server_set_path(struct server *srv, const char *path, const struct server_port *sp)
{
	if (strlen(path) >= LISTENER_PATH_MAX)
		return -1;
	return server_set_entry(srv, 0, path, sp);
}

static int
server_set_entry(struct server *srv, uint16_t port, const char *path,
    const struct server_port *sp)
{
	struct server_port_entry	*ports;
	size_t				 i;

	for (i = 0; i < srv->nports && (srv->ports[i].port != port ||
	    strcmp(srv->ports[i].path, path) != 0); i++)
		;
	if (i == srv->nports) {
		/* conns copy their config: moving the table is safe */
		ports = realloc(srv->ports, (srv->nports + 1) * sizeof(*ports));
		if (ports == NULL)
			return -1;
		srv->ports = ports;
		srv->nports++;
	}
	srv->ports[i].port = port;
	snprintf(srv->ports[i].path, sizeof(srv->ports[i].path), "%s", path);
	srv->ports[i].sp = *sp;
	return 0;
}

int
server_adopt(struct server *srv, int fd, char *err, size_t errlen)
{
	struct server_listener	*sl;

	if (srv->nlisteners == SERVER_LISTENERS_MAX) {
		snprintf(err, errlen, "too many listen addresses (at most %d)",
		    SERVER_LISTENERS_MAX);
		close(fd);
		return -1;
	}
	sl = &srv->listeners[srv->nlisteners];
	sl->srv = srv;
	if ((sl->l = listener_adopt(srv->base, fd, server_accept, sl, err,
	    errlen)) == NULL)
		return -1;
	sl->port = listener_port(sl->l);
	sl->path = listener_path(sl->l);
	srv->nlisteners++;
	log_debug(0, "accepting on %s", listener_name(sl->l));
	return 0;
}

int
server_run(struct server *srv)
{
	if (event_base_dispatch(srv->base) == -1) {
		log_error(0, "event loop failed");
		return -1;
	}
	return 0;
}

void
server_stop(struct server *srv)
{
	switch (srv->state) {
	case SRV_RUNNING: {
		struct timeval	 tv = { srv->grace_secs, 0 };

		server_close_listeners(srv);
		if (srv->conns.count == 0) {
			log_info(0, "stopping: no sessions left");
			server_finish(srv);
			return;
		}
		log_info(0, "stopping: %zu session(s) have %u s to finish",
		    srv->conns.count, srv->grace_secs);
		srv->state = SRV_GRACE;
		evtimer_add(srv->timer, &tv);
		break;
	}
	case SRV_GRACE:
		log_info(0, "stopping now: %zu session(s) left", srv->conns.count);
		server_close_all(srv);
		break;
	case SRV_CLOSING:
		log_warn(0, "stopping now: dropping %zu connection(s)", srv->conns.count);
		srv->conns.empty = NULL;
		conn_list_destroy(&srv->conns);
		server_finish(srv);
		break;
	case SRV_DONE:
		break;
	}
}

static const struct server_port *
server_port_find(const struct server *srv, const struct server_listener *sl)
{
	const char *path = sl->path != NULL ? sl->path : "";

	for (size_t i = 0; i < srv->nports; i++)
		if (srv->ports[i].port == sl->port && strcmp(srv->ports[i].path, path) == 0)
			return &srv->ports[i].sp;
	return &srv->dflt;
}

static void
server_accept(void *arg, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
	struct server_listener	*sl = arg;
	struct server		*srv = sl->srv;
	const struct server_port *sp;
	struct connlimit_key	 key;
	enum connlimit_verdict	 v;
	unsigned		 client, total;
	size_t			 nfreed;
	bool			 keyed;

	if (srv->state != SRV_RUNNING) {
		evutil_closesocket(fd);
		return;
	}
	/*
	 * A client that reset the connection while it waited in the accept
	 * queue has no peer name any more: its conn would say "unknown" and
	 * its count could not be found again at close.  It is gone: drop it.
	 */
	if (connlimit_active()) {
		struct sockaddr_storage	ss;
		socklen_t		len = sizeof(ss);

		if (getpeername(fd, (struct sockaddr *)&ss, &len) == -1) {
			evutil_closesocket(fd);
			return;
		}
	}
	sp = server_port_find(srv, sl);
	if (sp->proxy.on) {
		char	addr[64];
		bool	trusted = false;

		if (salen > 0 && sa->sa_family == AF_INET)
			trusted = proxy_nets_match_bin(&sp->proxy.from, 4, (const uint8_t *)
			    &((const struct sockaddr_in *)sa)->sin_addr);
		else if (salen > 0 && sa->sa_family == AF_INET6)
			trusted = proxy_nets_match_bin(&sp->proxy.from, 6, (const uint8_t *)
			    &((const struct sockaddr_in6 *)sa)->sin6_addr);
		if (!trusted) {
			metrics_count(M_REFUSED_PROXY);
			server_addr(sa, addr, sizeof(addr));
			log_info(0, "connection from %s refused: not a trusted proxy "
			    "(proxyFrom of port %u)", addr, sl->port);
			evutil_closesocket(fd);
			return;
		}
	}
	/* a proxy is not the client: its conns count in the total until the header */
	keyed = salen > 0 && !sp->proxy.on && connlimit_key_sa(sa, &key);
	v = connlimit_acquire(keyed ? &key : NULL, &client, &total);
	if (v != CONNLIMIT_OK) {
		server_refuse(srv, fd, sa, v, v == CONNLIMIT_TOTAL ? total : client);
		return;
	}
	nfreed = srv->nfreed;
	if (conn_create(srv->base, fd, &sp->cfg, sp->tls, sp->implicit_tls,
	    &sp->proxy, srv->hooks, srv->hook_ctx, &srv->conns) == NULL &&
	    srv->nfreed == nfreed)
		connlimit_release(keyed ? &key : NULL);	/* never became a conn */
}

/* 421 on a fresh socket, then close: no conn, no session, no Lua. */
static void
server_refuse(struct server *srv, evutil_socket_t fd, const struct sockaddr *sa,
    enum connlimit_verdict v, unsigned n)
{
	time_t	 now = time(NULL);
	char	 addr[64] = "unknown";

	/* a fresh socket has room for one line; a client that cannot take it loses it */
	metrics_count(M_REFUSED_LIMIT);
	(void)send(fd, SERVER_TOO_MANY, sizeof(SERVER_TOO_MANY) - 1,
	    MSG_DONTWAIT | MSG_NOSIGNAL);
	evutil_closesocket(fd);
	if (now - srv->refused_logged < SERVER_REFUSED_LOG_SECS) {
		srv->refused_quiet++;	/* a flood must not flood the log */
		return;
	}
	server_addr(sa, addr, sizeof(addr));
	if (srv->refused_quiet > 0)
		log_warn(0, "connection from %s refused: 421 too many connections "
		    "(%u %s; %lu more refused since the last line)", addr, n,
		    v == CONNLIMIT_TOTAL ? "in all: maxConnections" :
		    "from this client: maxConnectionsPerClient", srv->refused_quiet);
	else
		log_warn(0, "connection from %s refused: 421 too many connections "
		    "(%u %s)", addr, n, v == CONNLIMIT_TOTAL ?
		    "in all: maxConnections" : "from this client: maxConnectionsPerClient");
	srv->refused_logged = now;
	srv->refused_quiet = 0;
}

static void
server_addr(const struct sockaddr *sa, char *addr, size_t len)
{
	snprintf(addr, len, "unknown");
	if (sa->sa_family == AF_INET)
		evutil_inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr,
		    addr, len);
	else if (sa->sa_family == AF_INET6)
		evutil_inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
		    addr, len);
}

/* A PROXY header named the client of a conn counted in the total only. */
static bool
server_conn_proxied(void *arg, const struct session_peer *client)
{
	struct server		*srv = arg;
	struct connlimit_key	 key;
	unsigned		 n;

	connlimit_release(NULL);
	if (connlimit_acquire(connlimit_key_str(client->remote_addr, &key) ?
	    &key : NULL, &n, &n) == CONNLIMIT_OK)
		return true;
	srv->nfreed++;	/* freed uncounted, maybe inside conn_create: settled here */
	return false;
}

/* A conn is freed: its client counts one connection less. */
static void
server_conn_closed(void *arg, const struct session_peer *peer)
{
	struct server		*srv = arg;
	struct connlimit_key	 key;

	srv->nfreed++;
	connlimit_release(peer != NULL && connlimit_key_str(peer->remote_addr, &key) ?
	    &key : NULL);
}

static void
server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	log_info(0, "signal %s received", sig == SIGTERM ? "TERM" : "INT");
	notify_stopping();	/* --workers 0: this is the main process */
	server_stop(arg);
}

static void
server_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server	*srv = arg;

	(void)fd, (void)what;
	if (srv->state == SRV_GRACE) {
		log_info(0, "grace period over: %zu session(s) left",
		    srv->conns.count);
		server_close_all(srv);
	} else if (srv->state == SRV_CLOSING) {
		log_warn(0, "flush timed out: dropping %zu connection(s)",
		    srv->conns.count);
		srv->conns.empty = NULL;
		conn_list_destroy(&srv->conns);
		server_finish(srv);
	}
}

static void
server_conns_empty(void *arg)
{
	struct server	*srv = arg;

	if (srv->state == SRV_GRACE || srv->state == SRV_CLOSING) {
		log_info(0, "last session closed");
		server_finish(srv);
	}
}

static void
server_close_listeners(struct server *srv)
{
	for (size_t i = 0; i < srv->nlisteners; i++)
		listener_destroy(srv->listeners[i].l);
	srv->nlisteners = 0;
}

static void
server_close_all(struct server *srv)
{
	struct timeval	 tv = { SERVER_FLUSH_SECS, 0 };

	srv->state = SRV_CLOSING;
	evtimer_add(srv->timer, &tv);
	conn_list_shutdown(&srv->conns);	/* may empty the list: server_finish */
}

static void
server_finish(struct server *srv)
{
	srv->state = SRV_DONE;
	evtimer_del(srv->timer);
	event_del(srv->sigterm);
	event_del(srv->sigint);
	event_base_loopbreak(srv->base);
}
