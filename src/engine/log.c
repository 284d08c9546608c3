/*
 * log.c -- owns the log's formats (text, JSON) and sinks (stderr, syslog,
 * or a callback): formats each line once, bounded, and hands it on.
 * Nothing a client sent ever spans lines or forges a field: text values
 * are quoted and escaped, JSON strings escaped, invalid UTF-8 replaced.
 */
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define SYSLOG_PATH	"/dev/log"
#define SYSLOG_MAIL	(2 << 3)	/* facility mail (RFC 5424 6.2.1) */
#define SYSLOG_WAIT_US	100000		/* a send waits for a busy syslog at most this */

static enum log_level	 current_level = LOG_INFO;
static enum log_format	 current_format = LOG_TEXT;
static log_sink_fn	 sink_fn;
static void		*sink_arg;
static char		 tag[48];
static bool		 to_syslog;
static int		 syslog_fd = -1;
static void		(*batch_fn)(void *);
static void		*batch_arg;
static char		 batch[PIPE_BUF];
static size_t		 batch_len;
static struct sockaddr_un syslog_addr;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const int syslog_severity[] = { 3, 4, 6, 7 };	/* err, warning, info, debug */
static const char *const format_names[] = { "text", "json" };

void
log_set_level(enum log_level level)
{
	current_level = level;
}

enum log_level
log_get_level(void)
{
	return current_level;
}

/* index of name in names (case-insensitive), -1 if absent */
static int
name_index(const char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(name, names[i]) == 0)
			return (int)i;
	return -1;
}

int
log_parse_level(const char *name, enum log_level *out)
{
	int i = name_index(level_names,
	    sizeof(level_names) / sizeof(level_names[0]), name);

	if (i < 0)
		return -1;
	*out = (enum log_level)i;
	return 0;
}

void
log_set_format(enum log_format format)
{
	current_format = format;
}

enum log_format
log_get_format(void)
{
	return current_format;
}

int
log_parse_format(const char *name, enum log_format *out)
{
	int i = name_index(format_names,
	    sizeof(format_names) / sizeof(format_names[0]), name);

	if (i < 0)
		return -1;
	*out = (enum log_format)i;
	return 0;
}

void
log_set_tag(const char *t)
{
	snprintf(tag, sizeof(tag), "%s", t != NULL ? t : "");
}

int
log_set_syslog(const char *path)
{
	if (path == NULL)
		path = SYSLOG_PATH;
	if (strlen(path) >= sizeof(syslog_addr.sun_path))
		return -1;
	memset(&syslog_addr, 0, sizeof(syslog_addr));
	syslog_addr.sun_family = AF_UNIX;
	strcpy(syslog_addr.sun_path, path);
	if (syslog_fd != -1)
		close(syslog_fd);
	syslog_fd = -1;
	to_syslog = true;
	return 0;
}

void
log_flush(void)
{
	if (batch_len > 0)
		(void)!write(STDERR_FILENO, batch, batch_len);
	batch_len = 0;
}

void
log_set_batch(void (*schedule)(void *), void *arg)
{
	static bool	registered;

	log_flush();
	if (!registered && schedule != NULL && atexit(log_flush) == 0)
		registered = true;
	batch_fn = registered ? schedule : NULL;
	batch_arg = arg;
}

void
log_set_sink(log_sink_fn fn, void *arg)
{
	sink_fn = fn;
	sink_arg = arg;
}

/* --- escaping ------------------------------------------------------------ */

