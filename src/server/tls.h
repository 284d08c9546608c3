/*
 * tls.h -- the server's OpenSSL context: certificate, key, protocol policy.
 *
 * A tls_ctx is created when a policy script is loaded (server.tls names the
 * certificate chain and the key), so reloading the script loads the
 * certificates again; connections already running keep the context they
 * started with (each SSL holds a reference).  The policy is fixed: TLS 1.2
 * and 1.3 only, forward-secret AEAD ciphers for TLS 1.2, no compression,
 * no renegotiation.  The bufferevents that run the handshakes are conn.c's.
 */
#ifndef LUASMTPD_TLS_H
#define LUASMTPD_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "session.h"

struct tls_ctx;

/*
 * Loads the PEM certificate chain and private key.  Returns NULL with one
 * line naming the file and the reason in err.
 */
struct tls_ctx	*tls_ctx_create(const char *cert, const char *key,
		    char *err, size_t errlen);
void		 tls_ctx_destroy(struct tls_ctx *t);	/* NULL is a no-op */

/* A server-side SSL for one connection; NULL (and a log line) on failure. */
SSL		*tls_ssl_new(struct tls_ctx *t);

/* The negotiated version, cipher and client certificate subject. */
void		 tls_info(SSL *ssl, struct session_tls *info);

/* The oldest queued OpenSSL error (or fallback), the queue cleared. */
const char	*tls_error(const char *fallback, char *buf, size_t len);

#endif
