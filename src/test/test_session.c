/*
 * test_session.c -- the protocol engine driven byte by byte, with a policy
 * that accepts, rejects or waits per event, and a transport that records.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "reply.h"
#include "session.h"
#include "tap.h"

struct harness {
	struct session_config	 cfg;
	struct session		*s;
	char			 out[65536];	/* replies not yet taken */
	size_t			 out_len;
	char			 data[65536];	/* message data handed to the policy */
	size_t			 data_len;
	char			 held[65536];	/* input the engine did not take yet */
	size_t			 held_len;
	int			 asked[SEV_COUNT];
	int			 outcome[SEV_COUNT];	/* last code per event */
	bool			 wait[SEV_COUNT];	/* answer HOOK_WAIT */
	struct verdict		 answer[SEV_COUNT];	/* else answer this */
	int			 aborts;
	enum session_abort	 last_abort;
	int			 cancels;
	bool			 closed;
	int			 starttls;	/* io->starttls calls */
	bool			 pause_on_data;
	char			 auth_user[64], auth_pass[64], auth_method[8];
	unsigned		 timer_ms;
	char			 mail_from[300];
	unsigned		 serial;	/* of the last MAIL/RCPT asked */
	const char		*add_name, *add_value;	/* session_add_header at SEV_DATA */
	int			 add_rc;
};

static void
io_write(void *ctx, const char *buf, size_t len)
{
	struct harness *h = ctx;

	if (!CHECK(!h->closed && h->out_len + len < sizeof(h->out)))
		return;
	memcpy(h->out + h->out_len, buf, len);
	h->out_len += len;
}

static void
io_close(void *ctx)
{
	((struct harness *)ctx)->closed = true;
}

static void	feed_held(struct harness *);

static void
io_wake(void *ctx)
{
	feed_held(ctx);
}

static void
io_timer(void *ctx, unsigned ms)
{
	((struct harness *)ctx)->timer_ms = ms;
}

static void
io_starttls(void *ctx)
{
	((struct harness *)ctx)->starttls++;
}

static const struct session_io harness_io = {
	io_write, io_close, io_wake, io_timer, io_starttls, NULL,
};

static enum hook_result
hook_ask(void *ctx, struct session *s, enum session_event ev,
    const struct session_event_args *a, struct verdict *v)
{
	struct harness *h = ctx;

	h->asked[ev]++;
	if (ev == SEV_MAIL)
		snprintf(h->mail_from, sizeof(h->mail_from), "%s", a->path->address);
	if (ev == SEV_MAIL || ev == SEV_RCPT)
		h->serial = a->serial;
	if (ev == SEV_AUTH) {
		snprintf(h->auth_user, sizeof(h->auth_user), "%s", a->auth->username);
		snprintf(h->auth_pass, sizeof(h->auth_pass), "%s", a->auth->password);
		snprintf(h->auth_method, sizeof(h->auth_method), "%s", a->auth->method);
	}
	if (ev == SEV_DATA && h->add_name != NULL) {
		const char *why;

		h->add_rc = session_add_header(s, h->add_name, strlen(h->add_name),
		    h->add_value, strlen(h->add_value), &why);
	}
	if (h->wait[ev])
		return HOOK_WAIT;
	*v = h->answer[ev];
	return HOOK_DONE;
}

static void
hook_cancel(void *ctx, struct session *s, enum session_event ev)
{
	(void)s;
	(void)ev;
	((struct harness *)ctx)->cancels++;
}

static void
hook_outcome(void *ctx, struct session *s, enum session_event ev, int code)
{
	(void)s;
	((struct harness *)ctx)->outcome[ev] = code;
}

static void
hook_data(void *ctx, struct session *s, const char *buf, size_t len)
{
	struct harness *h = ctx;

	if (CHECK(h->data_len + len < sizeof(h->data))) {
		memcpy(h->data + h->data_len, buf, len);
		h->data_len += len;
	}
	if (h->pause_on_data)
		session_pause(s);
}

static void
hook_abort(void *ctx, struct session *s, enum session_abort why)
{
	struct harness *h = ctx;

	(void)s;
	h->aborts++;
	h->last_abort = why;
}

static const struct session_hooks harness_hooks = {
	hook_ask, hook_cancel, hook_outcome, hook_data, hook_abort, NULL,
};

static struct harness *
harness_new(void (*configure)(struct session_config *))
{
	struct harness *h = calloc(1, sizeof(*h));

	session_config_init(&h->cfg);
	h->cfg.hostname = "test.example";
	h->cfg.received_header = false;	/* the data as sent; test_trace turns it on */
	for (int ev = 0; ev < SEV_COUNT; ev++)
		h->answer[ev].accept = true;
	if (configure != NULL)
		configure(&h->cfg);
	return h;
}

static void
harness_start(struct harness *h)
{
	h->s = session_create(&h->cfg, &harness_hooks, h, &harness_io, h, NULL);
}

static void
harness_free(struct harness *h)
{
	session_destroy(h->s);
	free(h);
}

/* Feeds bytes; what the engine does not take is held until it wakes us. */
static void
feed_len(struct harness *h, const char *buf, size_t len)
{
	size_t used;

	if (h->held_len > 0) {
		memcpy(h->held + h->held_len, buf, len);
		h->held_len += len;
		feed_held(h);
		return;
	}
	used = session_feed(h->s, buf, len);
	memcpy(h->held, buf + used, len - used);
	h->held_len = len - used;
}

static void
feed_held(struct harness *h)
{
	size_t used = session_feed(h->s, h->held, h->held_len);

	memmove(h->held, h->held + used, h->held_len - used);
	h->held_len -= used;
}

static void
feed(struct harness *h, const char *text)
{
	feed_len(h, text, strlen(text));
}

/* a string literal that holds NUL octets */
#define FEED_LIT(h, lit)	feed_len((h), (lit), sizeof(lit) - 1)

/* Returns and clears the replies written so far. */
static const char *
take(struct harness *h)
{
	static char buf[sizeof(((struct harness *)0)->out) + 1];

	memcpy(buf, h->out, h->out_len);
	buf[h->out_len] = '\0';
	h->out_len = 0;
	return buf;
}

static struct harness *
started_with_ehlo(void (*configure)(struct session_config *))
{
	struct harness *h = harness_new(configure);

	harness_start(h);
	take(h);
	feed(h, "EHLO client.example\r\n");
	take(h);
	return h;
}

/* --- tests -------------------------------------------------------------- */

static void	in_transaction(struct harness *);

static void
test_greeting_and_ehlo(void)
{
	struct harness *h = harness_new(NULL);

	harness_start(h);
	CHECK_STR(take(h), "220 test.example ESMTP\r\n");
	CHECK(h->asked[SEV_CONNECT] == 1);
	feed(h, "EHLO client.example\r\n");
	CHECK_STR(take(h), "250-test.example\r\n250-PIPELINING\r\n250-SIZE\r\n"
	    "250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-DSN\r\n"
	    "250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n");
	feed(h, "HELO client.example\r\n");
	CHECK_STR(take(h), "250 test.example\r\n");
	feed(h, "noop\r\n");
	CHECK_STR(take(h), "250 2.0.0 Ok\r\n");
	harness_free(h);
}

static void
only_size_limit(struct session_config *cfg)
{
	cfg->extensions = EXT_SIZE;
	cfg->max_size = 1000;
}

static void
test_extensions_off(void)
{
	struct harness *h = harness_new(only_size_limit);

	harness_start(h);
	take(h);
	feed(h, "EHLO client.example\r\n");
	CHECK_STR(take(h), "250-test.example\r\n250 SIZE 1000\r\n");
	feed(h, "MAIL FROM:<a@b.example>\r\n");
	CHECK_STR(take(h), "250 Sender ok\r\n");	/* no enhanced codes */
	feed(h, "RSET\r\nMAIL FROM:<a@b.example> BODY=8BITMIME\r\n");
	CHECK_STR(take(h), "250 Ok\r\n555 Unsupported parameter BODY\r\n");
	harness_free(h);
}

