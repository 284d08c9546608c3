/*
 * xclient.c -- the argument of XCLIENT (xclient.h).
 *
 * Owns nothing: reads the argument, writes the struct.  Each value is
 * decoded from xtext ("+" and two upper-case hex digits for an octet) into
 * a bounded buffer, and may be "[UNAVAILABLE]" or "[TEMPUNAVAIL]" (the
 * proxy does not know it): then the attribute is marked unavailable.
 */
#include <sys/socket.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "xclient.h"

struct attr {
	const char	*name;
	unsigned	 bit;
};

static const struct attr attrs[] = {
	{ "NAME", XC_NAME }, { "ADDR", XC_ADDR }, { "PORT", XC_PORT },
	{ "PROTO", XC_PROTO }, { "HELO", XC_HELO }, { "LOGIN", XC_LOGIN },
	{ "DESTADDR", XC_DESTADDR }, { "DESTPORT", XC_DESTPORT }, { NULL, 0 },
};

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* xtext [p, end) into out (NUL-terminated); -1 if malformed, too long or not printable. */
static int
xtext_decode(const char *p, const char *end, char *out, size_t outsize)
{
	size_t	n = 0;
	int	c, hi, lo;

	for (; p < end; p++) {
		c = (unsigned char)*p;
		if (c == '+') {
			if (end - p < 3 || (hi = hexval(p[1])) == -1 ||
			    (lo = hexval(p[2])) == -1)
				return -1;
			c = hi << 4 | lo;
			p += 2;
		} else if (c < 0x21 || c > 0x7e || c == '=') {
			return -1;
		}
		/* decoded: printable ASCII only, a space allowed (a NAME never has one) */
		if (c < 0x20 || c > 0x7e || n + 1 >= outsize)
			return -1;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return 0;
}

static int
port_parse(const char *s, uint16_t *port)
{
	unsigned long	v = 0;
	size_t		n = strlen(s);

	if (n == 0 || n > 5)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static int
addr_parse(const char *s, char *out, size_t outsize)
{
	unsigned char	a[16];

	if (strncasecmp(s, "IPV6:", 5) == 0) {
		if (inet_pton(AF_INET6, s + 5, a) != 1)
			return -1;
		inet_ntop(AF_INET6, a, out, (socklen_t)outsize);
		return 0;
	}
	if (inet_pton(AF_INET, s, a) == 1) {
		inet_ntop(AF_INET, a, out, (socklen_t)outsize);
		return 0;
	}
	return -1;
}

int
xclient_parse(const char *arg, struct xclient *x, const char **why)
{
	char		 value[XCLIENT_VALUE_MAX + 1];
	const char	*p = arg, *eq, *end;
	const struct attr *a;

	memset(x, 0, sizeof(*x));
	if (arg == NULL || *arg == '\0') {
		*why = "Syntax: XCLIENT attribute=value ...";
		return -1;
	}
	while (*p != '\0') {
		while (*p == ' ')
			p++;
		if (*p == '\0')
			break;
		end = p + strcspn(p, " ");
		if ((eq = memchr(p, '=', (size_t)(end - p))) == NULL) {
			*why = "Bad XCLIENT attribute syntax: attribute=value expected";
			return -1;
		}
		for (a = attrs; a->name != NULL; a++)
			if (strlen(a->name) == (size_t)(eq - p) &&
			    strncasecmp(a->name, p, (size_t)(eq - p)) == 0)
				break;
		if (a->name == NULL) {
			*why = "Bad XCLIENT attribute name";
			return -1;
		}
		if (x->given & a->bit) {
			*why = "XCLIENT attribute given twice";
			return -1;
		}
		x->given |= a->bit;
		if (xtext_decode(eq + 1, end, value, sizeof(value)) == -1) {
			*why = "Bad XCLIENT attribute value: xtext of printable ASCII, "
			    "at most 255 octets";
			return -1;
		}
		p = end;
		if (strcasecmp(value, "[UNAVAILABLE]") == 0 ||
		    strcasecmp(value, "[TEMPUNAVAIL]") == 0) {
			x->unavailable |= a->bit;
			continue;
		}
		switch (a->bit) {
		case XC_ADDR:
		case XC_DESTADDR:
			if (addr_parse(value, a->bit == XC_ADDR ? x->addr : x->destaddr,
			    sizeof(x->addr)) == -1) {
				*why = a->bit == XC_ADDR ? "Bad XCLIENT ADDR: an IPv4 address "
				    "or IPV6: and an IPv6 address expected" : "Bad XCLIENT DESTADDR";
				return -1;
			}
			break;
		case XC_PORT:
		case XC_DESTPORT:
			if (port_parse(value, a->bit == XC_PORT ? &x->port : &x->destport) == -1) {
				*why = a->bit == XC_PORT ? "Bad XCLIENT PORT: 0 to 65535 expected" :
				    "Bad XCLIENT DESTPORT: 0 to 65535 expected";
				return -1;
			}
			break;
		case XC_PROTO:
			if (strcasecmp(value, "ESMTP") == 0)
				x->esmtp = true;
			else if (strcasecmp(value, "SMTP") != 0) {
				*why = "Bad XCLIENT PROTO: SMTP or ESMTP expected";
				return -1;
			}
			break;
		case XC_NAME:
			if (strchr(value, ' ') != NULL) {
				*why = "Bad XCLIENT NAME: a host name expected";
				return -1;
			}
			memcpy(x->name, value, sizeof(value));
			break;
		case XC_HELO:
			memcpy(x->helo, value, sizeof(value));
			break;
		case XC_LOGIN:
			memcpy(x->login, value, sizeof(value));
			break;
		}
	}
	if (x->given == 0) {
		*why = "Syntax: XCLIENT attribute=value ...";
		return -1;
	}
	return 0;
}
