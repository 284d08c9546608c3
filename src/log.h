/*
 * log.h -- one line per event, as text or JSON, on stderr or to syslog,
 * with the session id when there is one.
 *
 * Two kinds of line: a message (log_msg: printf text) and a record
 * (struct log_rec: an event name and key/value fields, built in place and
 * emitted once), the shape the summary lines and refusals take.  docs/LOGGING.md
 * lists every key.
 */
#ifndef LUASMTPD_LOG_H
#define LUASMTPD_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_TEXT, LOG_JSON };

#define LOG_LINE_MAX	4096	/* a whole line; a longer one is cut (text) or loses fields (JSON) */

void		log_set_level(enum log_level level);
enum log_level	log_get_level(void);
int		log_parse_level(const char *name, enum log_level *out);	/* 0 or -1 */

void		log_set_format(enum log_format format);
enum log_format	log_get_format(void);
int		log_parse_format(const char *name, enum log_format *out);	/* 0 or -1 */

/* The process's name on every line ("worker0[1234]"); NULL or "": none. */
void		log_set_tag(const char *tag);

/*
 * Lines go to the local syslog socket (path NULL: /dev/log) as facility
 * mail, ident luasmtpd, instead of stderr.  The socket is connected on the
 * first line and again after an error; a line the daemon does not take
 * within 0.1 s, or at all, is lost.
 * Returns 0, or -1 if path is too long for a socket address.
 */
int		log_set_syslog(const char *path);

/*
 * Batching on stderr: info and debug lines wait in a buffer of PIPE_BUF
 * octets (one write() stays atomic on a pipe) and leave together; the first
 * line into an empty buffer calls schedule(arg), which arranges a
 * log_flush() soon (the server: at the end of the event loop's turn).  A
 * warn or error line flushes what waits, then goes at once.  schedule NULL
 * flushes and stops batching; exit() flushes too.
 */
void		log_set_batch(void (*schedule)(void *), void *arg);
void		log_flush(void);

/* Where lines go; NULL restores stderr (or syslog).  The Lua test harness captures with it. */
typedef void	(*log_sink_fn)(void *arg, enum log_level level, const char *line);
void		log_set_sink(log_sink_fn fn, void *arg);

/*
 * text: "2026-11-28T16:24:24Z warn  worker0[12] [00000000000000a1] text"
 * json: {"time":"2026-11-28T16:24:24Z","level":"warn","proc":"worker0[12]",
 *        "session":"00000000000000a1","msg":"text"}
 * (id 0: no session field; no tag: no proc field)
 */
void	log_msg(enum log_level level, uint64_t id, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));

#define log_error(id, ...)	log_msg(LOG_ERROR, (id), __VA_ARGS__)
#define log_warn(id, ...)	log_msg(LOG_WARN, (id), __VA_ARGS__)
#define log_info(id, ...)	log_msg(LOG_INFO, (id), __VA_ARGS__)
#define log_debug(id, ...)	\
	do { if (log_get_level() >= LOG_DEBUG) log_msg(LOG_DEBUG, (id), __VA_ARGS__); } while (0)

/*
 * A record: "EVENT key=value key=value" in text (a value with a space,
 * a quote, a backslash, a control character or invalid UTF-8 is quoted and
 * escaped), {"event":"EVENT","key":value,...} in JSON.  A field that does
 * not fit is left out whole and the record gets "cut": true (text: "cut=1").
 * The format is the one set when log_rec_begin ran.
 */
struct log_rec {
	size_t	len;
	bool	json;
	bool	cut;
	bool	in_list;		/* JSON: inside the "rcpts" array */
	char	buf[LOG_LINE_MAX - 160];	/* room for the line's head */
};

void	log_rec_begin(struct log_rec *r, const char *event);
/* A string field; NULL: left out.  len: SIZE_MAX for strlen. */
void	log_rec_str(struct log_rec *r, const char *key, const char *val);
void	log_rec_strn(struct log_rec *r, const char *key, const char *val, size_t len);
/* A value known to be printable ASCII without space, '"' or '\\' (the engine's own words): no checks. */
void	log_rec_word(struct log_rec *r, const char *key, const char *val);
void	log_rec_uint(struct log_rec *r, const char *key, uint64_t val);
/* Milliseconds as seconds with 3 decimals: 1.234 (JSON: a number). */
void	log_rec_ms(struct log_rec *r, const char *key, uint64_t ms);
/* A recipient: text "to=<ADDRESS>:CODE/ENHANCED", JSON {"to":...,"code":...,"enhanced":...} in "rcpts". */
void	log_rec_rcpt(struct log_rec *r, const char *address, int code, const char *enhanced);
/* Writes the record as one line at level, if the level is logged. */
void	log_rec_emit(struct log_rec *r, enum log_level level, uint64_t id);

/*
 * Writes len octets of s as the inside of a JSON string into dst (cap
 * octets, no NUL added): '"', '\\' and control characters escaped, valid
 * UTF-8 kept, each invalid octet written as \ufffd.  Never splits an
 * escape; returns the octets written (a short count: dst was full).
 */
size_t	log_json_escape(char *dst, size_t cap, const char *s, size_t len);

/* The length of the valid UTF-8 sequence at s (1-4), or 0 if invalid (len: octets left). */
size_t	log_utf8_len(const unsigned char *s, size_t len);

#endif
