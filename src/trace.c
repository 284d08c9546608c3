/*
 * trace.c -- trace header fields (RFC 5321 4.4, RFC 5322 3.6.7): the
 * Received field the engine prepends to a message, the header fields a
 * policy adds (checked, folded) and the count of the Received fields a
 * message arrives with (RFC 5321 6.3).  No session, no I/O: session.c
 * calls these with what it knows.
 */
#include <limits.h>
#include <string.h>

#include "trace.h"

/* --- the Received field ---------------------------------------------------- */

const char *
trace_protocol(bool lmtp, bool esmtp, bool tls, bool auth)
{
	static const char *const names[2][4] = {
		{ "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA" },
		{ "LMTP", "LMTPA", "LMTPS", "LMTPSA" },
	};

	if (!lmtp && !esmtp)
		return "SMTP";		/* RFC 3848 has no HELO variants */
	return names[lmtp][(tls ? 2 : 0) | (auth ? 1 : 0)];
}

/*
 * One clause of the field, built by appending (no printf: this runs once
 * per message).  Bounded: what does not fit is cut.
 */
struct part {
	char	buf[700];
	size_t	len;
};

static void
part_mem(struct part *p, const char *s, size_t n)
{
	if (n > sizeof(p->buf) - p->len)
		n = sizeof(p->buf) - p->len;
	memcpy(p->buf + p->len, s, n);
	p->len += n;
}

static void
part_str(struct part *p, const char *s)
{
	part_mem(p, s, strlen(s));
}

/*
 * A name the client chose, as a token of the field: at most 255 octets,
 * and an octet that would end the token or the field (space, control,
 * 8-bit, "()<>;,\"\\") becomes '?'.
 */
static void
part_token(struct part *p, const char *s)
{
	for (size_t i = 0; i < 255 && s[i] != '\0' && p->len < sizeof(p->buf); i++) {
		unsigned char c = (unsigned char)s[i];

		p->buf[p->len++] = c <= ' ' || c >= 0x7f || strchr("()<>;,\"\\", c) != NULL ?
		    '?' : (char)c;
	}
}

/* n as width decimal digits, zero-padded */
static void
part_num(struct part *p, unsigned n, int width)
{
	char d[10];

	for (int i = width - 1; i >= 0; i--, n /= 10)
		d[i] = (char)('0' + n % 10);
	part_mem(p, d, (size_t)width);
}

static void
part_hex64(struct part *p, uint64_t v)
{
	static const char	hex[] = "0123456789abcdef";
	char			d[16];

	for (int i = 15; i >= 0; i--, v >>= 4)
		d[i] = hex[v & 15];
	part_mem(p, d, sizeof(d));
}

/* A folded field being written: parts joined by a space, or CRLF TAB past the fold. */
struct field {
	char	*buf;
	size_t	 size, len, line;	/* line: octets on the current line */
	bool	 full;
};

static void
field_part(struct field *f, const struct part *part, bool first)
{
	size_t	n = part->len;

	if (!first && f->line + 1 + n > TRACE_FOLD) {
		if (f->len + 3 + n >= f->size) {
			f->full = true;
			return;
		}
		memcpy(f->buf + f->len, "\r\n\t", 3);
		f->len += 3;
		f->line = 1;
	} else if (!first) {
		if (f->len + 1 + n >= f->size) {
			f->full = true;
			return;
		}
		f->buf[f->len++] = ' ';
		f->line++;
	} else if (n >= f->size) {
		f->full = true;
		return;
	}
	memcpy(f->buf + f->len, part->buf, n);
	f->len += n;
	f->line += n;
}

/* RFC 5322 3.3 date-time in UTC; no locale. */
static void
part_date(struct part *p, time_t when)
{
	static const char days[] = "SunMonTueWedThuFriSat";
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm;

	if (gmtime_r(&when, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	part_mem(p, days + 3 * (tm.tm_wday % 7), 3);
	part_str(p, ", ");
	part_num(p, (unsigned)tm.tm_mday, 2);
	part_str(p, " ");
	part_mem(p, months + 3 * (tm.tm_mon % 12), 3);
	part_str(p, " ");
	part_num(p, (unsigned)(tm.tm_year + 1900) % 10000, 4);
	part_str(p, " ");
	part_num(p, (unsigned)tm.tm_hour, 2);
	part_str(p, ":");
	part_num(p, (unsigned)tm.tm_min, 2);
	part_str(p, ":");
	part_num(p, (unsigned)tm.tm_sec, 2);
	part_str(p, " +0000");
}

size_t
trace_received(char *buf, size_t size, const struct trace_received *r)
{
	struct field	f = { buf, size, 0, 0, false };
	struct part	p;
	bool		addr = r->addr != NULL && r->addr[0] != '\0' &&
			    strcmp(r->addr, "unknown") != 0;
	bool		rev = r->reverse != NULL && r->reverse[0] != '\0';

	if (size == 0)
		return 0;
	buf[0] = '\0';
	/* from HELO (reverse [addr]): RFC 5321 4.4 Extended-Domain and TCP-info */
	p.len = 0;
	part_str(&p, "Received: from ");
	part_token(&p, r->helo != NULL && r->helo[0] != '\0' ? r->helo : "unknown");
	if (addr || rev) {
		part_str(&p, " (");
		if (rev)
			part_token(&p, r->reverse);
		if (addr) {
			part_str(&p, rev ? " [" : "[");
			if (strchr(r->addr, ':') != NULL)
				part_str(&p, "IPv6:");
			part_token(&p, r->addr);
			part_str(&p, "]");
		}
		part_str(&p, ")");
	}
	field_part(&f, &p, true);
	p.len = 0;
	part_str(&p, "by ");
	part_token(&p, r->by != NULL && r->by[0] != '\0' ? r->by : "localhost");
	part_str(&p, " (luasmtpd)");
	field_part(&f, &p, false);
	p.len = 0;
	part_str(&p, "with ");
	part_str(&p, r->protocol);
	field_part(&f, &p, false);
	p.len = 0;
	part_str(&p, "id ");
	part_hex64(&p, r->id);
	if (r->rcpt == NULL)
		part_str(&p, ";");
	field_part(&f, &p, false);
	if (r->rcpt != NULL) {
		/* a parsed path: no CR, LF or controls; bounded all the same */
		p.len = 0;
		part_str(&p, "for <");
		for (size_t i = 0; r->rcpt[i] != '\0' && p.len + 2 < sizeof(p.buf); i++)
			p.buf[p.len++] = (unsigned char)r->rcpt[i] < ' ' ? '?' : r->rcpt[i];
		part_str(&p, ">;");
		field_part(&f, &p, false);
	}
	p.len = 0;
	part_date(&p, r->when);
	field_part(&f, &p, false);
	if (f.full || f.len + 3 > size)
		return 0;
	memcpy(buf + f.len, "\r\n", 3);
	return f.len + 2;
}

/* --- header fields a policy adds -------------------------------------------- */

bool
trace_name_ok(const char *name, size_t len)
{
	if (len == 0 || len > 76)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c < 33 || c > 126 || c == ':')
			return false;
	}
	return true;
}

