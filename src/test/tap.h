/*
 * tap.h -- a header-only Test Anything Protocol helper for the C tests.
 *
 * Each check prints "ok N - what" or "not ok N - what" (a failure adds
 * "# " diagnostic lines on stdout; control octets in descriptions and
 * strings are shown as \xNN so one check stays one line); tap_done() prints
 * the plan "1..N" and returns the exit status (0 only if all checks passed).  One test program = one
 * translation unit including this header:
 *
 *	int
 *	main(void)
 *	{
 *		CHECK(1 + 1 == 2);
 *		CHECK_STR(strerror(0), "Success");
 *		CHECK_INT(atoi("42"), 42);
 *		return tap_done();
 *	}
 */
#ifndef LUASMTPD_TAP_H
#define LUASMTPD_TAP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static unsigned	tap_count_;
static unsigned	tap_failed_;

/*
 * Prints text on the current line with what would break TAP escaped: a
 * control or non-ASCII octet as \xNN, "#" (a directive) as "\#".
 */
static inline void
tap_put_escaped(const char *text, bool hash)
{
	const unsigned char	*p;

	for (p = (const unsigned char *)text; *p != '\0'; p++) {
		if (*p < 0x20 || *p >= 0x7f)
			printf("\\x%02x", *p);
		else if (*p == '#' && hash)
			fputs("\\#", stdout);
		else
			putchar(*p);
	}
}

static inline void
tap_vput(const char *fmt, va_list ap, bool hash)
{
	char	buf[1024];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	tap_put_escaped(buf, hash);
}

/* Records one result; returns ok so callers can add diagnostics on failure. */
static inline bool
tap_result(bool ok, const char *file, int line, const char *fmt, ...)
{
	va_list	ap;

	tap_count_++;
	if (!ok)
		tap_failed_++;
	printf("%sok %u - ", ok ? "" : "not ", tap_count_);
	va_start(ap, fmt);
	tap_vput(fmt, ap, true);
	va_end(ap);
	putchar('\n');
	if (!ok)
		printf("#   failed at %s:%d\n", file, line);
	fflush(stdout);
	return ok;
}

/* Prints a diagnostic line ("# ..."), e.g. to name the table row under test. */
static inline void
tap_diag(const char *fmt, ...)
{
	va_list	ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	tap_vput(fmt, ap, false);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static inline bool
tap_check_str(const char *got, const char *want, const char *file, int line,
    const char *what)
{
	bool	ok;

	ok = (got == NULL && want == NULL) ||
	    (got != NULL && want != NULL && strcmp(got, want) == 0);
	if (!tap_result(ok, file, line, "%s", what)) {
		fputs("#        got: ", stdout);
		if (got != NULL) {
			putchar('"');
			tap_put_escaped(got, false);
			putchar('"');
		} else
			fputs("NULL", stdout);
		fputs("\n#   expected: ", stdout);
		if (want != NULL) {
			putchar('"');
			tap_put_escaped(want, false);
			putchar('"');
		} else
			fputs("NULL", stdout);
		putchar('\n');
	}
	return ok;
}

static inline bool
tap_check_int(long long got, long long want, const char *file, int line,
    const char *what)
{
	bool	ok = got == want;

	if (!tap_result(ok, file, line, "%s", what)) {
		printf("#        got: %lld\n", got);
		printf("#   expected: %lld\n", want);
	}
	return ok;
}

/* Prints the plan; returns the exit status for main(). */
static inline int
tap_done(void)
{
	printf("1..%u\n", tap_count_);
	if (tap_failed_ > 0)
		printf("# failed %u of %u\n", tap_failed_, tap_count_);
	fflush(stdout);
	return tap_failed_ > 0 ? 1 : 0;
}

/* Each returns true when the check passed. */
#define CHECK(expr)							\
	tap_result((expr) ? true : false, __FILE__, __LINE__, "%s", #expr)
/* Like CHECK with a printf-style description instead of the expression. */
#define CHECK_MSG(expr, ...)						\
	tap_result((expr) ? true : false, __FILE__, __LINE__, __VA_ARGS__)
/* Compares two C strings (either may be NULL); shows both on failure. */
#define CHECK_STR(a, b)							\
	tap_check_str((a), (b), __FILE__, __LINE__, #a " == " #b)
/* Compares two integers; shows both on failure. */
#define CHECK_INT(a, b)							\
	tap_check_int((long long)(a), (long long)(b), __FILE__, __LINE__,	\
	    #a " == " #b)

#endif
