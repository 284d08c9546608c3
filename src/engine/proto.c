/*
 * proto.c -- SMTP syntax: reverse- and forward-paths with their ESMTP
 * parameters (RFC 5321 4.1.2, RFC 6531 for UTF-8), HELO/EHLO names.
 *
 * Pure functions over a line the caller owns: nothing is allocated, nothing
 * is logged.  proto_parse_path() writes NUL bytes into the line; the local
 * part is copied into struct smtp_path because the line has no room for it.
 * Every length is bounded before anything is copied.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "proto.h"

/* Character classes of RFC 5321 4.1.2 and RFC 5322 3.2.3, ASCII only. */
static bool	is_alpha(int c);
static bool	is_digit(int c);
static bool	is_letdig(int c);
static bool	is_atext(int c);
static bool	is_qtext(int c);
static bool	is_dcontent(int c);
static bool	is_esmtp_value(int c);

static size_t	utf8_seq(const char *p);
static size_t	utf8_char(const char *p, bool utf8, const char **why);
static const char *parse_domain(const char *p, bool utf8, bool lenient,
		    const char **why);
static const char *parse_literal(const char *p, const char **why);
static const char *parse_local(const char *p, bool utf8, const char **why);
static int	parse_params(char *p, int flags, struct smtp_path *out,
		    const char **why);

static const char	WHY_UTF8[] = "non-ASCII address needs SMTPUTF8";
static const char	WHY_BAD_UTF8[] = "malformed UTF-8";

static bool
is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool
is_letdig(int c)
{
	return is_alpha(c) || is_digit(c);
}