size_t
log_utf8_len(const unsigned char *s, size_t len)
{
	unsigned char	c = s[0];
	size_t		n;
	uint32_t	cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, cp = c & 0x07;
	else
		return 0;
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	/* overlong forms, UTF-16 surrogates, past U+10FFFF */
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* As log_json_escape; *used gets the octets of src written. */
static size_t
json_escape(char *dst, size_t cap, const char *src, size_t len, size_t *used)
{
	static const char	 hex[] = "0123456789abcdef";
	const unsigned char	*s = (const unsigned char *)src;
	size_t			 o = 0, i = 0;

	while (i < len) {
		unsigned char	c = s[i];
		char		esc[8];
		size_t		n = 0, take = 1;
		const char	*out = esc;

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			/* the common case: a run of plain characters */
			if (o == cap)
				break;
			dst[o++] = (char)c;
			i++;
			continue;
		}
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = (char)c, n = 2;
		} else if (c == '\n') {
			esc[0] = '\\', esc[1] = 'n', n = 2;
		} else if (c == '\r') {
			esc[0] = '\\', esc[1] = 'r', n = 2;
		} else if (c == '\t') {
			esc[0] = '\\', esc[1] = 't', n = 2;
		} else if (c < 0x20 || c == 0x7f) {
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4], esc[5] = hex[c & 15], n = 6;
		} else if ((take = log_utf8_len(s + i, len - i)) == 0) {
			memcpy(esc, "\\ufffd", 6), n = 6, take = 1;
		} else {
			out = src + i, n = take;	/* valid UTF-8, as it is */
		}
		if (cap - o < n)
			break;
		memcpy(dst + o, out, n);
		o += n;
		i += take;
	}
	*used = i;
	return o;
}

size_t
log_json_escape(char *dst, size_t cap, const char *src, size_t len)
{
	size_t	used;

	return json_escape(dst, cap, src, len, &used);
}

/* Does a text value need quotes: empty, a space, '"', '\\', a control, invalid UTF-8? */
static bool
text_needs_quotes(const unsigned char *s, size_t len)
{
	if (len == 0)
		return true;
	for (size_t i = 0; i < len; ) {
		size_t n;

		if (s[i] > 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') {
			i++;
			continue;
		}
		if (s[i] < 0x80 || (n = log_utf8_len(s + i, len - i)) == 0)
			return true;
		i += n;
	}
	return false;
}

/*
 * The inside of a quoted text value: \" \\ \n \r \t, other controls and
 * invalid octets as \xNN; *used gets the octets of src written.
 */
static size_t
text_escape(char *dst, size_t cap, const char *src, size_t len, size_t *used)
{
	static const char	 hex[] = "0123456789abcdef";
	const unsigned char	*s = (const unsigned char *)src;
	size_t			 o = 0, i = 0;

	while (i < len) {
		unsigned char	c = s[i];
		char		esc[4];
		size_t		n = 0, take = 1;
		const char	*out = esc;

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			esc[0] = (char)c, n = 1;
		else if (c == '"' || c == '\\')
			esc[0] = '\\', esc[1] = (char)c, n = 2;
		else if (c == '\n')
			esc[0] = '\\', esc[1] = 'n', n = 2;
		else if (c == '\r')
			esc[0] = '\\', esc[1] = 'r', n = 2;
		else if (c == '\t')
			esc[0] = '\\', esc[1] = 't', n = 2;
		else if (c >= 0x80 && (take = log_utf8_len(s + i, len - i)) != 0)
			out = src + i, n = take;
		else
			esc[0] = '\\', esc[1] = 'x', esc[2] = hex[c >> 4],
			    esc[3] = hex[c & 15], n = 4, take = 1;
		if (cap - o < n)
			break;
		memcpy(dst + o, out, n);
		o += n;
		i += take;
	}
	*used = i;
	return o;
}

/* A quoted text value; 0 if not even the quotes fit. */
static size_t
text_quote(char *dst, size_t cap, const char *src, size_t len, size_t *used)
{
	size_t	n;

	*used = 0;
	if (cap < 2)
		return 0;
	dst[0] = '"';
	n = text_escape(dst + 1, cap - 2, src, len, used);
	dst[n + 1] = '"';
	return n + 2;
}

/* --- the line's head and where it goes ----------------------------------- */

