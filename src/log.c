/*
 * log.c -- formats log lines and hands them to the sink (stderr by default).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

static enum log_level	 current_level = LOG_INFO;
static log_sink_fn	 sink_fn;
static void		*sink_arg;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

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

int
log_parse_level(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

void
log_set_sink(log_sink_fn fn, void *arg)
{
	sink_fn = fn;
	sink_arg = arg;
}

void
log_msg(enum log_level level, uint64_t id, const char *fmt, ...)
{
	char		 line[2048];
	char		 stamp[32];
	struct tm	 tm;
	time_t		 now;
	va_list		 ap;
	int		 n;

	if (level > current_level)
		return;
	now = time(NULL);
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (id != 0)
		n = snprintf(line, sizeof(line), "%s %-5s [%016llx] ", stamp,
		    level_names[level], (unsigned long long)id);
	else
		n = snprintf(line, sizeof(line), "%s %-5s ", stamp,
		    level_names[level]);
	if (n < 0 || (size_t)n >= sizeof(line))	/* never an offset past the end */
		n = 0;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* a log line never spans lines: a client's bytes cannot forge entries */
	for (char *p = line; *p != '\0'; p++)
		if (*p == '\n' || *p == '\t')
			*p = ' ';
		else if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	if (sink_fn != NULL)
		sink_fn(sink_arg, level, line);
	else
		fprintf(stderr, "%s\n", line);
}
