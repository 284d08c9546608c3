/*
 * server.h -- the running server: listeners, live connections, signals.
 *
 * main.c loads the policy, then creates a server on an event base with the
 * session config and the policy's hooks, adds listeners, and runs it.  Each
 * accepted socket (listener.c) becomes a conn (conn.c), which drives one
 * session (session.c) whose hooks call into the policy (lua_*.c):
 *
 *     listener --fd--> server --conn_create--> conn <--io/feed--> session
 *                                                            \--hooks--> Lua
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

#include <stddef.h>
#include <stdint.h>

#include "session.h"

#define SERVER_GRACE_DEFAULT	30	/* seconds */

struct event_base;
struct server;

/* cfg and hooks must outlive the server. */
struct server	*server_create(struct event_base *base,
		    const struct session_config *cfg,
		    const struct session_hooks *hooks, void *hook_ctx,
		    unsigned grace_secs);
void		 server_destroy(struct server *srv);	/* NULL is a no-op */

/* Accepts on fd, a socket listener_bind() bound (the server owns it now). */
int		 server_adopt(struct server *srv, int fd, char *err,
		    size_t errlen);

/* Runs the event loop until a signal stopped the server.  Returns 0 or -1. */
int		 server_run(struct server *srv);

/* Starts the stop sequence as a signal would (for embedders and tests). */
void		 server_stop(struct server *srv);

#endif
