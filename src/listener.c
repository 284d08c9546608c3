/*
 * listener.c -- listening sockets: address parsing, bind, accept.
 *
 * Owns the listening socket and its evconnlistener.  Binding (the master,
 * listener_bind) and accepting (each worker, listener_adopt) are separate
 * steps, so that workers accept on sockets their parent bound.  Knows
 * nothing of SMTP: every accepted socket goes to the callback given at
 * creation.  When accept fails for lack of descriptors, accepting pauses for
 * a second instead of spinning.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "listener.h"
#include "log.h"

#define LISTENER_BACKLOG	128

struct listener {
	struct evconnlistener	*evl;
	struct event		*pause;		/* re-enables accepting after EMFILE */
	listener_accept_fn	 cb;
	void			*arg;
	uint16_t		 port;
	bool			 unix_socket;	/* name is "unix:PATH" */
	char			 name[LISTENER_NAME_MAX];
};

static void	listener_accept_cb(struct evconnlistener *, evutil_socket_t,
		    struct sockaddr *, int, void *);
static void	listener_error_cb(struct evconnlistener *, void *);
static void	listener_resume_cb(evutil_socket_t, short, void *);

int
listener_parse(const char *spec, char *host, size_t hostlen, uint16_t *port,
    char *err, size_t errlen)
{
	const char	*p, *hstart = "", *colon;
	size_t		 hlen = 0;
	char		*end;
	unsigned long	 n;

	if (spec == NULL || *spec == '\0') {
		snprintf(err, errlen, "empty listen address");
		return -1;
	}
	if (spec[0] == '/') {		/* a unix socket's path */
		if (strlen(spec) >= LISTENER_PATH_MAX || strlen(spec) >= hostlen) {
			snprintf(err, errlen, "bad listen address '%.64s...': path too long",
			    spec);
			return -1;
		}
		snprintf(host, hostlen, "%s", spec);
		*port = 0;
		return 0;
	}
	if (spec[0] == '[') {
		if ((p = strchr(spec, ']')) == NULL || p[1] != ':') {
			snprintf(err, errlen, "bad listen address '%s': expected [IPv6]:PORT", spec);
			return -1;
		}
		hstart = spec + 1;
		hlen = (size_t)(p - hstart);
		p += 2;
	} else if ((colon = strrchr(spec, ':')) != NULL) {
		if (strchr(spec, ':') != colon) {
			snprintf(err, errlen, "bad listen address '%s': write IPv6 as [ADDR]:PORT", spec);
			return -1;
		}
		hstart = spec;
		hlen = (size_t)(colon - spec);
		p = colon + 1;
	} else {
		p = spec;
	}
	if (*p < '0' || *p > '9') {
		snprintf(err, errlen, "bad listen address '%s': missing port", spec);
		return -1;
	}
	errno = 0;
	n = strtoul(p, &end, 10);
	if (errno != 0 || *end != '\0' || n > 65535) {
		snprintf(err, errlen, "bad listen address '%s': bad port", spec);
		return -1;
	}
	if (hlen == 0) {
		hstart = LISTENER_DEFAULT_HOST;
		hlen = strlen(hstart);
	}
	if (hlen >= hostlen) {
		snprintf(err, errlen, "bad listen address '%s': host too long", spec);
		return -1;
	}
	memcpy(host, hstart, hlen);
	host[hlen] = '\0';
	*port = (uint16_t)n;
	return 0;
}

static void
listener_format(const struct sockaddr *sa, char *buf, size_t len, uint16_t *port)
{
	char	addr[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;

		*port = 0;
		snprintf(buf, len, "unix:%.*s", (int)sizeof(sun->sun_path), sun->sun_path);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, addr, sizeof(addr));
		*port = ntohs(sin6->sin6_port);
		snprintf(buf, len, "[%s]:%u", addr, *port);
	} else {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, addr, sizeof(addr));
		*port = ntohs(sin->sin_port);
		snprintf(buf, len, "%s:%u", addr, *port);
	}
}

/*
 * A unix socket at path, mode 0666 (who may connect is the directory's
 * business, as with Postfix's private/).  A stale socket file from an
 * earlier run is removed first; any other file there is an error.
 */
static evutil_socket_t
listener_bind_unix(const char *path, char *name, size_t namelen, char *err,
    size_t errlen)
{
	struct sockaddr_un	sun;
	struct stat		st;
	evutil_socket_t		fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "cannot listen on unix:%.64s...: path too long", path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		(void)unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1 ||
	    chmod(path, 0666) == -1 || listen(fd, LISTENER_BACKLOG) == -1) {
		snprintf(err, errlen, "cannot listen on unix:%s: %s", path, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	snprintf(name, namelen, "unix:%s", path);
	return fd;
}

evutil_socket_t
listener_bind(const char *host, uint16_t port, char *name, size_t namelen,
    char *err, size_t errlen)
{
	struct addrinfo		 hints, *res = NULL;
	struct sockaddr_storage	 ss;
	socklen_t		 sslen;
	char			 portstr[8], shown[LISTENER_NAME_MAX];
	evutil_socket_t		 fd;
	uint16_t		 bound;
	int			 rc, one = 1;

	if (host != NULL && host[0] == '/')
		return listener_bind_unix(host, name, namelen, err, errlen);
	if (host == NULL || *host == '\0')
		host = LISTENER_DEFAULT_HOST;
	snprintf(shown, sizeof(shown), strchr(host, ':') ? "[%s]:%u" : "%s:%u",
	    host, port);
	snprintf(portstr, sizeof(portstr), "%u", port);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, portstr, &hints, &res)) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", shown, gai_strerror(rc));
		return -1;
	}
	fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    res->ai_protocol);
	sslen = sizeof(ss);
	if (fd == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    (res->ai_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) == -1 ||
	    listen(fd, LISTENER_BACKLOG) == -1 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1) {
		snprintf(err, errlen, "cannot listen on %s: %s", shown, strerror(errno));
		if (fd != -1)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	listener_format((struct sockaddr *)&ss, name, namelen, &bound);
	return fd;
}

