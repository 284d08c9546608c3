/*
 * host.h -- the server's host of a policy script's Lua state (lua_host.c).
 *
 * The server (main.c, master.c) knows a policy only through this interface:
 * load a script into a Lua state of its own, read what it configured
 * (options, listen addresses, the TLS context), and hand the bridge's
 * session hooks to server.c, which carry every SMTP event into Lua.  The
 * Lua side lives in lua_*.c and lua/smtp/.
 */
#ifndef LUASMTPD_HOST_H
#define LUASMTPD_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"
#include "session.h"

struct event_base;

/* One server:listen(port[, host[, opts]]) call of the script. */
struct host_listen {
	char		host[256];	/* "" when the script gave none; a unix socket's path
					   (port 0) when it starts with "/" */
	uint16_t	port;
	bool		tls;		/* opts.tls: implicit TLS (RFC 8314) */
	bool		insecure_auth;	/* opts.insecureAuth: AUTH before TLS */
	bool		lmtp;		/* opts.lmtp: LMTP (RFC 2033), LHLO */
	struct proxy_listen proxy;	/* opts.proxy, proxyFrom, proxyTimeout */
};

struct host;
struct tls_ctx;

/*
 * Creates a Lua state, runs the script (which calls smtp.createServer and
 * server:listen) and checks what it configured.  On failure returns NULL and
 * writes one line naming the file and line into err.  base may be NULL when
 * only checking (--check, the master's start and reload): timers then cannot
 * be armed, and lua/smtp/check.lua runs too (AUTH that could never be
 * offered fails; the 'connection' listeners run once for a simulated client
 * on the engine, and an error in them fails the load).
 */
struct host	*host_load(const char *script, struct event_base *base,
		    char *err, size_t errlen);
void		 host_destroy(struct host *p);	/* NULL is a no-op */
/* --state-dir: smtp.store's directory, over server.stateDir (kept, not copied) */
void		 host_set_state_dir(const char *dir);

/*
 * The script's server options over the engine defaults (hostname, maxSize,
 * authMethods, ...): the config of a plain listener that is not the
 * script's (--listen), so STARTTLS when server.tls is set, AUTH only after
 * TLS.
 */
void		 host_session_config(const struct host *p,
		    struct session_config *cfg);
/*
 * The config of a client accepted on local_port: listen options follow the
 * port (the first server:listen of that port, whether the socket was bound
 * from the script or from --listen).  Over host_session_config(): no
 * STARTTLS and *implicit_tls on a {tls = true} port, AUTH before TLS on an
 * {insecureAuth = true} port.  Other ports: host_session_config().
 */
void		 host_port_config(const struct host *p, uint16_t local_port,
		    struct session_config *cfg, bool *implicit_tls);

/*
 * The TLS context of server.tls (certificates loaded by host_load), or
 * NULL.  Owned by the host; connections hold their own reference.
 */
struct tls_ctx	*host_tls(const struct host *p);

/* The same for the unix socket the script listens on at path. */
void		 host_path_config(const struct host *p, const char *path,
		    struct session_config *cfg, bool *implicit_tls);

/* The PROXY settings of local_port (its first server:listen), or none. */
void		 host_port_proxy(const struct host *p, uint16_t local_port,
		    struct proxy_listen *proxy);

size_t		 host_listen_count(const struct host *p);
const struct host_listen *host_listen_at(const struct host *p, size_t i);

/*
 * A worker's busy record (busy.h), which its master watches: every call
 * into Lua of this host is stamped in it from now on, and its limit is
 * the script's server.blockedLimit.  Until host_destroy.
 */
struct busy;
void		 host_watch(struct host *p, struct busy *b);

/* server.maxConnections and server.maxConnectionsPerClient (0: no limit). */
void		 host_conn_limits(const struct host *p, unsigned *max_total,
		    unsigned *max_client);

/*
 * The bridge's session hooks (lua_bridge.c) for server_create(), and in
 * *ctx their context, the script's bridge.
 */
const struct session_hooks *host_hooks(const struct host *p, void **ctx);

#endif
