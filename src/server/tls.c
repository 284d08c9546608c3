/*
 * tls.c -- the OpenSSL context of a loaded policy and what a session learns
 * of a finished handshake.
 *
 * Owns the SSL_CTX (certificate chain, key, protocol and cipher policy) and
 * nothing else: sockets and handshakes are conn.c's (bufferevent_openssl).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "tls.h"

/* TLS 1.2: ECDHE key exchange and AEAD only (no RSA key exchange, no CBC). */
#define TLS_CIPHERS_12	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
			"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
			"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_SID_CTX	"luasmtpd"

struct tls_ctx {
	SSL_CTX	*ctx;
};

const char *
tls_error(const char *fallback, char *buf, size_t len)
{
	unsigned long	 e = ERR_get_error();

	if (e == 0)
		snprintf(buf, len, "%s", fallback);
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

/* A file that cannot be opened gets errno's words, not OpenSSL's. */
static int
tls_readable(const char *what, const char *path, char *err, size_t errlen)
{
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "server.tls: cannot read %s %s: %s", what,
		    path, strerror(errno));
		return -1;
	}
	fclose(f);
	return 0;
}

struct tls_ctx *
tls_ctx_create(const char *cert, const char *key, char *err, size_t errlen)
{
	struct tls_ctx	*t;
	char		 why[256];

	ERR_clear_error();
	if (tls_readable("certificate", cert, err, errlen) == -1 ||
	    tls_readable("key", key, err, errlen) == -1)
		return NULL;
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		snprintf(err, errlen, "server.tls: out of memory");
		return NULL;
	}
	if ((t->ctx = SSL_CTX_new(TLS_server_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_cipher_list(t->ctx, TLS_CIPHERS_12) != 1) {
		snprintf(err, errlen, "server.tls: %s",
		    tls_error("cannot create the TLS context", why, sizeof(why)));
		goto fail;
	}
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_COMPRESSION |
	    SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
	(void)SSL_CTX_set_session_id_context(t->ctx,
	    (const unsigned char *)TLS_SID_CTX, sizeof(TLS_SID_CTX) - 1);
	if (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1) {
		snprintf(err, errlen, "server.tls: bad certificate %s: %s", cert,
		    tls_error("not a PEM certificate", why, sizeof(why)));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1) {
		snprintf(err, errlen, "server.tls: bad key %s: %s", key,
		    tls_error("not a PEM private key", why, sizeof(why)));
		goto fail;
	}
	if (SSL_CTX_check_private_key(t->ctx) != 1) {
		snprintf(err, errlen, "server.tls: key %s does not match certificate %s",
		    key, cert);
		ERR_clear_error();
		goto fail;
	}
	return t;
fail:
	tls_ctx_destroy(t);
	return NULL;
}

void
tls_ctx_destroy(struct tls_ctx *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);	/* live SSLs keep their own reference */
	free(t);
}

SSL *
tls_ssl_new(struct tls_ctx *t)
{
	SSL	*ssl;
	char	 why[256];

	if ((ssl = SSL_new(t->ctx)) == NULL)
		log_error(0, "TLS: %s", tls_error("cannot create a session", why,
		    sizeof(why)));
	return ssl;
}

void
tls_info(SSL *ssl, struct session_tls *info)
{
	X509	*peer;

	memset(info, 0, sizeof(*info));
	snprintf(info->version, sizeof(info->version), "%s", SSL_get_version(ssl));
	snprintf(info->cipher, sizeof(info->cipher), "%s",
	    SSL_get_cipher_name(ssl) ? SSL_get_cipher_name(ssl) : "");
	if ((peer = SSL_get1_peer_certificate(ssl)) != NULL) {
		X509_NAME_oneline(X509_get_subject_name(peer), info->peer_subject,
		    (int)sizeof(info->peer_subject));
		X509_free(peer);
	}
}
