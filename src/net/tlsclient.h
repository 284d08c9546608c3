/*
 * tlsclient.h -- the TLS client side shared by smtp.tcp (lua_tcp.c), smtp.http
 * (lua_http.c) and the next-hop client (nexthop.c): a client context on the system's CA store or
 * a file, and a plain bufferevent wrapped for the handshake with SNI and the
 * name check.
 */
#ifndef LUASMTPD_TLSCLIENT_H
#define LUASMTPD_TLSCLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/bufferevent.h>
#include <openssl/ssl.h>

/* A client context (TLS 1.2 or later) trusting cafile, or the system store when NULL. */
SSL_CTX	*tlsclient_ctx(const char *cafile, char *err, size_t errlen);

/*
 * A client connection's SSL on ctx: servername for SNI (not for an address
 * literal) and, with verify, the certificate's name (no partial wildcards)
 * or address check.  NULL (err set) on failure.
 */
SSL	*tlsclient_ssl(SSL_CTX *ctx, const char *servername, bool verify, char *err,
	    size_t errlen);

/*
 * Wraps plain (freed with the result) in a TLS client that starts its
 * handshake: servername for SNI (not for an address literal) and, with
 * verify, the certificate's name or address check.  Plaintext already read
 * is dropped first, so nothing the peer sent before the handshake counts as
 * TLS's.  NULL (err set) on failure; plain is then left as it was.
 */
struct bufferevent *tlsclient_wrap(struct bufferevent *plain, SSL_CTX *ctx,
	    const char *servername, bool verify, char *err, size_t errlen);

/*
 * Why a TLS bufferevent failed, in words ("tls: certificate verify failed:
 * ..."), or 0 if OpenSSL has nothing to say.
 */
int	tlsclient_error(struct bufferevent *bev, char *buf, size_t len);

#endif
