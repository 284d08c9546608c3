/*
 * reply.h -- SMTP reply syntax: codes, enhanced status codes, text checks and
 * the wire format of single- and multi-line replies.  Pure functions; the
 * engine (session.c) is the only writer of replies and uses these.
 */
#ifndef LUASMTPD_REPLY_H
#define LUASMTPD_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#define REPLY_LINE_MAX		512	/* RFC 5321 4.5.3.1.5, incl. CRLF */
#define REPLY_LINES_MAX		32
#define REPLY_ENHANCED_MAX	12	/* "5.123.123" + NUL, rounded */
#define REPLY_TEXT_MAX		(REPLY_LINE_MAX - 16)	/* a text line: "250-5.123.123 " and CRLF fit */

/* A three-digit code 200-599 whose middle digit is 0-5 (RFC 5321 4.2). */
bool	reply_valid_code(int code);

/*
 * If text starts with an RFC 3463 enhanced status code and a space, copies the
 * code into enhanced and returns the rest of the text; otherwise returns text
 * and sets enhanced to "".
 */
const char *reply_split_enhanced(const char *text, char enhanced[REPLY_ENHANCED_MAX]);

/* Lines of printable ASCII separated by '\n', within the line and count bounds. */
bool	reply_valid_text(const char *text);

/* The number of '\n'-separated lines in text; *first gets the first one's length. */
size_t	reply_lines(const char *text, size_t *first);

/*
 * Formats code [enhanced] text as one reply; text lines are separated by '\n'
 * and each line gets the code ('-' after it on all but the last) and the
 * enhanced code when one is given.  Returns the length, or 0 if it does not
 * fit in buf, or a line would pass REPLY_LINE_MAX octets, or the reply
 * REPLY_LINES_MAX lines: what leaves is always a reply the RFC allows.
 */
size_t	reply_format(char *buf, size_t size, int code, const char *enhanced,
	    const char *text);

#endif
