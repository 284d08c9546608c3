/*
 * xclient.h -- the argument of Postfix's XCLIENT command
 * (www.postfix.org/XCLIENT_README.html): attribute=value pairs whose
 * values are xtext (RFC 3461 4), decoded and checked here.
 *
 * Pure parsing, no allocation: session.c applies a parsed struct xclient
 * to the session only when the whole argument was valid.
 */
#ifndef LUASMTPD_XCLIENT_H
#define LUASMTPD_XCLIENT_H

#include <stdbool.h>
#include <stdint.h>

#define XCLIENT_VALUE_MAX	255	/* decoded octets of NAME, HELO, LOGIN */
#define XCLIENT_KEYWORD		"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"

enum {
	XC_NAME		= 1 << 0,
	XC_ADDR		= 1 << 1,
	XC_PORT		= 1 << 2,
	XC_PROTO	= 1 << 3,
	XC_HELO		= 1 << 4,
	XC_LOGIN	= 1 << 5,
	XC_DESTADDR	= 1 << 6,
	XC_DESTPORT	= 1 << 7,
};

struct xclient {
	unsigned	given;		/* XC_* bits of the attributes present */
	unsigned	unavailable;	/* XC_* bits given as [UNAVAILABLE] or [TEMPUNAVAIL] */
	char		addr[46];	/* numeric, as inet_ntop writes it */
	char		destaddr[46];
	uint16_t	port, destport;
	bool		esmtp;		/* PROTO=ESMTP (else SMTP) */
	char		name[XCLIENT_VALUE_MAX + 1];
	char		helo[XCLIENT_VALUE_MAX + 1];
	char		login[XCLIENT_VALUE_MAX + 1];
};

/*
 * Parses "NAME=mx.example ADDR=192.0.2.1 ..." (names in any case, values
 * xtext, ADDR IPv4 or "IPV6:" then IPv6).  0, or -1 with a reason fit for
 * a 501 reply in *why (it names the attribute; never its value).
 */
int	xclient_parse(const char *arg, struct xclient *x, const char **why);

#endif
