/*
 * log.h -- one line per event on stderr, with the session id when there is one.
 */
#ifndef LUASMTPD_LOG_H
#define LUASMTPD_LOG_H

#include <stdint.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void		log_set_level(enum log_level level);
enum log_level	log_get_level(void);
int		log_parse_level(const char *name, enum log_level *out);	/* 0 or -1 */

/* Where lines go; NULL restores stderr.  The Lua test harness captures with it. */
typedef void	(*log_sink_fn)(void *arg, enum log_level level, const char *line);
void		log_set_sink(log_sink_fn fn, void *arg);

/* "2026-11-28T16:24:24Z warn  [00000000000000a1] text" (id 0: no session field) */
void	log_msg(enum log_level level, uint64_t id, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));

#define log_error(id, ...)	log_msg(LOG_ERROR, (id), __VA_ARGS__)
#define log_warn(id, ...)	log_msg(LOG_WARN, (id), __VA_ARGS__)
#define log_info(id, ...)	log_msg(LOG_INFO, (id), __VA_ARGS__)
#define log_debug(id, ...)	\
	do { if (log_get_level() >= LOG_DEBUG) log_msg(LOG_DEBUG, (id), __VA_ARGS__); } while (0)

#endif
