/*
 * reply.c -- SMTP reply syntax: checks what a policy asks us to say and
 * formats it for the wire.  Never writes to a client itself (session.c does).
 */
#include <ctype.h>
#include <string.h>

#include "reply.h"

bool
reply_valid_code(int code)
{
	return code >= 200 && code <= 599 && (code / 10) % 10 <= 5;
}

/* 1*3DIGIT; returns the number of digits, 0 if none or more than 3 */
static size_t
digits(const char *p)
{
	size_t n = 0;

	while (isdigit((unsigned char)p[n]))
		n++;
	return n <= 3 ? n : 0;
}

const char *
reply_split_enhanced(const char *text, char enhanced[REPLY_ENHANCED_MAX])
{
	const char	*p = text;
	size_t		 n;

	enhanced[0] = '\0';
	/* class "." subject "." detail (RFC 3463 2): class is 2, 4 or 5 */
	if (p[0] != '2' && p[0] != '4' && p[0] != '5')
		return text;
	if (p[1] != '.' || (n = digits(p + 2)) == 0)
		return text;
	p += 2 + n;
	if (*p != '.' || (n = digits(p + 1)) == 0)
		return text;
	p += 1 + n;
	if (*p != ' ' && *p != '\0')
		return text;
	memcpy(enhanced, text, (size_t)(p - text));
	enhanced[p - text] = '\0';
	return *p == ' ' ? p + 1 : p;
}

bool
reply_valid_text(const char *text)
{
	size_t	line = 0, lines = 1;

	for (const char *p = text; *p != '\0'; p++) {
		if (*p == '\n') {
			line = 0;
			if (++lines > REPLY_LINES_MAX)
				return false;
			continue;
		}
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			return false;
		if (++line > REPLY_TEXT_MAX)
			return false;
	}
	return true;
}

size_t
reply_lines(const char *text, size_t *first)
{
	const char	*nl = strchr(text, '\n');
	size_t		 lines = 1;

	*first = nl != NULL ? (size_t)(nl - text) : strlen(text);
	for (; nl != NULL; nl = strchr(nl + 1, '\n'))
		lines++;
	return lines;
}

size_t
reply_format(char *buf, size_t size, int code, const char *enhanced,
    const char *text)
{
	const char	*line = text, *nl;
	size_t		 elen = enhanced != NULL ? strlen(enhanced) : 0;
	size_t		 len = 0, n, w, lines = 0;

	if (code < 100 || code > 999)
		return 0;
	/* by hand, not snprintf: this runs for every reply */
	do {
		nl = strchr(line, '\n');
		n = nl != NULL ? (size_t)(nl - line) : strlen(line);
		w = 4 + (elen > 0 ? elen + 1 : 0) + n + 2;	/* this line, CRLF included */
		if (++lines > REPLY_LINES_MAX || w > REPLY_LINE_MAX || w >= size - len)
			return 0;
		buf[len++] = (char)('0' + code / 100);
		buf[len++] = (char)('0' + code / 10 % 10);
		buf[len++] = (char)('0' + code % 10);
		buf[len++] = nl != NULL ? '-' : ' ';
		if (elen > 0) {
			memcpy(buf + len, enhanced, elen);
			len += elen;
			buf[len++] = ' ';
		}
		memcpy(buf + len, line, n);
		len += n;
		buf[len++] = '\r';
		buf[len++] = '\n';
		if (nl != NULL)
			line = nl + 1;
	} while (nl != NULL);
	buf[len] = '\0';
	return len;
}
