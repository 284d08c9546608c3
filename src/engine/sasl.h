/*
 * sasl.h -- the SASL mechanisms AUTH offers (PLAIN, LOGIN): base64 and the
 * PLAIN message layout.  Pure functions; session.c runs the exchange.
 */
#ifndef LUASMTPD_SASL_H
#define LUASMTPD_SASL_H

#include <stddef.h>

#define SASL_FIELD_MAX	256	/* bound on a decoded username, password or authzid */

/*
 * Decodes RFC 4648 base64 (padding required, no whitespace) into out, which
 * holds outsize octets.  Returns the decoded length, or -1 if the input is
 * malformed or does not fit.
 */
long	sasl_base64_decode(const char *in, size_t inlen, char *out, size_t outsize);

/* Encodes len octets as base64 into out (NUL-terminated); returns its length. */
size_t	sasl_base64_encode(const char *in, size_t len, char *out, size_t outsize);

/*
 * Splits a decoded PLAIN message "authzid NUL authcid NUL passwd" (RFC 4616)
 * into NUL-terminated fields within msg.  Returns 0, or -1 if it is
 * malformed (wrong NUL count, empty authcid, a field over SASL_FIELD_MAX).
 */
int	sasl_plain_split(char *msg, size_t len, const char **authzid,
	    const char **authcid, const char **passwd);

#endif