int
listener_inherited(int fd, char *name, size_t namelen, char *err, size_t errlen)
{
	struct sockaddr_storage	 ss;
	socklen_t		 sslen = sizeof(ss), len;
	int			 type = 0, listening = 0;
	uint16_t		 port;

	len = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == -1 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1) {
		snprintf(err, errlen, "socket %d from systemd: %s", fd, strerror(errno));
		return -1;
	}
	len = sizeof(listening);
	if (type != SOCK_STREAM ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == -1 ||
	    !listening) {
		snprintf(err, errlen, "socket %d from systemd is not a listening TCP "
		    "socket (ListenStream= with an address and port)", fd);
		return -1;
	}
	listener_format((struct sockaddr *)&ss, name, namelen, &port);
	return 0;
}

int
listener_matches(int fd, const char *host, uint16_t port)
{
	struct addrinfo		 hints, *res = NULL;
	struct sockaddr_storage	 ss;
	socklen_t		 sslen = sizeof(ss);
	char			 portstr[8];
	int			 match = 0;

	if (port == 0 || getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1)
		return 0;
	if (host == NULL || *host == '\0')
		host = LISTENER_DEFAULT_HOST;
	snprintf(portstr, sizeof(portstr), "%u", port);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if (getaddrinfo(host, portstr, &hints, &res) != 0)
		return 0;
	if (res->ai_family == ss.ss_family && res->ai_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)res->ai_addr;
		const struct sockaddr_in *b = (const struct sockaddr_in *)&ss;

		match = a->sin_port == b->sin_port &&
		    a->sin_addr.s_addr == b->sin_addr.s_addr;
	} else if (res->ai_family == ss.ss_family && res->ai_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)res->ai_addr;
		const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&ss;

		match = a->sin6_port == b->sin6_port &&
		    memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
	}
	freeaddrinfo(res);
	return match;
}

struct listener *
listener_adopt(struct event_base *base, evutil_socket_t fd,
    listener_accept_fn cb, void *arg, char *err, size_t errlen)
{
	struct listener		*l;
	struct sockaddr_storage	 ss;
	socklen_t		 sslen = sizeof(ss);

	if ((l = calloc(1, sizeof(*l))) == NULL) {
		snprintf(err, errlen, "cannot accept: out of memory");
		close(fd);
		return NULL;
	}
	l->cb = cb;
	l->arg = arg;
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1) {
		snprintf(err, errlen, "cannot accept on socket %d: %s", (int)fd,
		    strerror(errno));
		goto fail;
	}
	listener_format((struct sockaddr *)&ss, l->name, sizeof(l->name), &l->port);
	l->unix_socket = ss.ss_family == AF_UNIX;
	if ((l->pause = evtimer_new(base, listener_resume_cb, l)) == NULL ||
	    (l->evl = evconnlistener_new(base, listener_accept_cb, l,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd)) == NULL) {
		snprintf(err, errlen, "cannot accept on %s: out of memory", l->name);
		goto fail;
	}
	fd = -1;	/* the evconnlistener owns it */
	evconnlistener_set_error_cb(l->evl, listener_error_cb);
	return l;
fail:
	if (fd != -1)
		close(fd);
	listener_destroy(l);
	return NULL;
}

void
listener_destroy(struct listener *l)
{
	if (l == NULL)
		return;
	if (l->evl != NULL)
		evconnlistener_free(l->evl);
	if (l->pause != NULL)
		event_free(l->pause);
	free(l);
}

const char *
listener_name(const struct listener *l)
{
	return l->name;
}

uint16_t
listener_port(const struct listener *l)
{
	return l->port;
}

const char *
listener_path(const struct listener *l)
{
	return l->unix_socket ? l->name + strlen("unix:") : NULL;
}

static void
listener_accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct listener	*l = arg;

	(void)evl;
	l->cb(l->arg, fd, sa, salen);
}

static void
listener_error_cb(struct evconnlistener *evl, void *arg)
{
	struct listener	*l = arg;
	struct timeval	 tv = { 1, 0 };
	int		 err = EVUTIL_SOCKET_ERROR();

	log_warn(0, "accept on %s: %s", l->name, evutil_socket_error_to_string(err));
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		evconnlistener_disable(evl);
		evtimer_add(l->pause, &tv);
	}
}

static void
listener_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listener	*l = arg;

	(void)fd, (void)what;
	evconnlistener_enable(l->evl);
}
