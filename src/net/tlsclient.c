/*
 * tlsclient.c -- the TLS client side of the worker's outgoing connections
 * (smtp.tcp and the next hop): contexts, the wrap that starts a handshake,
 * and OpenSSL's reasons in words.
 */
#include <stdio.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tlsclient.h"

SSL_CTX *
tlsclient_ctx(const char *cafile, char *err, size_t errlen)
{
	SSL_CTX *c;

	if ((c = SSL_CTX_new(TLS_client_method())) == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
	if (cafile != NULL) {
		if (SSL_CTX_load_verify_locations(c, cafile, NULL) != 1)
			goto fail;
	} else if (SSL_CTX_set_default_verify_paths(c) != 1)
		goto fail;
	return c;
fail:
	snprintf(err, errlen, "tls: cannot load %s", cafile != NULL ? cafile : "the system CA store");
	ERR_clear_error();
	SSL_CTX_free(c);
	return NULL;
}

SSL *
tlsclient_ssl(SSL_CTX *ctx, const char *servername, bool verify, char *err, size_t errlen)
{
	SSL		*ssl;
	struct in6_addr	 a6;
	int		 literal;

	if ((ssl = SSL_new(ctx)) == NULL) {
		snprintf(err, errlen, "tls: out of memory");
		return NULL;
	}
	literal = inet_pton(AF_INET, servername, &a6) == 1 ||
	    inet_pton(AF_INET6, servername, &a6) == 1;
	SSL_set_verify(ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	if (servername[0] != '\0' && !literal)
		SSL_set_tlsext_host_name(ssl, servername);
	if (verify && servername[0] != '\0') {
		if (literal) {
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), servername);
		} else {
			SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			SSL_set1_host(ssl, servername);
		}
	}
	return ssl;
}

struct bufferevent *
tlsclient_wrap(struct bufferevent *plain, SSL_CTX *ctx, const char *servername, bool verify,
    char *err, size_t errlen)
{
	SSL			*ssl;
	struct bufferevent	*b;

	if ((ssl = tlsclient_ssl(ctx, servername, verify, err, errlen)) == NULL)
		return NULL;
	evbuffer_drain(bufferevent_get_input(plain),
	    evbuffer_get_length(bufferevent_get_input(plain)));
	b = bufferevent_openssl_filter_new(bufferevent_get_base(plain), plain, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (b == NULL) {
		SSL_free(ssl);
		snprintf(err, errlen, "tls: out of memory");
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(b, 1);
	return b;
}

int
tlsclient_error(struct bufferevent *bev, char *buf, size_t len)
{
	unsigned long	 e;
	SSL		*ssl;
	long		 v;
	char		 what[160];

	if ((ssl = bufferevent_openssl_get_ssl(bev)) == NULL ||
	    (e = bufferevent_get_openssl_error(bev)) == 0)
		return 0;
	v = SSL_get_verify_result(ssl);
	while (bufferevent_get_openssl_error(bev) != 0)
		;
	if (v != X509_V_OK)
		snprintf(buf, len, "tls: certificate verify failed: %s",
		    X509_verify_cert_error_string(v));
	else {
		ERR_error_string_n(e, what, sizeof(what));
		snprintf(buf, len, "tls: %s", what);
	}
	return 1;
}
