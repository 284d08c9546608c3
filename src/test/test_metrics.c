/*
 * test_metrics.c -- the shared metrics and their text format: counts of
 * several workers summed, a reaped worker's counts kept (folded into the
 * retired sums) while its gauges go, a worker in another process, the
 * histogram's cumulative buckets, the fixed label sets, and the HELP/TYPE
 * lines.  Workers are played by attaching to one slot after the other, and
 * once by a forked child.
 */
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"
#include "tap.h"

/* The value of the sample line "series VALUE" in text, or -1 if none. */
static double
value(const char *text, const char *series)
{
	size_t		 n = strlen(series);
	const char	*p = text;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	return -1;
}

static char *
scrape(void)
{
	size_t	 len = 0;
	char	*t = metrics_render(&len);

	CHECK(t != NULL && strlen(t) == len);
	return t;
}

static void
test_labels(void)
{
	CHECK_INT(metrics_verb("MAIL"), MV_MAIL);
	CHECK_INT(metrics_verb("rcpt"), MV_RCPT);
	CHECK_INT(metrics_verb("STARTTLS"), MV_STARTTLS);
	CHECK_INT(metrics_verb("XCLIENT"), MV_XCLIENT);
	CHECK_INT(metrics_verb("X-EVIL\"}"), MV_OTHER);
	CHECK_INT(metrics_verb(NULL), MV_OTHER);
	CHECK_INT(metrics_handler("RCPT"), MH_RCPT);
	CHECK_INT(metrics_handler("DATA"), MH_DATA);
	CHECK_INT(metrics_handler("data"), MH_MESSAGE_DATA);
	CHECK_INT(metrics_handler("DATA_END"), MH_DATA_END);
	CHECK_INT(metrics_handler("timer"), MH_TIMER);
	CHECK_INT(metrics_handler("RCPT"), MH_RCPT);	/* again: from the cache */
	CHECK_INT(metrics_handler("nonsense"), MH_OTHER);
	{
		static const char *const what[MH_OTHER] = {
			"CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "DATA_END",
			"RSET", "QUIT", "VRFY", "EXPN", "AUTH", "data", "abort",
			"outcome", "cancel", "close", "bind", "timer", "start", "redis",
		};

		for (int i = 0; i < MH_OTHER; i++)
			CHECK_MSG(metrics_handler(what[i]) == (enum metrics_handler)i, "%s", what[i]);
	}
	CHECK_INT(metrics_handler("D"), MH_OTHER);
	CHECK_INT(metrics_handler(""), MH_OTHER);
	CHECK_INT(metrics_handler("DATAX"), MH_OTHER);
	CHECK_INT(metrics_handler(NULL), MH_OTHER);
}