/* "2026-11-28T16:24:24Z", formatted once a second */
static const char *
stamp_now(time_t *now)
{
	static char	stamp[32];
	static time_t	last = -1;
	struct tm	tm;

	*now = time(NULL);
	if (*now != last) {
		gmtime_r(now, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
		last = *now;
	}
	return stamp;
}

/* "<22>Dec  2 06:31:11 luasmtpd[1234]: " (RFC 3164, as syslog(3) sends it) */
static size_t
syslog_head(char *buf, size_t cap, enum log_level level, time_t now)
{
	struct tm	tm;
	char		when[32];
	int		n;

	localtime_r(&now, &tm);
	strftime(when, sizeof(when), "%b %e %H:%M:%S", &tm);
	n = snprintf(buf, cap, "<%d>%s luasmtpd[%ld]: ",
	    SYSLOG_MAIL | syslog_severity[level], when, (long)getpid());
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void
syslog_send(enum log_level level, time_t now, const char *line, size_t len)
{
	char		head[80];
	struct iovec	iov[2];
	struct msghdr	msg = { .msg_iov = iov, .msg_iovlen = 2 };

	iov[0].iov_base = head;
	iov[0].iov_len = syslog_head(head, sizeof(head), level, now);
	iov[1].iov_base = (void *)line;
	iov[1].iov_len = len;
	for (int tries = 0; tries < 2; tries++) {
		if (syslog_fd == -1) {
			struct timeval tv = { 0, SYSLOG_WAIT_US };

			syslog_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
			if (syslog_fd == -1)
				return;
			(void)setsockopt(syslog_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
			if (connect(syslog_fd, (struct sockaddr *)&syslog_addr,
			    sizeof(syslog_addr)) == -1) {
				close(syslog_fd);
				syslog_fd = -1;
				return;
			}
		}
		/* a burst waits for the daemon to read; a stuck one costs the line */
		if (sendmsg(syslog_fd, &msg, MSG_NOSIGNAL) != -1 ||
		    errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		close(syslog_fd);	/* the daemon restarted: reconnect once */
		syslog_fd = -1;
	}
}

/*
 * line holds the whole line for stderr and the sink; from skip on, what
 * syslog gets (it has a time of its own).
 */
static void
log_out(enum log_level level, time_t now, char *line, size_t len, size_t skip)
{
	if (sink_fn != NULL) {
		line[len] = '\0';
		sink_fn(sink_arg, level, line);
	} else if (to_syslog) {
		syslog_send(level, now, line + skip, len - skip);
	} else {
		line[len] = '\n';	/* one write: lines of workers never mix */
		if (batch_fn != NULL && level >= LOG_INFO && len < sizeof(batch)) {
			if (batch_len + len + 1 > sizeof(batch))
				log_flush();
			if (batch_len == 0)
				batch_fn(batch_arg);
			memcpy(batch + batch_len, line, len + 1);
			batch_len += len + 1;
			return;
		}
		log_flush();		/* what waits was logged first */
		(void)!write(STDERR_FILENO, line, len + 1);
	}
}

/*
 * The head of a line: text "STAMP LEVEL TAG [ID] ", JSON
 * {"time":..,"level":..,"proc":..,"session":.., (the caller adds the rest).
 * *skip gets the offset syslog starts at.
 */
static size_t
log_head(char *buf, size_t cap, enum log_level level, uint64_t id,
    const char *stamp, size_t *skip)
{
	static const char	 hex[] = "0123456789abcdef";
	/* by hand, not snprintf: this runs for every line (~1,500 instructions less) */
	static const char	*const text_levels[] = { "error ", "warn  ", "info  ", "debug " };
	size_t			 n = 0, k;
	char			*p;

	if (cap < 160)
		return 0;
	k = strlen(stamp);
	if (current_format == LOG_JSON) {
		*skip = 0;
		memcpy(buf, "{\"time\":\"", 9), n = 9;
		memcpy(buf + n, stamp, k), n += k;
		memcpy(buf + n, "\",\"level\":\"", 11), n += 11;
		k = strlen(level_names[level]);
		memcpy(buf + n, level_names[level], k), n += k;
		buf[n++] = '"';
		if (tag[0] != '\0') {
			memcpy(buf + n, ",\"proc\":\"", 9), n += 9;
			k = strlen(tag);
			memcpy(buf + n, tag, k), n += k;
			buf[n++] = '"';
		}
		if (id != 0) {
			memcpy(buf + n, ",\"session\":\"", 12), n += 12;
			p = buf + n;
			for (int i = 15; i >= 0; i--, id >>= 4)
				p[i] = hex[id & 15];
			n += 16;
			buf[n++] = '"';
		}
	} else {
		memcpy(buf, stamp, k), n = k;
		buf[n++] = ' ';
		*skip = n;
		memcpy(buf + n, text_levels[level], 6), n += 6;
		if (tag[0] != '\0') {
			k = strlen(tag);
			memcpy(buf + n, tag, k), n += k;
			buf[n++] = ' ';
		}
		if (id != 0) {
			buf[n++] = '[';
			p = buf + n;
			for (int i = 15; i >= 0; i--, id >>= 4)
				p[i] = hex[id & 15];
			n += 16;
			buf[n++] = ']';
			buf[n++] = ' ';
		}
	}
	return n;
}

void
log_msg(enum log_level level, uint64_t id, const char *fmt, ...)
{
	char		 line[LOG_LINE_MAX + 1];	/* + the newline */
	char		 text[LOG_LINE_MAX];
	const char	*stamp;
	time_t		 now;
	va_list		 ap;
	size_t		 n, skip, len;
	int		 tn;

	if (level > current_level)
		return;
	stamp = stamp_now(&now);
	n = log_head(line, LOG_LINE_MAX, level, id, stamp, &skip);
	va_start(ap, fmt);
	tn = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	len = tn < 0 ? 0 : (size_t)tn < sizeof(text) ? (size_t)tn : sizeof(text) - 1;
	if (current_format == LOG_JSON) {
		static const char open[] = ",\"msg\":\"";

		memcpy(line + n, open, sizeof(open) - 1);
		n += sizeof(open) - 1;
		/* room for the closing "} */
		n += log_json_escape(line + n, LOG_LINE_MAX - 2 - n, text, len);
		line[n++] = '"';
		line[n++] = '}';
	} else {
		if (len > LOG_LINE_MAX - n)
			len = LOG_LINE_MAX - n;
		/* a log line never spans lines: a client's bytes cannot forge entries */
		for (size_t i = 0; i < len; i++) {
			char c = text[i];

			if (c == '\n' || c == '\t')
				c = ' ';
			else if ((unsigned char)c < 0x20 || c == 0x7f)
				c = '?';
			line[n++] = c;
		}
	}
	log_out(level, now, line, n, skip);
}

/* --- records --------------------------------------------------------------- */

/* kept free at the end of a record: "]", ',"cut":true' */
#define REC_RESERVE	16
/* and for the fields after the recipients (size, code, result, duration) */
#define REC_TAIL	160

void
log_rec_begin(struct log_rec *r, const char *event)
{
	size_t	n = strlen(event);

	r->json = current_format == LOG_JSON;
	r->cut = false;
	r->in_list = false;
	r->len = 0;
	if (n > 64)
		return;
	if (r->json) {
		memcpy(r->buf, ",\"event\":\"", 10);
		memcpy(r->buf + 10, event, n);
		r->buf[10 + n] = '"';
		r->len = n + 11;
	} else {
		memcpy(r->buf, event, n);
		r->len = n;
	}
}

static size_t
rec_room(const struct log_rec *r)
{
	return r->len + REC_RESERVE < sizeof(r->buf) ? sizeof(r->buf) - REC_RESERVE - r->len : 0;
}

/* Appends a raw piece, whole or not at all. */
static bool
rec_put(struct log_rec *r, const char *p, size_t n)
{
	if (rec_room(r) < n) {
		r->cut = true;
		return false;
	}
	memcpy(r->buf + r->len, p, n);
	r->len += n;
	return true;
}

/* JSON: the "rcpts" array ends before any other field (its room is reserved). */
static void
rec_close_list(struct log_rec *r)
{
	if (r->in_list) {
		r->in_list = false;
		r->buf[r->len++] = ']';
	}
}

/* ` key=` or `,"key":` */
static bool
rec_key(struct log_rec *r, const char *key)
{
	size_t	 k = strlen(key);
	char	*p;

	rec_close_list(r);
	if (rec_room(r) < k + 4) {
		r->cut = true;
		return false;
	}
	p = r->buf + r->len;		/* in place: this runs for every field */
	if (r->json) {
		p[0] = ',', p[1] = '"';
		memcpy(p + 2, key, k);
		p[k + 2] = '"', p[k + 3] = ':';
		r->len += k + 4;
	} else {
		p[0] = ' ';
		memcpy(p + 1, key, k);
		p[k + 1] = '=';
		r->len += k + 2;
	}
	return true;
}

/*
 * A string value, quoted and escaped as the format wants.  A value too long
 * for the room left is cut (at a character) and the record marked cut.
 */
static void
rec_value(struct log_rec *r, const char *val, size_t len)
{
	size_t	room = rec_room(r), n, used;

	if (r->json) {
		if (room < 2) {
			r->cut = true;
			return;
		}
		r->buf[r->len] = '"';
		n = json_escape(r->buf + r->len + 1, room - 2, val, len, &used);
		r->buf[r->len + 1 + n] = '"';
		r->len += n + 2;
	} else {
		const unsigned char	*v = (const unsigned char *)val;
		char			*d = r->buf + r->len;
		size_t			 max = len < room ? len : room, i;

		/* the common case, checked as it is copied: printable ASCII, no quote */
		for (i = 0; i < max; i++) {
			if (v[i] <= 0x20 || v[i] >= 0x7f || v[i] == '"' || v[i] == '\\')
				break;
			d[i] = (char)v[i];
		}
		if (len > 0 && (i == max || (v[i] >= 0x80 &&
		    !text_needs_quotes(v + i, len - i)))) {
			used = max;
			if (i < max)
				memcpy(d + i, v + i, max - i);	/* valid UTF-8 */
			r->len += used;
		} else {
			r->len += text_quote(d, room, val, len, &used);
		}
	}
	if (used < len)
		r->cut = true;
}

void
log_rec_strn(struct log_rec *r, const char *key, const char *val, size_t len)
{
	if (val == NULL)
		return;
	if (rec_key(r, key))
		rec_value(r, val, len);
}

void
log_rec_word(struct log_rec *r, const char *key, const char *val)
{
	size_t	n;

	if (val == NULL || (n = strlen(val)) == 0 || !rec_key(r, key))
		return;
	if (r->json)
		rec_put(r, "\"", 1);
	rec_put(r, val, n);
	if (r->json)
		rec_put(r, "\"", 1);
}

void
log_rec_str(struct log_rec *r, const char *key, const char *val)
{
	if (val != NULL)
		log_rec_strn(r, key, val, strlen(val));
}

/* Digits of v, right-aligned in buf; returns the first. */
static char *
digits(char *end, uint64_t v)
{
	do
		*--end = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	return end;
}

void
log_rec_uint(struct log_rec *r, const char *key, uint64_t val)
{
	char	buf[24], *p = digits(buf + sizeof(buf), val);

	if (rec_key(r, key))
		rec_put(r, p, (size_t)(buf + sizeof(buf) - p));
}

void
log_rec_ms(struct log_rec *r, const char *key, uint64_t ms)
{
	char	buf[32], *end = buf + sizeof(buf), *p;

	p = digits(end - 4, ms / 1000);
	end[-4] = '.';
	end[-3] = (char)('0' + ms / 100 % 10);
	end[-2] = (char)('0' + ms / 10 % 10);
	end[-1] = (char)('0' + ms % 10);
	if (rec_key(r, key))
		rec_put(r, p, (size_t)(end - p));
}

void
log_rec_rcpt(struct log_rec *r, const char *address, int code, const char *enhanced)
{
	log_rec_reply_item(r, "to", NULL, address, code, enhanced);
}

void
log_rec_reply_item(struct log_rec *r, const char *key, const char *list,
    const char *address, int code, const char *enhanced)
{
	char	 item[1024], *p = item, *end = item + sizeof(item) - 48;
	size_t	 len = strlen(address), used, elen = 0;

	if (code < 100 || code > 999)
		code = 0;
	if (enhanced != NULL && (elen = strlen(enhanced)) >= 12)
		elen = 0;
	if (r->json) {
		static const char first[] = ",\"rcpts\":[{\"to\":\"", next[] = ",{\"to\":\"";

		if (list != NULL) {
			/* another list: the one before it ends; "list" is a word of ours */
			rec_close_list(r);
			p += snprintf(p, 80, ",\"%.64s\":[{\"to\":\"", list);
		} else if (r->in_list)
			memcpy(p, next, sizeof(next) - 1), p += sizeof(next) - 1;
		else
			memcpy(p, first, sizeof(first) - 1), p += sizeof(first) - 1;
		p += json_escape(p, (size_t)(end - p), address, len, &used);
		memcpy(p, "\",\"code\":", 9), p += 9;
	} else {
		/* "<ADDRESS>:CODE/ENHANCED", raw here, quoted as one value below */
		used = len < (size_t)(end - p) ? len : (size_t)(end - p);
		*p++ = '<';
		memcpy(p, address, used), p += used;
		*p++ = '>';
		*p++ = ':';
	}
	*p++ = (char)('0' + code / 100);
	*p++ = (char)('0' + code / 10 % 10);
	*p++ = (char)('0' + code % 10);
	if (elen > 0) {
		if (r->json)
			memcpy(p, ",\"enhanced\":\"", 13), p += 13;
		else
			*p++ = '/';
		memcpy(p, enhanced, elen), p += elen;
		if (r->json)
			*p++ = '"';
	}
	if (used < len)
		r->cut = true;
	if (!r->json) {
		size_t n = (size_t)(p - item);

		/* a recipient is whole or left out (escaped: 4 octets an octet at most) */
		if (rec_room(r) < REC_TAIL + 4 + 4 * n + 2 &&
		    text_needs_quotes((const unsigned char *)item, n))
			n = 4 * n + 2;
		if (rec_room(r) < REC_TAIL + 4 + n)
			r->cut = true;
		else if (rec_key(r, key))
			rec_value(r, item, (size_t)(p - item));
		return;
	}
	*p++ = '}';
	if (rec_room(r) < REC_TAIL + (size_t)(p - item))
		r->cut = true;
	else if (rec_put(r, item, (size_t)(p - item)))
		r->in_list = true;
}

void
log_rec_emit(struct log_rec *r, enum log_level level, uint64_t id)
{
	char		 line[LOG_LINE_MAX + 1];
	const char	*stamp;
	time_t		 now;
	size_t		 n, skip;

	if (level > current_level)
		return;
	rec_close_list(r);
	if (r->cut)
		memcpy(r->buf + r->len, r->json ? ",\"cut\":true" : " cut=1",
		    r->json ? 11 : 6), r->len += r->json ? 11 : 6;
	stamp = stamp_now(&now);
	n = log_head(line, sizeof(line) - 1, level, id, stamp, &skip);
	if (n + r->len + 1 > LOG_LINE_MAX)
		r->len = LOG_LINE_MAX - 1 - n;	/* the head is small: never so */
	memcpy(line + n, r->buf, r->len);
	n += r->len;
	if (r->json)
		line[n++] = '}';
	log_out(level, now, line, n, skip);
}
