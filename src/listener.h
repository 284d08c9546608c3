/*
 * listener.h -- one listening socket: parse "ADDR:PORT", bind, accept.
 *
 * listener.c turns an address spec into a bound evconnlistener and hands
 * every accepted socket to a callback (server.c, which creates a conn).
 * Specs: "PORT" (host 127.0.0.1), "ADDR:PORT", "[IPv6]:PORT"; ADDR may be
 * a numeric address or a name (the first address it resolves to is bound).
 * Port 0 binds an ephemeral port; listener_name() reports the real one.
 *
 * Binding and accepting can happen in different processes: the master binds
 * with listener_bind() (before dropping privileges) and every worker it
 * forks accepts on its inherited copy with listener_adopt().
 */
#ifndef LUASMTPD_LISTENER_H
#define LUASMTPD_LISTENER_H

#include <stddef.h>
#include <stdint.h>

#include <event2/util.h>

#define LISTENER_DEFAULT_HOST	"127.0.0.1"
#define LISTENER_NAME_MAX	300
#define LISTENER_PATH_MAX	108	/* sun_path, NUL included */

struct event_base;
struct listener;

struct sockaddr;

/* Called with a new client socket, which the callee now owns, and its peer. */
typedef void	(*listener_accept_fn)(void *arg, evutil_socket_t fd,
		    const struct sockaddr *sa, int salen);

/*
 * Splits a spec into host and port.  An empty host becomes
 * LISTENER_DEFAULT_HOST; a spec starting with "/" is a unix socket's path
 * (host = the path, port 0).  Returns 0, or -1 with one line in err.
 */
int		 listener_parse(const char *spec, char *host, size_t hostlen,
		    uint16_t *port, char *err, size_t errlen);

/*
 * listener_bind() binds host:port (host "" = LISTENER_DEFAULT_HOST) and
 * listens (non-blocking, close-on-exec) without accepting; it returns the
 * socket and writes its name ("ADDR:PORT", real port) into name, or returns
 * -1 with one line naming the address in err (address in use, not
 * resolvable, permission denied).  A host starting with "/" binds a unix
 * socket there instead (mode 0666, a stale socket file replaced; name
 * "unix:PATH").  listener_adopt() starts accepting on
 * such a socket; it owns fd from then on (closed on failure and by destroy).
 */
evutil_socket_t	 listener_bind(const char *host, uint16_t port, char *name,
		    size_t namelen, char *err, size_t errlen);
struct listener	*listener_adopt(struct event_base *base, evutil_socket_t fd,
		    listener_accept_fn cb, void *arg, char *err, size_t errlen);
void		 listener_destroy(struct listener *l);	/* NULL is a no-op */

/*
 * Sockets a service manager bound (systemd's socket activation): is fd a
 * listening stream socket?  0 and its name, or -1 with one line in err.
 * listener_matches(): is fd bound to host:port as listener_bind() would
 * resolve them (the same address and port; port 0 matches nothing)?
 */
int		 listener_inherited(int fd, char *name, size_t namelen, char *err,
		    size_t errlen);
int		 listener_matches(int fd, const char *host, uint16_t port);

/* "127.0.0.1:2525" or "[::1]:2525", with the port actually bound. */
const char	*listener_name(const struct listener *l);
uint16_t	 listener_port(const struct listener *l);
/* A unix socket's path, or NULL for TCP. */
const char	*listener_path(const struct listener *l);

#endif