static void
test_workers(void)
{
	int	 a, b, c;
	char	*t;
	pid_t	 pid;
	int	 status;

	CHECK(metrics_map(4) == 0);
	a = metrics_slot_take(0);
	b = metrics_slot_take(1);
	CHECK(a >= 0 && b >= 0 && a != b);

	metrics_attach(a);
	metrics_count(M_CONNECTIONS);
	metrics_open(1);
	metrics_command(MV_MAIL);
	metrics_reply(MV_MAIL, 250);
	metrics_reply(MR_DATA_END, 550);
	metrics_message(MM_ACCEPTED, 100);
	metrics_handler_time(MH_RCPT, 70000);		/* 70 us */
	metrics_own->lua_bytes = 1000;

	metrics_attach(b);
	metrics_count(M_CONNECTIONS);
	metrics_count(M_CONNECTIONS);
	metrics_open(1);
	metrics_open(1);
	metrics_command(MV_MAIL);
	metrics_command(MV_OTHER);
	metrics_reply(MV_DATA, 354);
	metrics_message(MM_ACCEPTED, 20);
	metrics_message(MM_FAILED, 7);
	metrics_handler_time(MH_RCPT, 3000000000u);	/* 3 s */
	metrics_own->lua_bytes = 2000;
	metrics_master_count(MX_RESTARTS);

	t = scrape();
	CHECK(strstr(t, "# HELP luasmtpd_connections_total ") != NULL);
	CHECK(strstr(t, "# TYPE luasmtpd_connections_total counter\n") != NULL);
	CHECK(strstr(t, "# TYPE luasmtpd_connections_open gauge\n") != NULL);
	CHECK(strstr(t, "# TYPE luasmtpd_handler_seconds histogram\n") != NULL);
	CHECK(value(t, "luasmtpd_connections_total") == 3);
	CHECK(value(t, "luasmtpd_connections_open") == 3);
	CHECK(value(t, "luasmtpd_commands_total{verb=\"mail\"}") == 2);
	CHECK(value(t, "luasmtpd_commands_total{verb=\"other\"}") == 1);
	CHECK(value(t, "luasmtpd_commands_total{verb=\"rcpt\"}") == 0);
	CHECK(value(t, "luasmtpd_replies_total{event=\"mail\",class=\"2xx\"}") == 1);
	CHECK(value(t, "luasmtpd_replies_total{event=\"data\",class=\"3xx\"}") == 1);
	CHECK(value(t, "luasmtpd_replies_total{event=\"data_end\",class=\"5xx\"}") == 1);
	CHECK(value(t, "luasmtpd_messages_total{result=\"accepted\"}") == 2);
	CHECK(value(t, "luasmtpd_messages_total{result=\"failed\"}") == 1);
	CHECK(value(t, "luasmtpd_message_octets_total{result=\"accepted\"}") == 120);
	CHECK(value(t, "luasmtpd_message_octets_total{result=\"failed\"}") == 7);
	/* cumulative buckets: 70 us is in 0.0001 and above, 3 s in 5 and above */
	CHECK(value(t, "luasmtpd_handler_seconds_bucket{event=\"rcpt\",le=\"5e-05\"}") == 0);
	CHECK(value(t, "luasmtpd_handler_seconds_bucket{event=\"rcpt\",le=\"0.0001\"}") == 1);
	CHECK(value(t, "luasmtpd_handler_seconds_bucket{event=\"rcpt\",le=\"2.5\"}") == 1);
	CHECK(value(t, "luasmtpd_handler_seconds_bucket{event=\"rcpt\",le=\"5\"}") == 2);
	CHECK(value(t, "luasmtpd_handler_seconds_bucket{event=\"rcpt\",le=\"+Inf\"}") == 2);
	CHECK(value(t, "luasmtpd_handler_seconds_count{event=\"rcpt\"}") == 2);
	CHECK(value(t, "luasmtpd_handler_seconds_sum{event=\"rcpt\"}") == 3.00007);
	CHECK(value(t, "luasmtpd_handler_seconds_count{event=\"mail\"}") == 0);
	CHECK(strstr(t, "luasmtpd_lua_memory_bytes{worker=\"0\",pid=\"") != NULL);
	CHECK(strstr(t, "luasmtpd_lua_memory_bytes{worker=\"1\",pid=\"") != NULL);
	CHECK(value(t, "luasmtpd_worker_restarts_total") == 1);
	CHECK(value(t, "luasmtpd_reloads_total{result=\"success\"}") == 0);
	free(t);

	/* worker a is reaped: its counts stay, its gauges go */
	metrics_slot_retire(a);
	t = scrape();
	CHECK(value(t, "luasmtpd_connections_total") == 3);
	CHECK(value(t, "luasmtpd_connections_open") == 2);
	CHECK(value(t, "luasmtpd_commands_total{verb=\"mail\"}") == 2);
	CHECK(value(t, "luasmtpd_handler_seconds_count{event=\"rcpt\"}") == 2);
	CHECK(strstr(t, "luasmtpd_lua_memory_bytes{worker=\"0\",") == NULL);
	CHECK(strstr(t, "luasmtpd_lua_memory_bytes{worker=\"1\",") != NULL);
	free(t);
	metrics_slot_retire(a);		/* twice: nothing more */

	/* a new worker in another process: its slot is clean, its counts seen */
	c = metrics_slot_take(0);
	CHECK(c >= 0);
	fflush(NULL);
	if ((pid = fork()) == 0) {
		metrics_attach(c);
		metrics_count(M_CONNECTIONS);
		metrics_count(M_HANDLER_ERRORS);
		metrics_open(1);
		_exit(0);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
	metrics_attach(b);
	t = scrape();
	CHECK(value(t, "luasmtpd_connections_total") == 4);
	CHECK(value(t, "luasmtpd_handler_errors_total") == 1);
	CHECK(value(t, "luasmtpd_connections_open") == 3);	/* it did not close it */
	free(t);
	metrics_slot_retire(c);		/* reaped */
	t = scrape();
	CHECK(value(t, "luasmtpd_connections_total") == 4);
	CHECK(value(t, "luasmtpd_handler_errors_total") == 1);
	CHECK(value(t, "luasmtpd_connections_open") == 2);
	free(t);

	/* every slot in use: none to hand out */
	CHECK(metrics_slot_take(2) >= 0);
	CHECK(metrics_slot_take(3) >= 0);
	CHECK(metrics_slot_take(4) >= 0);
	CHECK(metrics_slot_take(5) == -1);
	metrics_unmap();
}

/* Before any map (the harness, the validating load): a private slot, rendered alone. */
static void
test_private(void)
{
	char *t;

	metrics_attach(-1);
	metrics_count(M_AUTH_FAILED);
	t = scrape();
	CHECK(value(t, "luasmtpd_auth_total{result=\"failure\"}") == 1);
	CHECK(value(t, "luasmtpd_auth_total{result=\"success\"}") == 0);
	CHECK(value(t, "luasmtpd_worker_restarts_total") == 0);
	free(t);
}

int
main(void)
{
	test_labels();
	test_workers();
	test_private();
	return tap_done();
}
