/*
 * sasl.c -- base64 and SASL PLAIN parsing for AUTH; no state, no I/O.
 */
#include <string.h>

#include "sasl.h"

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
b64_value(char c)
{
	const char *p;

	if (c == '\0' || (p = strchr(b64, c)) == NULL)
		return -1;
	return (int)(p - b64);
}

long
sasl_base64_decode(const char *in, size_t inlen, char *out, size_t outsize)
{
	size_t	n = 0;

	if (inlen % 4 != 0)
		return -1;
	for (size_t i = 0; i < inlen; i += 4) {
		int	v[4];
		int	pad = 0;

		for (int k = 0; k < 4; k++) {
			if (in[i + k] == '=' && i + 4 == inlen && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[k] = b64_value(in[i + k])) < 0)
				return -1;
		}
		if (n + 3 - (size_t)pad > outsize)
			return -1;
		out[n++] = (char)(v[0] << 2 | v[1] >> 4);
		if (pad < 2)
			out[n++] = (char)((v[1] & 0xf) << 4 | v[2] >> 2);
		if (pad < 1)
			out[n++] = (char)((v[2] & 0x3) << 6 | v[3]);
	}
	return (long)n;
}

size_t
sasl_base64_encode(const char *in, size_t len, char *out, size_t outsize)
{
	const unsigned char	*u = (const unsigned char *)in;
	size_t			 n = 0;

	if (outsize < (len + 2) / 3 * 4 + 1)
		return 0;
	for (size_t i = 0; i < len; i += 3) {
		unsigned v = u[i] << 16 | (i + 1 < len ? u[i + 1] << 8 : 0) |
		    (i + 2 < len ? u[i + 2] : 0);

		out[n++] = b64[v >> 18 & 0x3f];
		out[n++] = b64[v >> 12 & 0x3f];
		out[n++] = i + 1 < len ? b64[v >> 6 & 0x3f] : '=';
		out[n++] = i + 2 < len ? b64[v & 0x3f] : '=';
	}
	out[n] = '\0';
	return n;
}

int
sasl_plain_split(char *msg, size_t len, const char **authzid,
    const char **authcid, const char **passwd)
{
	char	*nul1, *nul2;

	if ((nul1 = memchr(msg, '\0', len)) == NULL)
		return -1;
	if ((nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - msg))) == NULL)
		return -1;
	/* the password runs to the end and must not hold a third NUL */
	if (memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - msg)) != NULL)
		return -1;
	msg[len] = '\0';	/* the caller leaves room for it */
	*authzid = msg;
	*authcid = nul1 + 1;
	*passwd = nul2 + 1;
	if (**authcid == '\0' || strlen(*authzid) >= SASL_FIELD_MAX ||
	    strlen(*authcid) >= SASL_FIELD_MAX || strlen(*passwd) >= SASL_FIELD_MAX)
		return -1;
	return 0;
}
