/*
 * conn.h -- one accepted SMTP client: a bufferevent feeding a session.
 *
 * The path of a client's bytes: listener.c accepts the socket and server.c
 * calls conn_create() with the settings of the socket's local port, which
 * wraps the socket in a bufferevent and creates the session (session.h) with
 * those settings, the given hooks and an io over that bufferevent.  The read callback feeds the input buffer to session_feed()
 * segment by segment and keeps whatever the engine did not take until the
 * engine calls io->wake.  Replies are appended to the output buffer and
 * libevent flushes all replies of a pipelined batch in one write.
 * io->close flushes the output, then (or after a bound) frees everything.
 *
 * TLS: after STARTTLS's 220 is flushed, the plaintext bufferevent hands its
 * socket to a bufferevent_openssl (its unread input is dropped: it was sent
 * before the handshake, CVE-2011-0411) and the session restarts once the
 * handshake is done.  An implicit-TLS conn handshakes first and creates its
 * session on success.  A failed handshake closes without a reply.
 *
 * Memory per connection is bounded: reading stops when 64 KiB of input wait
 * or when 64 KiB of replies are unread by the client (it resumes below
 * 16 KiB).  Nothing is preallocated beyond libevent's own structures.
 *
 * A conn belongs to a conn_list that the server owns; the conn links itself
 * in on creation and out when it is freed, and the list tells its owner when
 * it becomes empty (the server waits for that on shutdown).
 */
#ifndef LUASMTPD_CONN_H
#define LUASMTPD_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/util.h>

#include "session.h"

struct event_base;
struct conn;
struct tls_ctx;
struct proxy_listen;

struct conn_list {
	struct conn	*head;
	size_t		 count;
	/* Called when the last conn of the list was freed (may be NULL). */
	void		(*empty)(void *arg);
	/*
	 * Called as each conn is freed (may be NULL), with its peer, or NULL
	 * for a conn counted in the total only (a PROXY listener's until its
	 * header named the client).
	 */
	void		(*closed)(void *arg, const struct session_peer *peer);
	/*
	 * A PROXY header named the client of a conn counted in the total only
	 * (may be NULL): count it as that client.  false: over a limit, the
	 * conn is no longer counted (421, closed, no closed callback).
	 */
	bool		(*proxied)(void *arg, const struct session_peer *client);
	void		*arg;
};

/*
 * Takes ownership of fd (closed on failure too).  cfg is copied; tls, hooks
 * and list must outlive the conn.  tls NULL: neither cfg->starttls nor
 * implicit_tls (the handshake before the greeting, RFC 8314) is honoured.
 * proxy (may be NULL; copied) on: a PROXY protocol header comes first, and
 * names the client (the caller checked that the peer may send one).
 * Returns NULL (and logs) if the session or the bufferevent cannot be
 * created, or if the conn already ended (freed; a PROXY header in at the
 * accept is read at once, and may be bad, or its client over a limit).
 */
struct conn	*conn_create(struct event_base *base, evutil_socket_t fd,
		    const struct session_config *cfg, struct tls_ctx *tls,
		    bool implicit_tls, const struct proxy_listen *proxy,
		    const struct session_hooks *hooks, void *hook_ctx,
		    struct conn_list *list);
/* Frees at once, without a reply; session_destroy() runs.  NULL is a no-op. */
void		 conn_destroy(struct conn *c);

/* The server is stopping: session_shutdown() (421 4.3.2), flush, close. */
void		 conn_shutdown(struct conn *c);

/* conn_shutdown() on every conn of the list. */
void		 conn_list_shutdown(struct conn_list *list);
/* conn_destroy() on every conn of the list (the last resort). */
void		 conn_list_destroy(struct conn_list *list);

#endif
