/*
 * server.h -- the running server: listeners, per-port settings, live
 * connections, signals.
 *
 * The worker (master.c) loads the policy, then creates a server on an event
 * base with the policy's hooks and the settings of each local port (session
 * config, TLS context), adopts the listening sockets, and runs it.  Each
 * accepted socket (listener.c) becomes a conn (conn.c) with the settings of
 * its listener's port, and drives one session (session.c) whose hooks call
 * into the policy (lua_*.c):
 *
 *     listener --fd--> server --conn_create(cfg, tls)--> conn <--io/feed--> session
 *                                                                  \--hooks--> Lua
 *
 * Stopping: the first SIGTERM or SIGINT closes the listeners and gives live
 * sessions the grace period to finish; then each remaining one is told
 * 421 4.3.2 (session_shutdown) and closed once its replies are flushed
 * (bounded).  A second signal ends the grace period at once; a third drops
 * every connection.  server_run() returns when the last connection is gone.
 *
 * In a worker process (master.c) the server adopts the sockets the master
 * bound, and a SIGTERM from the master (a stop, a reload, the master's
 * death) runs this same stop sequence.
 */
#ifndef LUASMTPD_SERVER_H
#define LUASMTPD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"
#include "session.h"

#define SERVER_GRACE_DEFAULT	30	/* seconds */

struct event_base;
struct server;
struct tls_ctx;

/*
 * What the clients accepted on one local port get.  Without a TLS context
 * a port offers neither STARTTLS nor implicit TLS, whatever cfg says.
 */
struct server_port {
	struct session_config	 cfg;
	struct tls_ctx		*tls;		/* NULL: no TLS */
	bool			 implicit_tls;	/* handshake before the greeting (RFC 8314) */
	struct proxy_listen	 proxy;		/* a PROXY header first, from proxy.from only */
};

/*
 * dflt: the settings of every port server_set_port() does not name (copied).
 * hooks, and the TLS contexts of every server_port, must outlive the server.
 */
struct server	*server_create(struct event_base *base,
		    const struct server_port *dflt,
		    const struct session_hooks *hooks, void *hook_ctx,
		    unsigned grace_secs);
void		 server_destroy(struct server *srv);	/* NULL is a no-op */

/*
 * The settings of the clients accepted on local port `port` from now on
 * (copied; a second call for a port replaces the first).  Returns 0, or -1
 * when out of memory.
 */
int		 server_set_port(struct server *srv, uint16_t port,
		    const struct server_port *sp);
/* The same for the clients of the unix socket at path. */
int		 server_set_path(struct server *srv, const char *path,
		    const struct server_port *sp);

/* Accepts on fd, a socket listener_bind() bound (the server owns it now). */
int		 server_adopt(struct server *srv, int fd, char *err,
		    size_t errlen);

/* Runs the event loop until a signal stopped the server.  Returns 0 or -1. */
int		 server_run(struct server *srv);

/* Starts the stop sequence as a signal would (for embedders and tests). */
void		 server_stop(struct server *srv);

#endif