static bool
wsp(char c)
{
	return c == ' ' || c == '\t';
}

int
trace_header_add(char *buf, size_t *len, size_t size, const char *name,
    size_t namelen, const char *value, size_t valuelen, const char **why)
{
	size_t	n = *len, line, i = 0;

	if (!trace_name_ok(name, namelen)) {
		*why = "a field name is 1 to 76 printable ASCII characters but ':'";
		return -1;
	}
	for (size_t k = 0; k < valuelen; k++) {
		unsigned char c = (unsigned char)value[k];

		if ((c < ' ' && c != '\t') || c == 0x7f) {
			*why = c == '\r' || c == '\n' ? "CR or LF in the value" :
			    "a control character in the value";
			return -1;
		}
	}
	*why = "the added header fields are too long";
	if (n + namelen + 2 > size)
		return -2;
	memcpy(buf + n, name, namelen);
	n += namelen;
	buf[n++] = ':';
	line = namelen + 1;
	if (valuelen > 0 && !wsp(value[0])) {
		if (n + 1 > size)
			return -2;
		buf[n++] = ' ';
		line++;
	}
	/*
	 * Each white-space run and the word after it go on this line, or on a
	 * new one (CRLF before the run: RFC 5322 2.2.3 folding, undone by
	 * unfolding) when this line would pass TRACE_FOLD and holds a word.
	 */
	while (i < valuelen) {
		size_t	j = i, words = 0;

		while (j < valuelen && wsp(value[j]))
			j++;
		while (j < valuelen && !wsp(value[j])) {
			j++;
			words++;
		}
		if (i > 0 && words > 0 && wsp(value[i]) && line + (j - i) > TRACE_FOLD) {
			if (n + 2 > size)
				return -2;
			memcpy(buf + n, "\r\n", 2);
			n += 2;
			line = 0;
		}
		if (n + (j - i) > size || line + (j - i) > TRACE_LINE_MAX)
			return -2;
		memcpy(buf + n, value + i, j - i);
		n += j - i;
		line += j - i;
		i = j;
	}
	if (n + 2 > size)
		return -2;
	memcpy(buf + n, "\r\n", 2);
	*len = n + 2;
	return 0;
}

/* --- counting Received fields ------------------------------------------------ */

enum {
	H_BOL,		/* at the start of a line */
	H_NAME,		/* matching "received" */
	H_WSP,		/* "received" seen: WSP, then ':' */
	H_SKIP,		/* the rest of the line */
	H_CR,		/* a CR at the start of a line */
	H_DONE,		/* the empty line passed: the body */
};

void
trace_hops_init(struct trace_hops *h)
{
	memset(h, 0, sizeof(*h));
	h->state = H_BOL;
}

bool
trace_hops_done(const struct trace_hops *h)
{
	return h->state == H_DONE;
}

void
trace_hops_feed(struct trace_hops *h, const char *buf, size_t len)
{
	static const char	 name[] = "received";
	const char		*p = buf, *end = buf + len, *lf;

	while (p < end && h->state != H_DONE) {
		char c = *p;

		switch (h->state) {
		case H_BOL:
			if (c == '\r') {
				h->state = H_CR;
				p++;
			} else if (c == '\n') {
				h->state = H_DONE;
			} else if (wsp(c)) {
				h->state = H_SKIP;	/* a continuation line */
			} else {
				h->state = H_NAME;
				h->matched = 0;
			}
			break;
		case H_NAME:
			if (h->matched == sizeof(name) - 1) {
				h->state = H_WSP;
			} else if ((c | 0x20) == name[h->matched]) {
				h->matched++;
				p++;
			} else {
				h->state = H_SKIP;
			}
			break;
		case H_WSP:
			if (c == ':') {
				if (h->count < UINT_MAX)
					h->count++;
				h->state = H_SKIP;
				p++;
			} else if (wsp(c)) {
				p++;
			} else {
				h->state = H_SKIP;
			}
			break;
		case H_SKIP:
			if ((lf = memchr(p, '\n', (size_t)(end - p))) == NULL) {
				p = end;
			} else {
				p = lf + 1;
				h->state = H_BOL;
			}
			break;
		case H_CR:
			h->state = c == '\n' ? H_DONE : H_SKIP;
			break;
		}
	}
}