static bool
is_atext(int c)
{
	return is_letdig(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* qtextSMTP: %d32-33 / %d35-91 / %d93-126 */
static bool
is_qtext(int c)
{
	return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

/* dcontent: %d33-90 / %d94-126 */
static bool
is_dcontent(int c)
{
	return c >= 33 && c <= 126 && c != '[' && c != '\\' && c != ']';
}

/* esmtp-value: %d33-60 / %d62-126 */
static bool
is_esmtp_value(int c)
{
	return c >= 33 && c <= 126 && c != '=';
}

/*
 * Length of the well-formed non-ASCII UTF-8 sequence at p (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0.  Stops at
 * the terminating NUL because a NUL is never a continuation byte.
 */
static size_t
utf8_seq(const char *p)
{
	const unsigned char	*s = (const unsigned char *)p;
	unsigned char		 lo = 0x80, hi = 0xbf;
	size_t			 n, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		if (s[0] == 0xe0)
			lo = 0xa0;		/* overlong */
		else if (s[0] == 0xed)
			hi = 0x9f;		/* surrogates */
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		if (s[0] == 0xf0)
			lo = 0x90;		/* overlong */
		else if (s[0] == 0xf4)
			hi = 0x8f;		/* above U+10FFFF */
	} else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* One non-ASCII character where UTF-8 may be allowed: its length, or 0 and why. */
static size_t
utf8_char(const char *p, bool utf8, const char **why)
{
	size_t n;

	if (!utf8) {
		*why = WHY_UTF8;
		return 0;
	}
	if ((n = utf8_seq(p)) == 0)
		*why = WHY_BAD_UTF8;
	return n;
}

/*
 * Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str],
 * each label at most 63 octets, the whole at most SMTP_DOMAIN_MAX.  With
 * utf8, non-ASCII UTF-8 characters count as letters (RFC 6531 U-labels; the
 * IDNA rules are the resolver's business).  lenient (HELO names) also takes
 * underscores.  Returns the first octet after the domain, or NULL.
 */
static const char *
parse_domain(const char *p, bool utf8, bool lenient, const char **why)
{
	const char	*start = p, *label;
	size_t		 n;

	for (;;) {
		label = p;
		for (;;) {
			if (is_letdig(*p) || *p == '-' || (lenient && *p == '_'))
				p++;
			else if ((unsigned char)*p >= 0x80) {
				if ((n = utf8_char(p, utf8, why)) == 0)
					return NULL;
				p += n;
			} else
				break;
		}
		if (p == label || label[0] == '-' || p[-1] == '-') {
			*why = "bad domain";
			return NULL;
		}
		if (p - label > 63) {
			*why = "domain label too long";
			return NULL;
		}
		if (*p != '.')
			break;
		p++;
	}
	if ((size_t)(p - start) > SMTP_DOMAIN_MAX) {
		*why = "domain too long";
		return NULL;
	}
	return p;
}

/*
 * address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
 * General-address-literal ) "]"; p is at "[".  IP forms are checked with
 * inet_pton().  Returns the octet after "]", or NULL.
 */
static const char *
parse_literal(const char *p, const char **why)
{
	const char	*body = p + 1, *end, *colon = NULL, *q;
	char		 buf[64];
	size_t		 len;
	struct in_addr	 a4;
	struct in6_addr	 a6;

	*why = "bad address literal";
	for (end = body; *end != ']'; end++) {
		if (!is_dcontent(*end))
			return NULL;	/* also the NUL: no "]" */
		if (*end == ':' && colon == NULL)
			colon = end;
	}
	if ((len = end - body) + 2 > SMTP_DOMAIN_MAX) {
		*why = "domain too long";
		return NULL;
	}
	if (colon == NULL) {
		/* IPv4-address-literal = Snum 3("." Snum) */
		if (len >= sizeof(buf))
			return NULL;
		memcpy(buf, body, len);
		buf[len] = '\0';
		if (inet_pton(AF_INET, buf, &a4) != 1)
			return NULL;
		return end + 1;
	}
	if (colon - body == 4 && strncasecmp(body, "IPv6", 4) == 0) {
		len = end - (colon + 1);
		if (len >= sizeof(buf))
			return NULL;
		memcpy(buf, colon + 1, len);
		buf[len] = '\0';
		if (inet_pton(AF_INET6, buf, &a6) != 1)
			return NULL;
		return end + 1;
	}
	/* General-address-literal = Standardized-tag ":" 1*dcontent */
	if (colon == body || !is_letdig(colon[-1]) || colon + 1 == end)
		return NULL;
	for (q = body; q < colon; q++)
		if (!is_letdig(*q) && *q != '-')
			return NULL;
	for (q = colon + 1; q < end; q++)
		if (!is_dcontent(*q))
			return NULL;
	return end + 1;
}

/*
 * Local-part = Dot-string / Quoted-string, with UTF8-non-ascii in atext and
 * qtextSMTP when utf8 (RFC 6531 3.3).  Returns the octet after it, or NULL.
 */
static const char *
parse_local(const char *p, bool utf8, const char **why)
{
	size_t	n;

	*why = "bad local part";
	if (*p == '"') {
		for (p++; *p != '"'; ) {
			if (*p == '\\') {
				if (p[1] < 32 || p[1] > 126)
					return NULL;
				p += 2;
			} else if (is_qtext(*p))
				p++;
			else if ((unsigned char)*p >= 0x80) {
				if ((n = utf8_char(p, utf8, why)) == 0)
					return NULL;
				p += n;
			} else
				return NULL;	/* control, or the NUL: unterminated */
		}
		return p + 1;
	}
	for (;;) {
		const char *atom = p;

		for (;;) {
			if (is_atext(*p))
				p++;
			else if ((unsigned char)*p >= 0x80) {
				if ((n = utf8_char(p, utf8, why)) == 0)
					return NULL;
				p += n;
			} else
				break;
		}
		if (p == atom)
			return NULL;		/* empty, or a leading/doubled dot */
		if (*p != '.')
			return p;
		p++;
	}
}

/*
 * Mail-parameters = esmtp-param *(SP esmtp-param), each preceded by one or
 * more spaces; p is just after ">".  Trailing spaces are tolerated.
 */
static int
parse_params(char *p, int flags, struct smtp_path *out, const char **why)
{
	char	*key, *value, sep;
	size_t	 i, n;

	*why = "bad parameter";
	if (*p != ' ' && *p != '\0')
		return -1;		/* "<a@b.example>X" */
	for (;;) {
		while (*p == ' ')
			*p++ = '\0';
		if (*p == '\0')
			return 0;
		key = p;
		if (!is_letdig(*p))
			return -1;
		while (is_letdig(*p) || *p == '-')
			p++;
		value = NULL;
		if (*p == '=') {
			*p++ = '\0';
			value = p;
			for (;;) {
				if (is_esmtp_value(*p))
					p++;
				else if ((unsigned char)*p >= 0x80 &&
				    (flags & PATH_ALLOW_UTF8) &&
				    (n = utf8_seq(p)) != 0)
					p += n;
				else
					break;
			}
			if (p == value)
				return -1;	/* "KEY=" */
		}
		if (*p != ' ' && *p != '\0')
			return -1;
		sep = *p;
		*p = '\0';
		if (out->nparams == SMTP_PARAMS_MAX) {
			*why = "too many parameters";
			return -1;
		}
		for (i = 0; i < out->nparams; i++)
			if (strcasecmp(out->params[i].key, key) == 0) {
				*why = "duplicate parameter";
				return -1;
			}
		out->params[out->nparams].key = key;
		out->params[out->nparams].value = value;
		out->nparams++;
		if (sep == '\0')
			return 0;
		p++;
	}
}

int
proto_parse_path(char *line, int flags, struct smtp_path *out,
    const char **why)
{
	const char	*p, *lt, *mbox, *at, *end;
	bool		 utf8 = (flags & PATH_ALLOW_UTF8) != 0;
	size_t		 llen, i;

	memset(out, 0, sizeof(*out));
	out->address = out->local = out->domain = "";
	for (p = line; *p == ' ' || *p == '\t'; p++)
		;
	if (*p != '<') {
		*why = "missing angle brackets";
		return -1;
	}
	lt = p++;
	if (*p == '>') {
		if (!(flags & PATH_ALLOW_NULL)) {
			*why = "null path not allowed";
			return -1;
		}
		end = p;
		goto params;
	}

	/* A-d-l ":" -- a source route, checked and dropped (RFC 5321 C) */
	if (*p == '@') {
		for (;;) {
			if ((p = parse_domain(p + 1, utf8, false, why)) == NULL)
				return -1;
			if (*p == ':')
				break;
			if (*p != ',' || p[1] != '@') {
				*why = "bad source route";
				return -1;
			}
			p++;
		}
		p++;
	}

	mbox = p;
	if ((at = parse_local(p, utf8, why)) == NULL)
		return -1;
	if ((llen = at - mbox) > SMTP_LOCAL_MAX) {
		*why = "local part too long";
		return -1;
	}
	if (*at == '>' && mbox == lt + 1 && llen == 10 &&
	    strncasecmp(mbox, "Postmaster", 10) == 0) {
		if (!(flags & PATH_POSTMASTER)) {
			*why = "missing domain";
			return -1;
		}
		end = at;
		out->address = out->local = "Postmaster";
		goto params;
	}
	if (*at != '@') {
		*why = *at == '\0' ? "missing angle brackets" :
		    *at == '>' ? "missing domain" : "bad local part";
		return -1;
	}
	if (at[1] == '[')
		end = parse_literal(at + 1, why);
	else
		end = parse_domain(at + 1, utf8, false, why);
	if (end == NULL)
		return -1;
	if (*end != '>') {
		*why = *end == '\0' ? "missing angle brackets" : "bad domain";
		return -1;
	}
	if ((size_t)(end - lt) + 1 > SMTP_PATH_MAX) {
		*why = "path too long";
		return -1;
	}
	memcpy(out->local_buf, mbox, llen);
	out->local_buf[llen] = '\0';
	out->local = out->local_buf;
	out->address = mbox;
	out->domain = at + 1;
	for (i = 0; mbox + i < end; i++)
		if ((unsigned char)mbox[i] >= 0x80)
			out->utf8 = true;

params:
	line[end - line] = '\0';	/* the ">" ends address and domain */
	if (parse_params(line + (end - line) + 1, flags, out, why) == -1)
		return -1;
	return 0;
}

static int
hex_digit(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

long
proto_xtext_decode(char *s, bool allow_space)
{
	char	*in = s, *out = s;
	int	 hi, lo, c;

	while (*in != '\0') {
		c = (unsigned char)*in;
		if (c == '+') {
			if ((hi = hex_digit(in[1])) < 0 || (lo = hex_digit(in[2])) < 0)
				return -1;
			c = hi * 16 + lo;
			in += 3;
		} else if (c < 0x21 || c > 0x7e || c == '=') {
			return -1;
		} else
			in++;
		if ((c < 0x21 || c > 0x7e) && !(c == ' ' && allow_space))
			return -1;	/* a NUL, a control, non-ASCII */
		*out++ = (char)c;
	}
	*out = '\0';
	return out - s;
}

static void
upcase(char *s)
{
	for (; *s != '\0'; s++)
		if (*s >= 'a' && *s <= 'z')
			*s = (char)(*s - 'a' + 'A');
}

/* NOTIFY = "NEVER" / 1#("SUCCESS" / "FAILURE" / "DELAY"), each once */
static bool
dsn_notify_ok(char *v)
{
	static const char *const words[] = { "SUCCESS", "FAILURE", "DELAY" };
	unsigned	 seen = 0;
	char		*p = v;

	upcase(v);
	if (strcmp(v, "NEVER") == 0)
		return true;
	for (;;) {
		size_t	n = strcspn(p, ",");
		size_t	i;

		for (i = 0; i < 3; i++)
			if (strlen(words[i]) == n && strncmp(p, words[i], n) == 0)
				break;
		if (i == 3 || (seen & (1u << i)))
			return false;
		seen |= 1u << i;
		if (p[n] == '\0')
			return true;
		p += n + 1;
	}
}

/* ORCPT = addr-type ";" xtext; addr-type is an atom (RFC 3461 4.2) */
static bool
dsn_orcpt_ok(char *v)
{
	char	*semi = strchr(v, ';'), *p;

	if (strlen(v) > DSN_ORCPT_MAX || semi == NULL || semi == v)
		return false;
	for (p = v; p < semi; p++)
		if (!is_atext((unsigned char)*p))
			return false;
	*semi = '\0';
	upcase(v);
	*semi = ';';
	return proto_xtext_decode(semi + 1, true) > 0;
}

int
proto_dsn_params(struct smtp_path *p, bool rcpt, const char **why)
{
	for (size_t i = 0; i < p->nparams; i++) {
		const char	*key = p->params[i].key;
		char		*v = (char *)p->params[i].value;	/* in the line */

		if (!rcpt && strcasecmp(key, "RET") == 0) {
			*why = "bad RET value (FULL or HDRS)";
			if (v == NULL)
				return -1;
			upcase(v);
			if (strcmp(v, "FULL") != 0 && strcmp(v, "HDRS") != 0)
				return -1;
		} else if (!rcpt && strcasecmp(key, "ENVID") == 0) {
			*why = "bad ENVID value (xtext, at most 100 characters)";
			if (v == NULL || strlen(v) > DSN_ENVID_MAX ||
			    proto_xtext_decode(v, false) <= 0)
				return -1;
		} else if (rcpt && strcasecmp(key, "NOTIFY") == 0) {
			*why = "bad NOTIFY value (NEVER, or SUCCESS, FAILURE, DELAY)";
			if (v == NULL || !dsn_notify_ok(v))
				return -1;
		} else if (rcpt && strcasecmp(key, "ORCPT") == 0) {
			*why = "bad ORCPT value (addr-type;xtext)";
			if (v == NULL || !dsn_orcpt_ok(v))
				return -1;
		}
	}
	return 0;
}

const struct smtp_param *
proto_param(const struct smtp_path *p, const char *key)
{
	size_t	i;

	for (i = 0; i < p->nparams; i++)
		if (strcasecmp(p->params[i].key, key) == 0)
			return &p->params[i];
	return NULL;
}

/* A bare IPv6 address, bounded before inet_pton() sees it. */
static bool
bare_ipv6(const char *name)
{
	struct in6_addr	a6;

	return strlen(name) < INET6_ADDRSTRLEN &&
	    inet_pton(AF_INET6, name, &a6) == 1;
}

/*
 * A HELO/EHLO argument: an address literal ("[192.0.2.1]", "[IPv6:...]",
 * "[tag:content]") or a host name.  Host names are taken the way Postfix's
 * valid_hostname() takes them, more leniently than RFC 5321 Domain:
 * underscores are allowed (Windows hosts send them), a bare word such as
 * "localhost" and a bare IPv4 address are accepted, and so is a bare IPv6
 * address ("2001:db8::1", what some clients send; Postfix takes it too):
 * the policy sees it and may refuse it.  Rejected: empty,
 * spaces and controls, empty labels (leading, trailing or doubled dots),
 * labels starting or ending with "-", labels over 63 or names over 255
 * octets, any other punctuation, unmatched brackets, and non-ASCII unless
 * allow_utf8 (then well-formed UTF-8 only).
 */
bool
proto_valid_helo(const char *name, bool allow_utf8)
{
	const char	*why, *end;

	if (name == NULL || *name == '\0')
		return false;
	if (strchr(name, ':') != NULL && *name != '[')
		return bare_ipv6(name);
	if (*name == '[')
		end = parse_literal(name, &why);
	else
		end = parse_domain(name, allow_utf8, true, &why);
	return end != NULL && *end == '\0';
}

const char *
proto_skip_prefix(const char *s, const char *prefix)
{
	size_t	n;

	if (s == NULL || prefix == NULL)
		return NULL;
	n = strlen(prefix);
	if (strncasecmp(s, prefix, n) != 0)
		return NULL;
	return s + n;
}
