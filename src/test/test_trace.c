/*
 * test_trace.c -- the Received field's shape and folding, added header
 * fields (checks, folding, bounds), and the count of Received fields over
 * every split of the input.
 */
#include <stdlib.h>
#include <string.h>

#include "trace.h"
#include "tap.h"

static bool
lines_within(const char *buf, size_t max)
{
	const char *p = buf, *e;

	while ((e = strstr(p, "\r\n")) != NULL) {
		if ((size_t)(e - p) > max)
			return false;
		p = e + 2;
	}
	return *p == '\0';
}

static void
test_protocol(void)
{
	CHECK_STR(trace_protocol(false, false, false, false), "SMTP");
	CHECK_STR(trace_protocol(false, true, false, false), "ESMTP");
	CHECK_STR(trace_protocol(false, true, true, false), "ESMTPS");
	CHECK_STR(trace_protocol(false, true, false, true), "ESMTPA");
	CHECK_STR(trace_protocol(false, true, true, true), "ESMTPSA");
	CHECK_STR(trace_protocol(true, true, true, false), "LMTPS");
	CHECK_STR(trace_protocol(true, false, false, false), "LMTP");
}

static void
test_received(void)
{
	char	buf[TRACE_RECEIVED_MAX], longname[400];
	size_t	n;
	struct trace_received r = {
		.helo = "client.example", .reverse = "mail.client.example",
		.addr = "192.0.2.1", .by = "mx.example.org", .protocol = "ESMTPS",
		.id = 0x1234abcd, .rcpt = "bob@example.org", .when = 1764662400,
	};

	n = trace_received(buf, sizeof(buf), &r);
	CHECK(n == strlen(buf));
	CHECK_STR(buf, "Received: from client.example (mail.client.example [192.0.2.1])\r\n"
	    "\tby mx.example.org (luasmtpd) with ESMTPS id 000000001234abcd\r\n"
	    "\tfor <bob@example.org>; Tue, 02 Dec 2025 08:00:00 +0000\r\n");
	/* no reverse name, IPv6, no single recipient */
	r.reverse = NULL;
	r.addr = "2001:db8::1";
	r.rcpt = NULL;
	n = trace_received(buf, sizeof(buf), &r);
	CHECK_STR(buf, "Received: from client.example ([IPv6:2001:db8::1])\r\n"
	    "\tby mx.example.org (luasmtpd) with ESMTPS id 000000001234abcd;\r\n"
	    "\tTue, 02 Dec 2025 08:00:00 +0000\r\n");
	CHECK(lines_within(buf, TRACE_FOLD));
	/* a HELO name that would break the field: its octets replaced, bounded */
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	longname[3] = '(';
	longname[4] = ';';
	r.helo = longname;
	n = trace_received(buf, sizeof(buf), &r);
	CHECK(n > 0 && strstr(buf, "from aaa??aaa") != NULL);
	CHECK(strchr(buf, '(') == strstr(buf, "([IPv6"));
	CHECK(lines_within(buf, TRACE_LINE_MAX));
	r.helo = "x y\r\nInjected: yes";
	trace_received(buf, sizeof(buf), &r);
	CHECK(strstr(buf, "\r\nInjected") == NULL && strstr(buf, "from x?y??Injected") != NULL);
	/* a unix socket's client: no address */
	r.helo = "h";
	r.addr = "unknown";
	trace_received(buf, sizeof(buf), &r);
	CHECK(strncmp(buf, "Received: from h by ", 20) == 0);
	CHECK(trace_received(buf, 40, &r) == 0);	/* does not fit */
}

static void
test_header_add(void)
{
	char		 buf[256], big[1200];
	size_t		 len = 0;
	const char	*why;
	const char	*v = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";

	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "b", 1, &why) == 0);
	CHECK(len == 8 && memcmp(buf, "X-A: b\r\n", 8) == 0);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-B", 3, v, strlen(v), &why) == 0);
	buf[len] = '\0';
	CHECK_STR(buf, "X-A: b\r\nX-B: one two three four five six seven eight nine ten eleven twelve thirteen\r\n"
	    " fourteen\r\n");
	CHECK(lines_within(buf, TRACE_FOLD));
	len = 0;
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-E", 3, "", 0, &why) == 0);
	CHECK(len == 6 && memcmp(buf, "X-E:\r\n", 6) == 0);
	/* injection and bad names */
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "a\r\nB: c", 7, &why) == -1);
	CHECK(strstr(why, "CR or LF") != NULL);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "a\nb", 3, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "a\rb", 3, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "a\0b", 3, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, "a\tb", 3, &why) == 0);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X A", 3, "b", 1, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X:A", 3, "b", 1, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "", 0, "b", 1, &why) == -1);
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X\nA", 3, "b", 1, &why) == -1);
	/* bounds: the buffer, and a word longer than a line may be */
	len = 0;
	memset(big, 'w', sizeof(big));
	CHECK(trace_header_add(buf, &len, sizeof(buf), "X-A", 3, big, 300, &why) == -2);
	CHECK(len == 0);
	{
		char	*huge = malloc(4096);
		size_t	 hl = 0;

		CHECK(trace_header_add(huge, &hl, 4096, "X-A", 3, big, sizeof(big), &why) == -2);
		CHECK(trace_header_add(huge, &hl, 4096, "X-A", 3, big, 990, &why) == 0);
		free(huge);
	}
}

/* Counts msg fed in two pieces split at every offset, and in single octets. */
static bool
count_splits(const char *msg, unsigned want, bool done)
{
	size_t	n = strlen(msg);

	for (size_t cut = 0; cut <= n; cut++) {
		struct trace_hops h;

		trace_hops_init(&h);
		trace_hops_feed(&h, msg, cut);
		trace_hops_feed(&h, msg + cut, n - cut);
		if (h.count != want || trace_hops_done(&h) != done)
			return false;
	}
	{
		struct trace_hops h;

		trace_hops_init(&h);
		for (size_t i = 0; i < n; i++)
			trace_hops_feed(&h, msg + i, 1);
		return h.count == want && trace_hops_done(&h) == done;
	}
}

static void
test_hops(void)
{
	CHECK(count_splits("Received: a\r\nreceived:b\r\nRECEIVED  :c\r\n\r\nReceived: body\r\n", 3, true));
	/* continuation lines, other fields, names that only start alike */
	CHECK(count_splits("Received: a\r\n Received: folded\r\n\tReceived: x\r\n"
	    "X-Received: y\r\nReceivedx: z\r\nReceive: w\r\nSubject: Received: s\r\n\r\n", 1, true));
	/* no empty line: the whole text is the header section */
	CHECK(count_splits("Received: a\r\nReceived: b", 2, false));
	CHECK(count_splits("\r\nReceived: a\r\n", 0, true));
	CHECK(count_splits("", 0, false));
	/* "Received" without a colon on its line */
	CHECK(count_splits("Received\r\n: a\r\n\r\n", 0, true));
	{
		struct trace_hops	 h;
		char			*many = malloc(200 * 14 + 1);

		for (int i = 0; i < 200; i++)
			memcpy(many + i * 14, "Received: x\r\n\r", 14);
		many[200 * 14] = '\0';
		trace_hops_init(&h);
		trace_hops_feed(&h, many, strlen(many));
		CHECK(h.count == 1 && trace_hops_done(&h) == false);	/* "\r" then "Received": a bare CR line */
		free(many);
	}
}

int
main(void)
{
	test_protocol();
	test_received();
	test_header_add();
	test_hops();
	return tap_done();
}