static void
test_transaction(void)
{
	struct harness *h = started_with_ehlo(NULL);

	feed(h, "MAIL FROM:<alice@a.example>\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	CHECK_STR(h->mail_from, "alice@a.example");
	feed(h, "RCPT TO:<bob@b.example>\r\n");
	CHECK_STR(take(h), "250 2.1.5 Recipient ok\r\n");
	feed(h, "DATA\r\n");
	CHECK_STR(take(h), "354 End data with <CR><LF>.<CR><LF>\r\n");
	feed(h, "Subject: hi\r\n\r\n..leading dot\r\n.\r\n");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	h->data[h->data_len] = '\0';
	CHECK_STR(h->data, "Subject: hi\r\n\r\n.leading dot\r\n");
	CHECK(h->outcome[SEV_DATA_END] == 250);
	/* the session is ready for the next transaction */
	feed(h, "MAIL FROM:<>\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	CHECK_STR(h->mail_from, "");
	feed(h, "QUIT\r\nNOOP\r\n");
	CHECK_STR(take(h), "221 2.0.0 Bye\r\n");
	CHECK(h->closed);
	harness_free(h);
}

static void
test_sequence(void)
{
	struct harness *h = harness_new(NULL);

	harness_start(h);
	take(h);
	feed(h, "MAIL FROM:<a@b.example>\r\n");
	CHECK_STR(take(h), "503 5.5.1 Send HELO/EHLO first\r\n");
	feed(h, "ehlo x.example\r\nrcpt to:<a@b.example>\r\n");
	CHECK_STR(strstr(take(h), "503"), "503 5.5.1 Bad sequence of commands: Need MAIL before RCPT\r\n");
	feed(h, "DATA\r\n");
	CHECK_STR(take(h), "503 5.5.1 Bad sequence of commands: Need MAIL and RCPT before DATA\r\n");
	feed(h, "Mail From:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n503 5.5.1 Nested MAIL command\r\n"
	    "503 5.5.1 Need RCPT before DATA\r\n");
	feed(h, "RSET\r\nRCPT TO:<a@b.example>\r\n");
	CHECK_STR(take(h), "250 2.0.0 Ok\r\n503 5.5.1 Bad sequence of commands: Need MAIL before RCPT\r\n");
	harness_free(h);
}

static void
test_syntax_errors(void)
{
	struct harness *h = started_with_ehlo(NULL);

	feed(h, "FOO\r\n");
	CHECK_STR(take(h), "500 5.5.2 Command unrecognized\r\n");
	feed(h, "STARTTLS\r\n");
	CHECK_STR(take(h), "502 5.5.1 Command not implemented\r\n");
	feed(h, "HELO\r\n");
	CHECK_STR(take(h), "501 5.5.4 Syntax: HELO hostname\r\n");
	feed(h, "MAIL TO:<a@b.example>\r\n");
	CHECK_STR(take(h), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
	feed(h, "MAIL FROM:a@b.example\r\n");
	CHECK(strncmp(take(h), "501 5.1.7 Bad sender address syntax: ", 37) == 0);
	feed(h, "MAIL FROM:<a@b.example> FOO=bar\r\n");
	CHECK_STR(take(h), "555 5.5.4 Unsupported parameter FOO\r\n");
	feed(h, "MAIL FROM:<a@b.example> BODY=9BIT\r\n");
	CHECK_STR(take(h), "501 5.5.4 Bad BODY value\r\n");
	feed(h, "MAIL FROM:<a@b.example> BODY=8BITMIME SIZE=100\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	feed(h, "DATA extra\r\n");
	CHECK_STR(take(h), "501 5.5.4 Syntax: DATA\r\n");
	feed(h, "RCPT TO:<Postmaster>\r\n");
	CHECK_STR(take(h), "250 2.1.5 Recipient ok\r\n");
	harness_free(h);
}

static void
test_pipelining_in_order(void)
{
	struct harness *h = started_with_ehlo(NULL);

	h->answer[SEV_RCPT] = (struct verdict){ .accept = false };
	/* one write from the client: every reply in order, DATA last */
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
	    "RCPT TO:<c@b.example>\r\nDATA\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n"
	    "550 5.7.1 Recipient address rejected\r\n"
	    "550 5.7.1 Recipient address rejected\r\n"
	    "554 5.5.1 No valid recipients\r\n");
	harness_free(h);
}

static void
test_async_verdict_holds_later_commands(void)
{
	struct harness *h = started_with_ehlo(NULL);

	h->wait[SEV_RCPT] = true;
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\nNOOP\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	CHECK(h->held_len == strlen("RCPT TO:<c@b.example>\r\nNOOP\r\n"));
	CHECK(h->timer_ms == h->cfg.timeout_decision_ms);
	CHECK(session_decide(h->s, &(struct verdict){ false, 450,
	    "greylisted, try later" }) == 0);
	/* the second RCPT is asked again and waits in turn */
	CHECK_STR(take(h), "450 4.7.1 greylisted, try later\r\n");
	CHECK(h->asked[SEV_RCPT] == 2);
	CHECK(session_decide(h->s, &(struct verdict){ true, 0, NULL }) == 0);
	CHECK_STR(take(h), "250 2.1.5 Recipient ok\r\n250 2.0.0 Ok\r\n");
	CHECK(h->held_len == 0);
	CHECK(session_decide(h->s, &(struct verdict){ true, 0, NULL }) == -1);
	harness_free(h);
}

static void
test_verdict_validation(void)
{
	struct harness *h = started_with_ehlo(NULL);

	/* one wording for every policy failure, the one Lua errors get too */
	CHECK_STR(SESSION_POLICY_ERROR, "4.3.0 Local error in policy, try again later");
	h->answer[SEV_MAIL] = (struct verdict){ false, 250, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	h->answer[SEV_MAIL] = (struct verdict){ false, 550, "bad\r\ntext" };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	h->answer[SEV_MAIL] = (struct verdict){ false, 550, "4.7.1 wrong class" };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	h->answer[SEV_MAIL] = (struct verdict){ false, 553, "5.7.1 Relaying denied" };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "553 5.7.1 Relaying denied\r\n");
	h->answer[SEV_MAIL] = (struct verdict){ true, 0, "first\nsecond" };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "250-2.1.0 first\r\n250 2.1.0 second\r\n");
	CHECK(h->outcome[SEV_MAIL] == 250);
	h->answer[SEV_RSET] = (struct verdict){ false, 550, NULL };
	feed(h, "RSET\r\n");
	CHECK_STR(take(h), "250 2.0.0 Ok\r\n");	/* RSET cannot be refused */
	harness_free(h);
}

static void
test_size_limits(void)
{
	struct harness *h;

	h = started_with_ehlo(only_size_limit);
	h->cfg.extensions = EXT_ALL;
	feed(h, "MAIL FROM:<a@a.example> SIZE=1001\r\n");
	CHECK_STR(take(h), "552 5.3.4 Message size exceeds fixed limit\r\n");
	feed(h, "MAIL FROM:<a@a.example> SIZE=1000\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	for (int i = 0; i < 20; i++)
		feed(h, "0123456789012345678901234567890123456789012345678\r\n");
	CHECK(h->aborts == 1 && h->last_abort == ABORT_TOO_BIG);
	CHECK(h->data_len <= 1000);
	feed(h, ".\r\n");
	CHECK_STR(take(h), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
	CHECK(h->asked[SEV_DATA_END] == 0);
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	harness_free(h);
}

static void
test_line_limits(void)
{
	struct harness	*h = started_with_ehlo(NULL);
	char		 line[2048];

	/* 510 octets and CRLF is the longest command line (512) */
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	strcpy(line + 510, "\r\n");
	feed(h, line);
	CHECK_STR(take(h), "250 2.0.0 Ok\r\n");
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	strcpy(line + 511, "\r\n");
	feed(h, line);
	CHECK_STR(take(h), "500 5.5.2 Line too long\r\n");
	feed_len(h, "NOOP\0\r\n", 7);
	CHECK_STR(take(h), "500 5.5.2 Bare CR, LF or NUL in command line\r\n");
	feed(h, "NOOP\nNOOP\r\n");
	CHECK_STR(take(h), "500 5.5.2 Bare CR, LF or NUL in command line\r\n");
	feed(h, "NOOP\rNOOP\r\n");
	CHECK_STR(take(h), "500 5.5.2 Bare CR, LF or NUL in command line\r\n");

	/* text lines: 998 octets and CRLF pass, one more fails the message */
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	memset(line, 'y', sizeof(line));
	strcpy(line + 998, "\r\n");
	feed(h, line);
	CHECK(h->aborts == 0);
	/* a legal 998-octet line starting with "." is sent stuffed: 999 octets */
	memset(line, 'y', sizeof(line));
	line[0] = line[1] = '.';
	strcpy(line + 999, "\r\n");
	feed(h, line);
	CHECK(h->aborts == 0);
	CHECK(h->data_len == 2 * 1000 && h->data[1000] == '.' && h->data[1001] == 'y');
	memset(line, 'y', sizeof(line));
	line[0] = '.';
	strcpy(line + 999, "\r\n");
	feed(h, line);			/* "." and 998 octets: 998 after unstuffing */
	CHECK(h->aborts == 0);
	memset(line, 'y', sizeof(line));
	line[0] = '.';
	strcpy(line + 1000, "\r\n");
	feed(h, line);			/* 999 after unstuffing: one too many */
	CHECK(h->aborts == 1 && h->last_abort == ABORT_LINE_TOO_LONG);
	feed(h, ".\r\n");
	CHECK_STR(take(h), "550 5.6.0 Message has a line longer than 1000 octets\r\n");
	h->aborts = 0;

	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	memset(line, 'y', sizeof(line));
	strcpy(line + 999, "\r\n.\r\n");
	feed(h, line);
	CHECK(h->aborts == 1 && h->last_abort == ABORT_LINE_TOO_LONG);
	CHECK_STR(take(h), "550 5.6.0 Message has a line longer than 1000 octets\r\n");
	harness_free(h);
}

static void
few_errors(struct session_config *cfg)
{
	cfg->max_bad_commands = 3;
	cfg->max_recipients = 2;
}

static void
test_error_and_recipient_limits(void)
{
	struct harness *h = started_with_ehlo(few_errors);

	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
	    "RCPT TO:<c@b.example>\r\nRCPT TO:<d@b.example>\r\n");
	CHECK(strstr(take(h), "452 4.5.3 Too many recipients\r\n") != NULL);
	feed(h, "X\r\nY\r\n");
	CHECK(!h->closed);
	feed(h, "Z\r\nNOOP\r\n");
	CHECK_STR(take(h), "500 5.5.2 Command unrecognized\r\n500 5.5.2 Command unrecognized\r\n"
	    "500 5.5.2 Command unrecognized\r\n421 4.7.0 test.example Error: too many errors\r\n");
	CHECK(h->closed);
	harness_free(h);
}

/*
 * SMTP smuggling: an end of data that is not CRLF "." CRLF must never end the
 * data; the message fails, and the "smuggled" commands stay message text.
 */
static void
test_smuggling(void)
{
	static const char *const variants[] = {
		"\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\n.\r", "\r\n.\r",
		"\r.\r\n", "\r\n.\r\r\n",
	};

	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		struct harness	*h = started_with_ehlo(NULL);
		char		 msg[512];

		tap_diag("smuggling variant %zu", i);
		feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
		take(h);
		snprintf(msg, sizeof(msg), "Subject: one\r\n\r\nbody%s"
		    "MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@b.example>\r\n"
		    "DATA\r\nSubject: two\r\n", variants[i]);
		feed(h, msg);
		CHECK_STR(take(h), "");
		CHECK(h->asked[SEV_MAIL] == 1 && h->asked[SEV_DATA_END] == 0);
		CHECK(h->aborts == 1 && h->last_abort == ABORT_BARE_NEWLINE);
		feed(h, "\r\n.\r\n");
		CHECK_STR(take(h), "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n");
		CHECK(h->asked[SEV_MAIL] == 1 && h->asked[SEV_DATA_END] == 0);
		harness_free(h);
	}
}

/* The same transaction, fed one octet at a time, gives the same result. */
static void
test_split_anywhere(void)
{
	static const char script[] =
	    "EHLO c.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
	    "DATA\r\n.x\r\n..\r\na\r\n\r\n.\r\nQUIT\r\n";
	struct harness	*h = harness_new(NULL);
	static char	 whole[sizeof(h->out) + 1];

	harness_start(h);
	feed(h, script);
	strcpy(whole, take(h));
	harness_free(h);

	h = harness_new(NULL);
	harness_start(h);
	for (size_t i = 0; i < sizeof(script) - 1; i++)
		feed_len(h, script + i, 1);
	CHECK_STR(take(h), whole);
	h->data[h->data_len] = '\0';
	CHECK_STR(h->data, "x\r\n.\r\na\r\n\r\n");
	CHECK(h->closed);
	harness_free(h);
}

static void
test_timeouts(void)
{
	struct harness *h = started_with_ehlo(NULL);

	CHECK(h->timer_ms == h->cfg.timeout_command_ms);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	CHECK(h->timer_ms == h->cfg.timeout_data_ms);
	take(h);
	h->wait[SEV_DATA_END] = true;
	feed(h, "text\r\n.\r\nNOOP\r\n");
	CHECK(h->timer_ms == h->cfg.timeout_decision_ms);
	session_timeout(h->s);
	CHECK(h->cancels == 1);
	CHECK_STR(take(h), "451 4.3.0 Timed out waiting for a policy decision\r\n250 2.0.0 Ok\r\n");
	session_timeout(h->s);
	CHECK_STR(take(h), "421 4.4.2 test.example Error: timeout exceeded\r\n");
	CHECK(h->closed);
	harness_free(h);

	h = started_with_ehlo(NULL);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\npartial");
	session_timeout(h->s);
	CHECK(h->aborts == 1 && h->last_abort == ABORT_TIMEOUT);
	CHECK(h->closed);
	harness_free(h);
}

static void
test_refused_connection(void)
{
	struct harness *h = harness_new(NULL);

	h->answer[SEV_CONNECT] = (struct verdict){ .accept = false };
	harness_start(h);
	CHECK_STR(take(h), "554 5.7.1 test.example Access denied\r\n");
	feed(h, "EHLO x.example\r\nNOOP\r\nQUIT\r\n");
	CHECK_STR(take(h), "503 5.5.1 Bad sequence of commands: send QUIT\r\n"
	    "250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
	CHECK(h->closed);
	harness_free(h);

	h = harness_new(NULL);
	h->answer[SEV_CONNECT] = (struct verdict){ false, 450, "busy" };
	harness_start(h);
	CHECK_STR(take(h), "421 4.7.1 test.example busy\r\n");
	CHECK(h->closed);
	harness_free(h);
}

static void
test_smtputf8(void)
{
	struct harness *h = started_with_ehlo(NULL);

	feed(h, "MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc.example>\r\n");
	CHECK_STR(take(h), "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n");
	feed(h, "MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc.example> SMTPUTF8\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	feed(h, "RCPT TO:<m\xc3\xbcller@b\xc3\xbc.example>\r\n");
	CHECK_STR(take(h), "250 2.1.5 Recipient ok\r\n");
	harness_free(h);
}

static void
test_disconnect_and_pause(void)
{
	struct harness *h = started_with_ehlo(NULL);

	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nhalf a mess");
	session_eof(h->s);
	session_destroy(h->s);
	h->s = NULL;
	CHECK(h->aborts == 1 && h->last_abort == ABORT_DISCONNECT);
	CHECK(h->asked[SEV_DATA_END] == 0);
	harness_free(h);

	h = started_with_ehlo(NULL);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	h->pause_on_data = true;
	feed(h, "line one\r\n");
	feed(h, "line two\r\n.\r\n");
	CHECK(h->held_len == strlen("line two\r\n.\r\n"));
	h->pause_on_data = false;
	session_resume(h->s);
	CHECK(h->held_len == 0);
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	harness_free(h);
}

static void
tls_and_auth(struct session_config *cfg)
{
	cfg->starttls = true;
	cfg->auth_methods = AUTH_PLAIN | AUTH_LOGIN;
	cfg->max_auth_failures = 2;
}

static const struct session_tls test_tls = { "TLSv1.3", "TLS_AES_256_GCM_SHA384", "" };

/*
 * CVE-2011-0411: commands pipelined after STARTTLS in plaintext must never
 * run; after the handshake the session starts over.
 */
static void
test_starttls_discards_injected_plaintext(void)
{
	struct harness *h = started_with_ehlo(tls_and_auth);

	feed(h, "EHLO c.example\r\n");
	CHECK(strstr(take(h), "250-SMTPUTF8\r\n250 STARTTLS\r\n") != NULL);
	feed(h, "MAIL FROM:<a@a.example>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n220 2.0.0 Ready to start TLS\r\n");
	CHECK(h->starttls == 1 && h->held_len == 0);
	CHECK(h->asked[SEV_RSET] == 0 && h->asked[SEV_MAIL] == 1);
	feed(h, "NOOP\r\n");	/* still plaintext: dropped */
	CHECK_STR(take(h), "");
	session_tls_started(h->s, &test_tls);
	CHECK(session_tls(h->s) != NULL);
	CHECK_STR(session_tls(h->s)->version, "TLSv1.3");
	feed(h, "MAIL FROM:<a@a.example>\r\n");	/* HELO was forgotten */
	CHECK_STR(take(h), "503 5.5.1 Send HELO/EHLO first\r\n");
	feed(h, "EHLO c.example\r\n");
	{
		const char *r = take(h);

		CHECK(strstr(r, "STARTTLS") == NULL);
		CHECK(strstr(r, "250 AUTH PLAIN LOGIN\r\n") != NULL);
	}
	feed(h, "STARTTLS\r\n");
	CHECK_STR(take(h), "503 5.5.1 TLS already active\r\n");
	harness_free(h);
}

static void
test_auth(void)
{
	struct harness *h = started_with_ehlo(tls_and_auth);

	/* before TLS: not advertised, and refused with 538 */
	feed(h, "EHLO c.example\r\n");
	CHECK(strstr(take(h), "AUTH") == NULL);
	feed(h, "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
	CHECK_STR(take(h), "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
	CHECK(h->asked[SEV_AUTH] == 0);
	feed(h, "STARTTLS\r\n");
	take(h);
	session_tls_started(h->s, &test_tls);
	feed(h, "EHLO c.example\r\nAUTH CRAM-MD5\r\n");
	CHECK(strstr(take(h), "504 5.5.4 Unrecognized authentication type\r\n") != NULL);

	/* PLAIN with an initial response: "\0bob\0secret" */
	h->answer[SEV_AUTH] = (struct verdict){ .accept = false };
	feed(h, "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
	CHECK_STR(take(h), "535 5.7.8 Authentication credentials invalid\r\n");
	CHECK_STR(h->auth_user, "bob");
	CHECK_STR(h->auth_pass, "secret");
	CHECK(session_user(h->s) == NULL);

	/* LOGIN, step by step; "*" cancels */
	feed(h, "AUTH LOGIN\r\n");
	CHECK_STR(take(h), "334 VXNlcm5hbWU6\r\n");
	feed(h, "*\r\n");
	CHECK_STR(take(h), "501 5.0.0 Authentication cancelled\r\n");
	feed(h, "AUTH LOGIN\r\nYm9i\r\n!!!\r\n");
	CHECK_STR(take(h), "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n501 5.5.2 Invalid base64 data\r\n");
	h->answer[SEV_AUTH] = (struct verdict){ .accept = true };
	feed(h, "AUTH LOGIN\r\nYm9i\r\nc2VjcmV0\r\n");
	CHECK_STR(take(h), "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n");
	CHECK_STR(h->auth_method, "LOGIN");
	CHECK_STR(h->auth_pass, "secret");
	CHECK(session_user(h->s) != NULL && strcmp(session_user(h->s), "bob") == 0);
	feed(h, "AUTH PLAIN\r\n");
	CHECK_STR(take(h), "503 5.5.1 Already authenticated\r\n");
	feed(h, "MAIL FROM:<bob@a.example> AUTH=<>\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	harness_free(h);

	/* failed attempts are bounded */
	h = started_with_ehlo(tls_and_auth);
	h->cfg.auth_without_tls = true;
	h->answer[SEV_AUTH] = (struct verdict){ .accept = false };
	feed(h, "EHLO c.example\r\nAUTH PLAIN\r\nAGJvYgB4\r\nAUTH PLAIN AGJvYgB5\r\nNOOP\r\n");
	CHECK_STR(strstr(take(h), "334 \r\n"), "334 \r\n535 5.7.8 Authentication credentials invalid\r\n"
	    "535 5.7.8 Authentication credentials invalid\r\n"
	    "421 4.7.0 test.example Error: too many failed authentications\r\n");
	CHECK(h->closed);
	harness_free(h);
}


/*
 * A reply as the wire must carry it: lines of at most 512 octets ending in
 * CRLF, one code, "-" on all but the last, at most max_lines lines.
 */
static bool
reply_wellformed(const char *r, size_t max_lines)
{
	size_t		 lines = 0;
	const char	*eol;

	if (strlen(r) < 6)
		return false;
	for (; *r != '\0'; r = eol + 2) {
		if ((eol = strstr(r, "\r\n")) == NULL || eol - r + 2 > 512 ||
		    memchr(r, '\n', (size_t)(eol - r)) != NULL ||
		    memchr(r, '\r', (size_t)(eol - r)) != NULL || eol - r < 4)
			return false;
		lines++;
		if (r[3] != (eol[2] == '\0' ? ' ' : '-'))
			return false;
	}
	return lines <= max_lines;
}

/* n lines of width octets each (a letter per line), separated by '\n' */
static char *
text_lines(char *buf, size_t n, size_t width)
{
	char *p = buf;

	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			*p++ = '\n';
		memset(p, 'a' + (int)(i % 26), width);
		p += width;
	}
	*p = '\0';
	return buf;
}

static char	long_host[256];

static void
long_hostname(struct session_config *cfg)
{
	memset(long_host, 'h', 255);
	long_host[255] = '\0';
	for (size_t i = 63; i < 255; i += 64)
		long_host[i] = '.';
	cfg->hostname = long_host;
	tls_and_auth(cfg);
	cfg->auth_without_tls = true;
}

/*
 * The EHLO reply is the host name and the policy's text, then a line per
 * extension: a long text (4 KB, many lines) must neither overflow a buffer
 * nor make a reply longer than the wire allows.  What cannot be said is an
 * invalid verdict: 451 and a log line, never a cut or over-long reply.
 */
static void
test_long_policy_texts(void)
{
	static char	 text[REPLY_LINE_MAX * REPLY_LINES_MAX];
	struct harness	*h = harness_new(tls_and_auth);
	const char	*r;

	h->cfg.auth_without_tls = true;
	harness_start(h);
	take(h);
	/* 9 lines of 450 octets: about 4 KB, the size that crashed the worker */
	h->answer[SEV_EHLO] = (struct verdict){ true, 250, text_lines(text, 9, 450) };
	feed(h, "EHLO client.example\r\n");
	r = take(h);
	CHECK(reply_wellformed(r, REPLY_LINES_MAX));
	CHECK(strncmp(r, "250-test.example aaaa", 21) == 0);
	CHECK(strstr(r, "\r\n250-iiii") != NULL);
	CHECK(strstr(r, "\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n") != NULL);
	CHECK(strlen(r) > 4096);
	CHECK(session_user(h->s) == NULL && h->outcome[SEV_EHLO] == 250);

	/* 22 lines and 10 extensions fill the 32 lines a reply may have */
	h->answer[SEV_EHLO].text = text_lines(text, 22, 400);
	feed(h, "EHLO client.example\r\n");
	r = take(h);
	CHECK(reply_wellformed(r, REPLY_LINES_MAX));
	CHECK(strstr(r, "250 AUTH PLAIN LOGIN\r\n") != NULL);
	/* one more line, or a text as long as reply_valid_text() allows: 451 */
	h->answer[SEV_EHLO].text = text_lines(text, 23, 10);
	feed(h, "EHLO client.example\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	h->answer[SEV_EHLO].text = text_lines(text, REPLY_LINES_MAX, REPLY_LINE_MAX - 16);
	feed(h, "EHLO client.example\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	CHECK(h->outcome[SEV_EHLO] == 451);
	/* the same texts as a rejection or a HELO reply fit: no host name, no extensions */
	h->answer[SEV_HELO] = h->answer[SEV_EHLO];
	feed(h, "HELO client.example\r\n");
	r = take(h);
	CHECK(reply_wellformed(r, REPLY_LINES_MAX));
	CHECK(strlen(r) == REPLY_LINES_MAX * (4 + REPLY_LINE_MAX - 16 + 2));
	harness_free(h);

	/* a 255-octet host name: the first line has room for 240 more octets */
	h = harness_new(long_hostname);
	h->answer[SEV_CONNECT] = (struct verdict){ true, 220, text_lines(text, 2, 240) };
	harness_start(h);
	r = take(h);
	CHECK(reply_wellformed(r, 2));
	CHECK(strlen(r) == 4 + 255 + 1 + 240 + 2 + 4 + 240 + 2);	/* nothing cut */
	h->answer[SEV_EHLO] = (struct verdict){ true, 250, text_lines(text, 3, 240) };
	feed(h, "EHLO client.example\r\n");
	r = take(h);
	CHECK(reply_wellformed(r, REPLY_LINES_MAX));
	CHECK(strstr(r, "250 AUTH PLAIN LOGIN\r\n") != NULL);
	h->answer[SEV_EHLO].text = text_lines(text, 1, 241);
	feed(h, "EHLO client.example\r\n");
	CHECK_STR(take(h), "451 " SESSION_POLICY_ERROR "\r\n");
	harness_free(h);

	h = harness_new(long_hostname);
	h->answer[SEV_CONNECT] = (struct verdict){ false, 554, text_lines(text, 1, 400) };
	harness_start(h);
	r = take(h);			/* invalid: the greeting cannot say it */
	CHECK(reply_wellformed(r, 1));
	CHECK(strncmp(r, "421 4.3.0 hhh", 13) == 0);
	CHECK(strstr(r, " Local error in policy") != NULL);
	CHECK(h->closed);
	harness_free(h);
}

/* A NUL in message data fails the message like a bare CR or LF (RFC 6152). */
static void
test_nul_in_data(void)
{
	struct harness *h = started_with_ehlo(NULL);

	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	FEED_LIT(h, "Subject: x\r\n\r\nab\0cd\r\n.\0\r\nMAIL FROM:<evil@x.example>\r\n");
	CHECK(h->aborts == 1 && h->last_abort == ABORT_NUL);
	CHECK_STR(take(h), "");
	feed(h, ".\r\n");
	CHECK_STR(take(h), "550 5.6.0 Message contains a NUL octet (RFC 6152)\r\n");
	CHECK(h->asked[SEV_DATA_END] == 0 && h->asked[SEV_MAIL] == 1);
	/* a NUL right after a stuffing dot, or at a line start */
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	FEED_LIT(h, "x\r\n.\0\r\n.\r\n");
	CHECK(h->aborts == 2 && h->last_abort == ABORT_NUL);
	CHECK_STR(take(h), "550 5.6.0 Message contains a NUL octet (RFC 6152)\r\n");
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	FEED_LIT(h, "\0\r\n.\r\n");
	CHECK(h->aborts == 3 && h->last_abort == ABORT_NUL);
	CHECK_STR(take(h), "550 5.6.0 Message contains a NUL octet (RFC 6152)\r\n");
	harness_free(h);
}

static void
bare_lf_accepted(struct session_config *cfg)
{
	cfg->accept_bare_lf = true;
	cfg->max_text_line = 20;
}

/*
 * server.bareLineFeed = "accept": a bare LF ends a message line and reaches
 * the policy as CRLF; a line it starts is unstuffed like any other; only
 * CRLF "." CRLF ends the data; a bare CR is still refused.
 */
static void
test_bare_lf_accepted(void)
{
	static const char script[] =
	    "EHLO c.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
	    "DATA\r\na\nb\r\n..c\n.\n.\r\n..\nX\n\r\n.\r\nQUIT\r\n";
	static const char want[] = "a\r\nb\r\n.c\r\n\r\n\r\n.\r\nX\r\n\r\n";
	struct harness	*h = harness_new(bare_lf_accepted);
	static char	 whole[sizeof(h->out) + 1];
	static const char *const variants[] = {
		"\n.\n", "\n.\r\n", "\r\n.\n",
	};
	static const char *const bare_cr[] = {
		"\r.\r", "\n.\r", "\r\n.\r", "\r.\r\n", "\r\n.\r\r\n", "\n\r",
	};

	harness_start(h);
	feed(h, script);
	strcpy(whole, take(h));
	CHECK(strstr(whole, "354 End data") != NULL);
	CHECK(strstr(whole, "250 2.0.0 Message accepted\r\n221") != NULL);
	CHECK(h->data_len == strlen(want) && memcmp(h->data, want, h->data_len) == 0);
	CHECK(h->aborts == 0);
	harness_free(h);

	/* the same, an octet at a time */
	h = harness_new(bare_lf_accepted);
	harness_start(h);
	for (size_t i = 0; i < sizeof(script) - 1; i++)
		feed_len(h, script + i, 1);
	CHECK_STR(take(h), whole);
	CHECK(h->data_len == strlen(want) && memcmp(h->data, want, h->data_len) == 0);
	harness_free(h);

	/* the line limit counts a bare LF as the CRLF it becomes */
	h = started_with_ehlo(bare_lf_accepted);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	feed(h, "012345678901234567\n.012345678901234567\n\r\n.\r\n");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	take(h);
	feed(h, "0123456789012345678\n.\r\n");
	CHECK_STR(take(h), "");
	feed(h, "\r\n.\r\n");
	CHECK_STR(take(h), "550 5.6.0 Message has a line longer than 20 octets\r\n");
	harness_free(h);

	/* smuggling: a bare-LF end of data is message text, never the end */
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		char msg[512];

		h = started_with_ehlo(bare_lf_accepted);
		h->cfg.max_text_line = 1000;
		tap_diag("bare LF accepted, smuggling variant %zu", i);
		feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
		take(h);
		snprintf(msg, sizeof(msg), "Subject: one\r\n\r\nbody%s"
		    "MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@b.example>\r\n"
		    "DATA\r\nSubject: two\r\n", variants[i]);
		feed(h, msg);
		CHECK_STR(take(h), "");
		feed(h, ".\r\n");
		CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
		CHECK(h->asked[SEV_MAIL] == 1 && h->asked[SEV_RCPT] == 1 &&
		    h->asked[SEV_DATA_END] == 1 && h->aborts == 0);
		h->data[h->data_len] = '\0';
		/* the dot line is unstuffed to an empty line, every line ends in CRLF */
		CHECK_STR(h->data, "Subject: one\r\n\r\nbody\r\n\r\n"
		    "MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@b.example>\r\n"
		    "DATA\r\nSubject: two\r\n");
		harness_free(h);
	}
	for (size_t i = 0; i < sizeof(bare_cr) / sizeof(bare_cr[0]); i++) {
		char msg[512];

		h = started_with_ehlo(bare_lf_accepted);
		tap_diag("bare LF accepted, bare CR variant %zu", i);
		feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
		take(h);
		snprintf(msg, sizeof(msg), "body%sMAIL FROM:<evil@x.example>\r\n",
		    bare_cr[i]);
		feed(h, msg);
		CHECK(h->aborts == 1 && h->last_abort == ABORT_BARE_NEWLINE);
		feed(h, "\r\n.\r\n");
		CHECK_STR(take(h), "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n");
		CHECK(h->asked[SEV_MAIL] == 1 && h->asked[SEV_DATA_END] == 0);
		harness_free(h);
	}
	/* commands still need CRLF */
	h = started_with_ehlo(bare_lf_accepted);
	feed(h, "NOOP\nNOOP\r\n");
	CHECK_STR(take(h), "500 5.5.2 Bare CR, LF or NUL in command line\r\n");
	harness_free(h);
}

/* AUTH out of sequence says what is missing. */
static void
test_auth_sequence(void)
{
	struct harness *h = harness_new(tls_and_auth);

	h->cfg.auth_without_tls = true;
	harness_start(h);
	take(h);
	feed(h, "AUTH PLAIN\r\n");
	CHECK_STR(take(h), "503 5.5.1 Send EHLO first\r\n");
	feed(h, "HELO c.example\r\nAUTH PLAIN\r\n");
	CHECK_STR(take(h), "250 test.example\r\n503 5.5.1 Send EHLO first\r\n");
	feed(h, "EHLO c.example\r\nMAIL FROM:<a@a.example>\r\n");
	take(h);
	feed(h, "AUTH PLAIN\r\n");
	CHECK_STR(take(h), "503 5.5.1 Bad sequence of commands: AUTH not allowed during a mail transaction\r\n");
	CHECK(h->asked[SEV_AUTH] == 0);
	harness_free(h);
}

static char	log_buf[65536];
static size_t	log_len;

static void
log_keep(void *arg, enum log_level level, const char *line)
{
	size_t n = strlen(line);

	(void)arg;
	(void)level;
	if (log_len + n + 2 < sizeof(log_buf)) {
		memcpy(log_buf + log_len, line, n);
		log_len += n;
		log_buf[log_len++] = '\n';
		log_buf[log_len] = '\0';
	}
}

/*
 * Credentials never reach the log, at any level: not in an AUTH line however
 * it is spelt, nor in the lines pipelined after an AUTH that was refused
 * (the client sent them as SASL responses before it saw the refusal).
 */
static void
test_auth_never_logged(void)
{
	static const char *const secrets[] = {
		"U2VjcmV0MQ", "U2VjcmV0Mg", "U2VjcmV0Mw", "U2VjcmV0NA",
		"U2VjcmV0NQ", "U2VjcmV0Ng", "U2VjcmV0Nw", "U2VjcmV0OA",
		"U2VjcmV0OQ", "U2VjcmV0MTA",
	};
	struct harness	*h;

	log_set_level(LOG_DEBUG);
	log_set_sink(log_keep, NULL);
	log_len = 0;
	/* AUTH offered only after TLS: refused with 538 in plaintext */
	h = started_with_ehlo(tls_and_auth);
	feed(h, "EHLO c.example\r\nAUTH PLAIN\r\nU2VjcmV0MQ==\r\n"
	    "AUTH LOGIN\r\nU2VjcmV0Mg==\r\nU2VjcmV0Mw==\r\n"
	    "AUTH\tPLAIN U2VjcmV0NA==\r\n AUTH PLAIN U2VjcmV0NQ==\r\n"
	    "AUTHPLAIN U2VjcmV0Ng==\r\n\tauth plain U2VjcmV0Nw==\r\n"
	    "AUTH XYZ\r\nU2VjcmV0OA==\r\n*\r\nNOOP seen\r\n");
	CHECK(strstr(take(h), "250 2.0.0 Ok\r\n") != NULL);
	feed(h, "STARTTLS\r\n");
	take(h);
	session_tls_started(h->s, &test_tls);
	/* a real exchange, and a response pipelined behind a refused AUTH */
	h->answer[SEV_AUTH] = (struct verdict){ .accept = false };
	h->wait[SEV_AUTH] = true;
	feed(h, "EHLO c.example\r\nAUTH PLAIN AGJvYgBVMlZqY21WME9R\r\nU2VjcmV0OQ==\r\n");
	CHECK(session_decide(h->s, &(struct verdict){ .accept = false }) == 0);
	feed(h, "AUTH CRAM-MD5\r\nU2VjcmV0MTA=\r\nQUIT\r\n");
	CHECK(strstr(take(h), "504 5.5.4 ") != NULL);
	CHECK(h->closed);
	harness_free(h);
	log_set_sink(NULL, NULL);
	log_set_level(LOG_INFO);

	CHECK(strstr(log_buf, ">>> NOOP seen") != NULL);	/* commands are logged */
	CHECK(strstr(log_buf, ">>> QUIT") != NULL);
	CHECK(strstr(log_buf, "AGJvYgBV") == NULL);
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		CHECK_MSG(strstr(log_buf, secrets[i]) == NULL, "secret %zu not logged", i + 1);
}

/* The envelope: what the client was told 250 for, kept by the engine. */
static void
test_envelope(void)
{
	struct harness		*h = started_with_ehlo(tls_and_auth);
	const struct smtp_path	*p;
	unsigned		 serial, rcpt_serial;
	bool			 ext;

	CHECK_STR(session_helo(h->s, &ext), "client.example");
	CHECK(ext);
	feed(h, "MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc.example> SMTPUTF8 BODY=8BITMIME\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n");
	CHECK((p = session_sender(h->s, &serial)) != NULL && serial == h->serial);
	CHECK(p != NULL && p->utf8 && p->nparams == 2);
	CHECK(p != NULL && strcmp(p->params[1].key, "BODY") == 0 &&
	    strcmp(p->params[1].value, "8BITMIME") == 0 && p->params[0].value == NULL);
	CHECK_STR(p != NULL ? p->domain : "", "b\xc3\xbc.example");
	feed(h, "RCPT TO:<a@x.example>\r\n");
	rcpt_serial = h->serial;
	h->answer[SEV_RCPT] = (struct verdict){ .accept = false };
	feed(h, "RCPT TO:<no@x.example>\r\n");
	h->answer[SEV_RCPT] = (struct verdict){ .accept = true };
	h->wait[SEV_RCPT] = true;
	feed(h, "RCPT TO:<late@x.example>\r\n");
	CHECK(session_recipient_count(h->s) == 1);	/* not told 250 yet */
	CHECK(session_decide(h->s, &(struct verdict){ .accept = true }) == 0);
	h->wait[SEV_RCPT] = false;
	CHECK(session_recipient_count(h->s) == 2);
	CHECK_STR(session_recipient(h->s, 0, &serial)->address, "a@x.example");
	CHECK(serial == rcpt_serial);
	CHECK_STR(session_recipient(h->s, 1, NULL)->address, "late@x.example");
	CHECK(session_recipient(h->s, 2, NULL) == NULL);
	feed(h, "DATA\r\nhi\r\n.\r\n");
	CHECK(session_sender(h->s, NULL) == NULL && session_recipient_count(h->s) == 0);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@x.example>\r\nRSET\r\n");
	CHECK(session_sender(h->s, NULL) == NULL && session_recipient_count(h->s) == 0);
	h->answer[SEV_MAIL] = (struct verdict){ .accept = false };
	feed(h, "MAIL FROM:<a@a.example>\r\n");
	CHECK(session_sender(h->s, NULL) == NULL);
	h->answer[SEV_MAIL] = (struct verdict){ .accept = true };
	h->answer[SEV_EHLO] = (struct verdict){ .accept = false };
	feed(h, "EHLO other.example\r\n");	/* refused: the name stays */
	CHECK_STR(session_helo(h->s, NULL), "client.example");
	h->answer[SEV_EHLO] = (struct verdict){ .accept = true };
	feed(h, "EHLO c.example\r\nMAIL FROM:<a@a.example>\r\n");
	CHECK_STR(session_helo(h->s, NULL), "c.example");
	CHECK(session_sender(h->s, NULL) != NULL);
	feed(h, "STARTTLS\r\n");
	CHECK(h->starttls == 1);
	take(h);
	session_tls_started(h->s, &test_tls);
	CHECK(session_helo(h->s, NULL) == NULL && session_sender(h->s, NULL) == NULL);
	harness_free(h);
}

/* --- BDAT (RFC 3030) and LMTP (RFC 2033) ---------------------------------- */

static void
in_transaction(struct harness *h)
{
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n");
	take(h);
}

static void
test_bdat(void)
{
	struct harness	*h = started_with_ehlo(NULL);
	const char	*all = "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
	    "BDAT 5\r\nhel\r\nBDAT 10 LAST\r\nlo\r\n.\r\nx\r\nNOOP\r\n";

	/* pipelined chunks; no dot-stuffing, no end-of-data scanning */
	in_transaction(h);
	feed(h, "BDAT 5\r\nhel\r\n");
	CHECK_STR(take(h), "250 2.0.0 5 octets received\r\n");
	CHECK(h->asked[SEV_DATA] == 1 && h->asked[SEV_DATA_END] == 0);
	feed(h, "BDAT 10 LAST\r\nlo\r\n.\r\nx\r\nNOOP\r\n");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n250 2.0.0 Ok\r\n");
	CHECK(h->data_len == 15 && memcmp(h->data, "hel\r\nlo\r\n.\r\nx\r\n", 15) == 0);
	CHECK(h->asked[SEV_DATA] == 1 && h->asked[SEV_DATA_END] == 1);
	CHECK(h->outcome[SEV_DATA_END] == 250);
	harness_free(h);

	/* the same dialogue, split at every octet */
	h = started_with_ehlo(NULL);
	for (size_t i = 0; all[i] != '\0'; i++)
		feed_len(h, all + i, 1);
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"
	    "250 2.0.0 5 octets received\r\n250 2.0.0 Message accepted\r\n"
	    "250 2.0.0 Ok\r\n");
	CHECK(h->data_len == 15 && memcmp(h->data, "hel\r\nlo\r\n.\r\nx\r\n", 15) == 0);
	harness_free(h);

	/* BDAT 0 LAST ends the message; a CRLF may straddle two chunks */
	h = started_with_ehlo(NULL);
	in_transaction(h);
	feed(h, "BDAT 3\r\nab\rBDAT 3\r\n\ncdBDAT 0 LAST\r\n");
	CHECK_STR(take(h), "250 2.0.0 3 octets received\r\n250 2.0.0 3 octets received\r\n"
	    "250 2.0.0 Message accepted\r\n");
	CHECK(h->data_len == 6 && memcmp(h->data, "ab\r\ncd", 6) == 0);
	harness_free(h);
}

static void
test_bdat_sequence(void)
{
	struct harness *h = started_with_ehlo(NULL);

	/* refused BDATs: their octets are read and dropped, never commands */
	feed(h, "BDAT 12\r\nQUIT\r\nQUIT\r\nNOOP\r\n");
	CHECK_STR(take(h), "503 5.5.1 Need MAIL and RCPT before BDAT\r\n250 2.0.0 Ok\r\n");
	CHECK(!h->closed && h->aborts == 0);
	feed(h, "MAIL FROM:<a@a.example>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n"
	    "503 5.5.1 Need MAIL and RCPT before BDAT\r\n250 2.0.0 Ok\r\n");
	CHECK(h->asked[SEV_DATA] == 0);
	/* DATA, RCPT after BDAT; RSET ends the message (abort) */
	feed(h, "RCPT TO:<b@b.example>\r\nBDAT 2\r\nabDATA\r\nRCPT TO:<c@b.example>\r\n");
	CHECK_STR(take(h), "250 2.1.5 Recipient ok\r\n250 2.0.0 2 octets received\r\n"
	    "503 5.5.1 DATA not allowed after BDAT\r\n503 5.5.1 RCPT not allowed after BDAT\r\n");
	feed(h, "RSET\r\n");
	CHECK_STR(take(h), "250 2.0.0 Ok\r\n");
	CHECK(h->aborts == 1 && h->last_abort == ABORT_RESET);
	/* the 'DATA' event refuses the first chunk: dropped, the transaction goes on */
	in_transaction(h);
	h->answer[SEV_DATA] = (struct verdict){ false, 554, "5.7.1 not now" };
	feed(h, "BDAT 6\r\nQUIT\r\n");
	CHECK_STR(take(h), "554 5.7.1 not now\r\n");
	h->answer[SEV_DATA] = (struct verdict){ true, 0, NULL };
	feed(h, "BDAT 4 LAST\r\nok\r\n");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	CHECK(h->data_len == 6 && memcmp(h->data, "abok\r\n", 6) == 0);
	/* a verdict that waits holds the pipelined commands */
	in_transaction(h);
	h->wait[SEV_DATA_END] = true;
	feed(h, "BDAT 4 LAST\r\nhi\r\nNOOP\r\n");
	CHECK_STR(take(h), "");
	session_decide(h->s, &(struct verdict){ false, 452, "4.2.2 full" });
	CHECK_STR(take(h), "452 4.2.2 full\r\n250 2.0.0 Ok\r\n");
	h->wait[SEV_DATA_END] = false;
	harness_free(h);

	/* a disconnect between chunks aborts the message */
	h = started_with_ehlo(NULL);
	in_transaction(h);
	feed(h, "BDAT 2\r\nab");
	session_eof(h->s);
	session_destroy(h->s);
	h->s = NULL;
	CHECK(h->aborts == 1 && h->last_abort == ABORT_DISCONNECT);
	harness_free(h);
}

static void
test_bdat_limits(void)
{
	struct harness *h;

	/* 7BIT text by BDAT: a bare LF fails it; the chunk is still read to its end */
	h = started_with_ehlo(only_size_limit);
	h->cfg.extensions = EXT_ALL;
	in_transaction(h);
	feed(h, "BDAT 600\r\n");
	for (int i = 0; i < 59; i++)
		feed(h, "012345678\n");
	CHECK_STR(take(h), "");
	CHECK(h->aborts == 1 && h->last_abort == ABORT_BARE_NEWLINE);
	feed(h, "012345678\nBDAT 1 LAST\r\nxNOOP\r\n");
	CHECK_STR(take(h), "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n"
	    "503 5.5.1 Need MAIL and RCPT before BDAT\r\n250 2.0.0 Ok\r\n");
	harness_free(h);

	/* the running total over maxSize: 552 after the chunk, read to its end */
	h = started_with_ehlo(only_size_limit);
	h->cfg.extensions = EXT_ALL;
	in_transaction(h);
	feed(h, "BDAT 600\r\n");
	for (int i = 0; i < 60; i++)
		feed(h, "01234567\r\n");
	CHECK_STR(take(h), "250 2.0.0 600 octets received\r\n");
	feed(h, "BDAT 401 LAST\r\n");
	CHECK(h->aborts == 1 && h->last_abort == ABORT_TOO_BIG);
	for (int i = 0; i < 40; i++)
		feed(h, "01234567\r\n");
	CHECK_STR(take(h), "");
	feed(h, "xNOOP\r\n");
	CHECK_STR(take(h), "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
	    "250 2.0.0 Ok\r\n");
	CHECK(h->data_len == 600 && h->asked[SEV_DATA_END] == 0);
	/* at the limit exactly: accepted */
	in_transaction(h);
	feed(h, "BDAT 1000 LAST\r\n");
	for (int i = 0; i < 100; i++)
		feed(h, "01234567\r\n");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	/* a failed chunk that is not the LAST ends the transaction; the rest is refused */
	in_transaction(h);
	feed(h, "BDAT 1001\r\n");
	for (int i = 0; i < 100; i++)
		feed(h, "01234567\r\n");
	feed(h, "xBDAT 3 LAST\r\nab\n");
	CHECK_STR(take(h), "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
	    "503 5.5.1 Need MAIL and RCPT before BDAT\r\n");
	harness_free(h);

	/* the size field: 20 digits at most, 64 bits */
	h = started_with_ehlo(NULL);
	feed(h, "BDAT 18446744073709551615\r\nNOOP\r\n");
	CHECK_STR(take(h), "503 5.5.1 Need MAIL and RCPT before BDAT\r\n");	/* NOOP is chunk */
	CHECK(!h->closed);
	harness_free(h);
	h = started_with_ehlo(NULL);
	feed(h, "BDAT 18446744073709551616\r\nNOOP\r\n");
	CHECK_STR(take(h), "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
	    "421 4.5.4 test.example Error: cannot find the end of the chunk\r\n");
	CHECK(h->closed);
	harness_free(h);
	h = started_with_ehlo(NULL);
	feed(h, "BDAT 12 LAT\r\n");
	CHECK(strncmp(take(h), "501 5.5.4 Syntax: BDAT", 22) == 0 && h->closed);
	harness_free(h);
	h = started_with_ehlo(NULL);
	feed(h, "BDAT -1\r\n");
	CHECK(strncmp(take(h), "501 5.5.4 Syntax: BDAT", 22) == 0 && h->closed);
	harness_free(h);
}

static void
test_bdat_body(void)
{
	struct harness *h = started_with_ehlo(NULL);

	/* BINARYMIME: octets as they are; DATA refused */
	feed(h, "MAIL FROM:<a@a.example> BODY=BINARYMIME\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"
	    "503 5.5.1 BODY=BINARYMIME requires BDAT\r\n");
	FEED_LIT(h, "BDAT 7 LAST\r\n\0\n\r.\r\n\r");
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n");
	CHECK(h->data_len == 7 && memcmp(h->data, "\0\n\r.\r\n\r", 7) == 0);
	/* the next transaction is 7BIT again: NUL and bare CR refused */
	h->data_len = 0;
	in_transaction(h);
	FEED_LIT(h, "BDAT 4 LAST\r\na\0\r\n");
	CHECK_STR(take(h), "550 5.6.0 Message contains a NUL octet (RFC 6152)\r\n");
	in_transaction(h);
	feed(h, "BDAT 3 LAST\r\nab\r");
	CHECK_STR(take(h), "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n");
	harness_free(h);

	/* BINARYMIME without CHUNKING is not offered */
	h = started_with_ehlo(only_size_limit);
	h->cfg.extensions = EXT_8BITMIME | EXT_BINARYMIME;
	feed(h, "MAIL FROM:<a@a.example> BODY=BINARYMIME\r\n");
	CHECK_STR(take(h), "501 Bad BODY value\r\n");
	feed(h, "BDAT 0 LAST\r\n");
	CHECK_STR(take(h), "502 Command not implemented\r\n");
	harness_free(h);
}

/* The policy pauses a chunk; the chunk's reply waits for the resume. */
static void
test_bdat_pause(void)
{
	struct harness *h = started_with_ehlo(NULL);

	in_transaction(h);
	h->pause_on_data = true;
	feed(h, "BDAT 4\r\nab\r\nBDAT 3 LAST\r\ncd\n");
	CHECK_STR(take(h), "");
	CHECK(h->data_len == 4 && h->held_len == strlen("BDAT 3 LAST\r\ncd\n"));
	h->pause_on_data = false;
	session_resume(h->s);
	/* the first chunk's 250, then the second's octets: a bare LF fails it */
	CHECK_STR(take(h), "250 2.0.0 4 octets received\r\n"
	    "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n");
	CHECK(h->held_len == 0 && h->aborts == 1);
	/* a pause at the LAST chunk's end holds its verdict until the resume */
	in_transaction(h);
	h->pause_on_data = true;
	feed(h, "BDAT 4 LAST\r\nef\r\nNOOP\r\n");
	CHECK_STR(take(h), "");
	CHECK(h->asked[SEV_DATA_END] == 0);
	h->pause_on_data = false;
	session_resume(h->s);
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n250 2.0.0 Ok\r\n");
	harness_free(h);
}

static void
lmtp_on(struct session_config *cfg)
{
	cfg->lmtp = true;
}

static void
test_lmtp(void)
{
	struct harness *h = harness_new(lmtp_on);

	harness_start(h);
	CHECK_STR(take(h), "220 test.example LMTP\r\n");
	feed(h, "EHLO c.example\r\nHELO c.example\r\nMAIL FROM:<a@a.example>\r\n");
	CHECK_STR(take(h), "500 5.5.1 This is LMTP: send LHLO\r\n"
	    "500 5.5.1 This is LMTP: send LHLO\r\n503 5.5.1 Send LHLO first\r\n");
	feed(h, "LHLO c.example\r\n");
	CHECK(strncmp(take(h), "250-test.example\r\n250-PIPELINING", 32) == 0);
	CHECK(h->asked[SEV_EHLO] == 1);
	/* one reply per accepted recipient, in RCPT order */
	h->answer[SEV_RCPT] = (struct verdict){ true, 0, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\n"
	    "RCPT TO:<d@b.example>\r\n");
	take(h);
	h->wait[SEV_DATA_END] = true;
	feed(h, "DATA\r\nhi\r\n.\r\n");
	CHECK_STR(take(h), "354 End data with <CR><LF>.<CR><LF>\r\n");
	CHECK(session_recipient_verdict(h->s, 3, &(struct verdict){ true, 0, NULL }) == -1);
	CHECK(session_recipient_verdict(h->s, 1, &(struct verdict){ false, 552,
	    "5.2.2 over quota" }) == 0);
	CHECK(session_recipient_verdict(h->s, 2, &(struct verdict){ false, 250,
	    "bad" }) == 0);		/* invalid: 451 for that one */
	session_decide(h->s, &(struct verdict){ true, 0, NULL });
	CHECK_STR(take(h), "250 2.0.0 Message accepted\r\n552 5.2.2 over quota\r\n"
	    "451 4.3.0 Local error in policy, try again later\r\n");
	/* the next message: no verdict of the last one is left; BDAT too */
	h->wait[SEV_DATA_END] = false;
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\n"
	    "BDAT 4 LAST\r\nhi\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"
	    "250 2.1.5 Recipient ok\r\n250 2.0.0 Message accepted\r\n250 2.0.0 Message accepted\r\n");
	/* a message that fails while received: the failure for each */
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\n"
	    "DATA\r\nbare\nLF\r\n.\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"
	    "250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	    "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n"
	    "550 5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8)\r\n");
	/* no accepted recipient: DATA is 503 (RFC 2033 4.2) */
	h->answer[SEV_RCPT] = (struct verdict){ false, 0, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n");
	CHECK_STR(take(h), "250 2.1.0 Sender ok\r\n550 5.7.1 Recipient address rejected\r\n"
	    "503 5.5.1 No valid recipients\r\n");
	/* a decision timeout answers every recipient 451, whatever was set */
	h->answer[SEV_RCPT] = (struct verdict){ true, 0, NULL };
	h->wait[SEV_DATA_END] = true;
	feed(h, "RCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\nBDAT 2 LAST\r\nab");
	take(h);
	CHECK(session_recipient_verdict(h->s, 0, &(struct verdict){ false, 552, NULL }) == 0);
	session_timeout(h->s);
	CHECK_STR(take(h), "451 4.3.0 Timed out waiting for a policy decision\r\n"
	    "451 4.3.0 Timed out waiting for a policy decision\r\n");
	h->wait[SEV_DATA_END] = false;
	/* outside LMTP there are no recipient verdicts, and no LHLO */
	CHECK(session_recipient_verdict(h->s, 0, &(struct verdict){ true, 0, NULL }) == -1);
	harness_free(h);
	h = started_with_ehlo(NULL);
	feed(h, "LHLO c.example\r\n");
	CHECK_STR(take(h), "500 5.5.2 Command unrecognized\r\n");
	harness_free(h);
}

/* What the engine counts (metrics.h): here into the process's private slot. */
static void
test_metrics_counted(void)
{
	struct metrics_slot	 before = *metrics_own, *m = metrics_own;
	struct harness		*h = harness_new(NULL);

#define DELTA(field)	((long long)(m->field - before.field))
	harness_start(h);
	take(h);
	CHECK(DELTA(replies[MR_CONNECT][0]) == 1);
	feed(h, "EHLO client.example\r\nFOO bar\r\nX-\"}evil\r\n");
	take(h);
	CHECK(DELTA(commands[MV_EHLO]) == 1);
	CHECK(DELTA(replies[MV_EHLO][0]) == 1);
	CHECK(DELTA(commands[MV_OTHER]) == 2);
	CHECK(DELTA(replies[MV_OTHER][3]) == 2);
	h->answer[SEV_RCPT] = (struct verdict){ false, 550, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<no@b.example>\r\n");
	h->answer[SEV_RCPT] = (struct verdict){ true, 0, NULL };
	feed(h, "RCPT TO:<b@b.example>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n");
	CHECK_STR(strstr(take(h), "250 2.0.0"), "250 2.0.0 Message accepted\r\n");
	CHECK(DELTA(commands[MV_MAIL]) == 1 && DELTA(commands[MV_RCPT]) == 2);
	CHECK(DELTA(replies[MV_RCPT][0]) == 1 && DELTA(replies[MV_RCPT][3]) == 1);
	CHECK(DELTA(replies[MV_DATA][1]) == 1);		/* 354 */
	CHECK(DELTA(replies[MR_DATA_END][0]) == 1);
	CHECK(DELTA(messages[MM_ACCEPTED]) == 1 && DELTA(octets[MM_ACCEPTED]) == 22);
	/* the policy rejects at the end; the engine fails a bare LF */
	h->answer[SEV_DATA_END] = (struct verdict){ false, 554, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nabc\r\n.\r\n");
	h->answer[SEV_DATA_END] = (struct verdict){ true, 0, NULL };
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nab\ncd\r\n.\r\n");
	take(h);
	CHECK(DELTA(messages[MM_REJECTED]) == 1 && DELTA(octets[MM_REJECTED]) == 5);
	CHECK(DELTA(messages[MM_FAILED]) == 1);
	CHECK(DELTA(messages[MM_ACCEPTED]) == 1);
	CHECK(DELTA(replies[MR_DATA_END][3]) == 2);
	/* a message cut by the client's leaving fails once */
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nabc");
	session_eof(h->s);
	harness_free(h);
	CHECK(DELTA(messages[MM_FAILED]) == 2);
#undef DELTA
}

static void
with_received(struct session_config *cfg)
{
	cfg->received_header = true;
}

/* The data starts with "Received: from client.example", ends with tail; no other Received. */
static bool
data_is(struct harness *h, const char *middle, const char *tail)
{
	size_t	 tl = strlen(tail);
	char	*end;

	h->data[h->data_len] = '\0';
	if (strncmp(h->data, "Received: from client.example ", 30) != 0 ||
	    h->data_len < tl || strcmp(h->data + h->data_len - tl, tail) != 0)
		return false;
	if ((end = strstr(h->data, " +0000\r\n")) == NULL)
		return false;
	if (middle != NULL && strstr(h->data, middle) == NULL)
		return false;
	return strstr(end, "Received:") == NULL;
}

static void
test_trace(void)
{
	struct harness	*h = started_with_ehlo(with_received);
	const char	*why;

	/* DATA: the Received field first, the client's data after it */
	in_transaction(h);
	feed(h, "DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n");
	CHECK_STR(take(h), "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n");
	CHECK(data_is(h, " by test.example (luasmtpd) with ESMTP\r\n\tid ", "\r\nSubject: hi\r\n\r\nbody\r\n"));
	CHECK(strstr(h->data, "for <b@b.example>;") != NULL);
	CHECK(strstr(h->data, "(unknown") == NULL && strstr(h->data, "[unknown") == NULL);
	/* not counted in the size: the client's octets are */
	CHECK(session_add_header(h->s, "X-A", 3, "b", 1, &why) == -1);	/* no message */
	harness_free(h);

	/* BDAT, two recipients (no "for"), added fields after the Received one */
	h = started_with_ehlo(with_received);
	h->add_name = "X-Spam";
	h->add_value = "no";
	CHECK(session_set_reverse_name(h->s, "bad name") == -1);
	CHECK(session_set_reverse_name(h->s, "host.client.example") == 0);
	feed(h, "MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\n");
	take(h);
	feed(h, "BDAT 4\r\nab\r\nBDAT 2 LAST\r\ncd");
	CHECK_STR(take(h), "250 2.0.0 4 octets received\r\n250 2.0.0 Message accepted\r\n");
	CHECK(h->add_rc == 0);
	CHECK(data_is(h, "(host.client.example)", "X-Spam: no\r\nab\r\ncd"));
	CHECK(strstr(h->data, " for ") == NULL);
	/* too late once the data flowed; a later message starts afresh */
	CHECK(session_add_header(h->s, "X-A", 3, "b", 1, &why) == -1);
	h->data_len = 0;
	h->add_value = "bad\r\nX-Injected: yes";
	in_transaction(h);
	feed(h, "DATA\r\nx\r\n.\r\n");
	take(h);
	CHECK(h->add_rc == -1);
	CHECK(data_is(h, NULL, "\r\nx\r\n") && strstr(h->data, "Injected") == NULL);
	/* an empty message still gets its Received field */
	h->add_name = NULL;
	h->data_len = 0;
	in_transaction(h);
	feed(h, "DATA\r\n.\r\n");
	CHECK_STR(take(h), "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n");
	CHECK(data_is(h, NULL, " +0000\r\n"));
	harness_free(h);
}

/* n Received fields then a body, the DATA text of one message */
static char *
hops_message(int n)
{
	char	*m = malloc((size_t)n * 40 + 64), *p = m;

	for (int i = 0; i < n; i++)
		p += sprintf(p, i % 2 ? "received:\tby x%d\r\n\tfolded\r\n" :
		    "Received: by x%d\r\n", i);
	strcpy(p, "Subject: s\r\n\r\nReceived: in the body\r\n.\r\n");
	return m;
}

static void
test_hops(void)
{
	char	*ok = hops_message(100), *over = hops_message(101);
	bool	 all_ok = true, all_over = true;

	/* split in two at every offset: 100 pass, 101 is 554 5.4.6 */
	for (size_t cut = 0; cut <= strlen(over); cut++) {
		struct harness *h;

		h = started_with_ehlo(NULL);
		in_transaction(h);
		feed(h, "DATA\r\n");
		take(h);
		if (cut <= strlen(ok)) {
			feed_len(h, ok, cut);
			feed(h, ok + cut);
			all_ok &= strcmp(take(h), "250 2.0.0 Message accepted\r\n") == 0 &&
			    h->aborts == 0;
		}
		harness_free(h);
		h = started_with_ehlo(NULL);
		in_transaction(h);
		feed(h, "DATA\r\n");
		take(h);
		feed_len(h, over, cut);
		feed(h, over + cut);
		all_over &= strcmp(take(h), "554 5.4.6 Too many hops\r\n") == 0 &&
		    h->aborts == 1 && h->last_abort == ABORT_TOO_MANY_HOPS &&
		    h->asked[SEV_DATA_END] == 0;
		harness_free(h);
	}
	CHECK(all_ok);
	CHECK(all_over);
	free(ok);
	free(over);
}

int
main(void)
{
	test_greeting_and_ehlo();
	test_extensions_off();
	test_transaction();
	test_sequence();
	test_syntax_errors();
	test_pipelining_in_order();
	test_async_verdict_holds_later_commands();
	test_verdict_validation();
	test_size_limits();
	test_line_limits();
	test_error_and_recipient_limits();
	test_smuggling();
	test_split_anywhere();
	test_timeouts();
	test_refused_connection();
	test_smtputf8();
	test_disconnect_and_pause();
	test_starttls_discards_injected_plaintext();
	test_auth();
	test_long_policy_texts();
	test_nul_in_data();
	test_bare_lf_accepted();
	test_auth_sequence();
	test_auth_never_logged();
	test_envelope();
	test_bdat();
	test_bdat_sequence();
	test_bdat_limits();
	test_bdat_body();
	test_bdat_pause();
	test_lmtp();
	test_metrics_counted();
	test_trace();
	test_hops();
	return tap_done();
}
