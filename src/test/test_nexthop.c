/*
 * test_nexthop.c -- the next-hop client against a scripted peer: the other
 * end of a socketpair on the same event base, answering each command line
 * (and each end of data) with the next reply of its script.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "nexthop.h"
#include "tap.h"

#define CLOSE	"<close>"	/* a script step: the peer hangs up */
#define SILENT	"<silent>"	/* a script step: no reply */

struct peer {
	struct bufferevent	*bev;
	const char *const	*script;	/* the greeting first, then one per command */
	size_t			 next;
	bool			 in_data;
	char			 got[1 << 16];	/* command lines and data, as received */
	size_t			 got_len;
	char			 body[1 << 16];	/* the data as received, final dot included */
	size_t			 body_len;
	size_t			 body_total;	/* ... its octets, kept or not */
};

struct run {
	struct event_base	*base;
	struct nexthop		*nh;
	struct peer		 peer;
	struct nexthop_reply	 last;
	int			 replies;
	bool			 done;
};

static void
peer_say(struct peer *p)
{
	const char *r = p->script[p->next];

	if (r == NULL)
		return;
	p->next++;
	if (strcmp(r, CLOSE) == 0) {
		bufferevent_free(p->bev);
		p->bev = NULL;
		return;
	}
	if (strcmp(r, SILENT) == 0)
		return;
	bufferevent_write(p->bev, r, strlen(r));
	if (strncmp(r, "354", 3) == 0)
		p->in_data = true;
}

static void
peer_read(struct bufferevent *bev, void *arg)
{
	struct peer	*p = arg;
	struct evbuffer	*in = bufferevent_get_input(bev);
	size_t		 len;
	char		*line;

	while (p->bev != NULL && (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF_STRICT)) != NULL) {
		if (p->in_data) {
			p->body_total += len + 2;
			if (p->body_len + len + 2 < sizeof(p->body)) {
				memcpy(p->body + p->body_len, line, len);
				memcpy(p->body + p->body_len + len, "\r\n", 2);
				p->body_len += len + 2;
			}
			if (len == 1 && line[0] == '.') {
				p->in_data = false;
				peer_say(p);
			}
		} else {
			if (p->got_len + len + 1 < sizeof(p->got)) {
				memcpy(p->got + p->got_len, line, len);
				p->got[p->got_len + len] = '\n';
				p->got_len += len + 1;
				p->got[p->got_len] = '\0';
			}
			peer_say(p);
		}
		free(line);
	}
}

static void
run_init(struct run *r, const char *const *script, const struct nexthop_target *t)
{
	int fds[2];

	memset(r, 0, sizeof(*r));
	r->base = event_base_new();
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == -1)
		abort();
	evutil_make_socket_nonblocking(fds[0]);
	evutil_make_socket_nonblocking(fds[1]);
	r->peer.script = script;
	r->peer.bev = bufferevent_socket_new(r->base, fds[1], BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(r->peer.bev, peer_read, NULL, NULL, &r->peer);
	bufferevent_enable(r->peer.bev, EV_READ | EV_WRITE);
	peer_say(&r->peer);	/* the greeting */
	r->nh = nexthop_create(r->base, NULL, t, fds[0]);
}

static void
run_free(struct run *r)
{
	nexthop_destroy(r->nh);
	if (r->peer.bev != NULL)
		bufferevent_free(r->peer.bev);
	event_base_free(r->base);
}

static void
on_step(void *arg, struct nexthop *nh, const struct nexthop_reply *rep)
{
	struct run *r = arg;

	(void)nh;
	r->last = *rep;
	r->replies++;
	if (rep->index + 1 >= rep->count)
		r->done = true;
}

/* runs the loop until the step in flight answered (bounded: 10 s) */
static bool
wait_step(struct run *r)
{
	struct timeval	 tv = { 0, 10000 };
	int		 i;

	for (i = 0; i < 1000 && !r->done; i++) {
		event_base_loopexit(r->base, &tv);
		event_base_dispatch(r->base);
	}
	if (!r->done)
		return false;
	r->done = false;
	return true;
}

static void
pump_out(struct run *r)
{
	struct timeval tv = { 0, 20000 };

	event_base_loopexit(r->base, &tv);
	event_base_dispatch(r->base);
}

static const struct nexthop_target smtp_target = {
	.host = "peer", .port = 25, .helo = "front.example", .timeout_ms = 5000,
};

/* the open (greeting, EHLO or HELO, AUTH), waited for */
static void
open_step(struct run *r)
{
	nexthop_open(r->nh, on_step, r);
	CHECK(wait_step(r));
}

/*
 * open, MAIL from s@x, RCPT for each of rcpts (NULL-ended), DATA: each step
 * waited for (the script answers them; their codes are not looked at)
 */
static void
open_to_data(struct run *r, const char *const *rcpts)
{
	open_step(r);
	nexthop_mail(r->nh, "s@x", NULL, 0, on_step, r);
	CHECK(wait_step(r));
	for (; *rcpts != NULL; rcpts++) {
		nexthop_rcpt(r->nh, *rcpts, NULL, on_step, r);
		CHECK(wait_step(r));
	}
	nexthop_data(r->nh, on_step, r);
	CHECK(wait_step(r));
}

static void
test_transaction(void)
{
	static const char *const script[] = {
		"220 peer ESMTP\r\n",
		"250-peer\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
		"250 2.1.0 Sender ok\r\n",
		"250-2.1.5 first line\r\n250 2.1.5 second line\r\n",
		"354 go\r\n",
		"250 2.0.0 Ok: queued as X1\r\n",
		"250 2.0.0 flushed\r\n",
		NULL,
	};
	struct run	r;
	const char	*chunks[] = { ".lead\r", "\n", ".", ".two\r\n", "mid.dle\r\n.", "\r\nend" };
	const char	*want = "..lead\r\n...two\r\nmid.dle\r\n..\r\nend\r\n.\r\n";

	run_init(&r, script, &smtp_target);
	CHECK(nexthop_open(r.nh, on_step, &r) == 0);
	CHECK(nexthop_mail(r.nh, "a@b", NULL, 0, on_step, &r) == -1);	/* one step at a time */
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	CHECK(nexthop_ext(r.nh) & NH_EXT_8BITMIME);
	CHECK(nexthop_size_limit(r.nh) == 1000000);
	CHECK(nexthop_mail(r.nh, "a@b.example", "BODY=8BITMIME", 500, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	CHECK_STR(r.last.enhanced, "2.1.0");
	CHECK(strstr(r.peer.got, "MAIL FROM:<a@b.example> BODY=8BITMIME SIZE=500\n") != NULL);
	CHECK(nexthop_rcpt(r.nh, "c@d.example", NULL, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_STR(r.last.text, "first line\nsecond line");
	CHECK_STR(r.last.enhanced, "2.1.5");
	CHECK_INT((int)nexthop_accepted(r.nh), 1);
	CHECK(nexthop_data(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 354);
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++)
		CHECK(nexthop_write(r.nh, chunks[i], strlen(chunks[i])) >= 0);
	CHECK(nexthop_end(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	CHECK_STR(r.last.text, "Ok: queued as X1");
	r.peer.body[r.peer.body_len] = '\0';
	CHECK_STR(r.peer.body, want);	/* stuffed across chunks; CRLF added at the end */
	CHECK(nexthop_rset(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK(nexthop_alive(r.nh));
	run_free(&r);
}

static void
test_size_limit(void)
{
	static const char *const script[] = {
		"220 peer\r\n", "250-peer\r\n250 SIZE 1000\r\n", NULL,
	};
	struct run r;

	run_init(&r, script, &smtp_target);
	open_step(&r);
	CHECK(nexthop_mail(r.nh, "a@b", NULL, 2000, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 552);
	CHECK_STR(r.last.enhanced, "5.3.4");
	CHECK(strstr(r.last.text, "1000") != NULL);	/* the next hop's limit named */
	CHECK(strstr(r.peer.got, "MAIL") == NULL);	/* never sent */
	CHECK(nexthop_alive(r.nh));
	run_free(&r);
}

static void
test_helo_fallback(void)
{
	static const char *const script[] = {
		"220 old\r\n", "502 what?\r\n", "250 old\r\n", NULL,
	};
	struct run r;

	run_init(&r, script, &smtp_target);
	open_step(&r);
	CHECK_INT(r.last.code, 250);
	CHECK(strstr(r.peer.got, "EHLO front.example\nHELO front.example\n") != NULL);
	run_free(&r);
}

/* open, then MAIL from s@x and the n rcpts as one envelope step, waited for */
static void
open_envelope(struct run *r, const char **rcpts, size_t n)
{
	open_step(r);
	CHECK(nexthop_envelope(r->nh, "s@x", NULL, 0, rcpts, n, on_step, r) == 0);
	CHECK(wait_step(r));
}

static void
test_lmtp(void)
{
	static const char *const script[] = {
		"220 lmtp\r\n", "250-lmtp\r\n250 PIPELINING\r\n", "250 ok\r\n",
		"250 ok\r\n", "550 5.1.1 unknown\r\n", "250 ok\r\n", "354 go\r\n",
		"250 2.0.0 <a> saved\r\n452 4.2.2 <c> over quota\r\n", NULL,
	};
	struct nexthop_target	 t = smtp_target;
	struct run		 r;
	int			 codes[2] = { 0, 0 };

	t.lmtp = true;
	run_init(&r, script, &t);
	open_step(&r);
	CHECK(strstr(r.peer.got, "LHLO front.example\n") != NULL);
	nexthop_mail(r.nh, "s@x", NULL, 0, on_step, &r);
	CHECK(wait_step(&r));
	nexthop_rcpt(r.nh, "a@x", NULL, on_step, &r);
	CHECK(wait_step(&r));
	nexthop_rcpt(r.nh, "b@x", NULL, on_step, &r);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 550);
	nexthop_rcpt(r.nh, "c@x", NULL, on_step, &r);
	CHECK(wait_step(&r));
	CHECK_INT((int)nexthop_accepted(r.nh), 2);
	nexthop_data(r.nh, on_step, &r);
	CHECK(wait_step(&r));
	nexthop_write(r.nh, "hi\r\n", 4);
	r.replies = 0;
	nexthop_end(r.nh, on_step, &r);
	CHECK(wait_step(&r));
	CHECK_INT(r.replies, 2);		/* one per accepted recipient */
	CHECK_INT((int)r.last.index, 1);
	CHECK_INT((int)r.last.count, 2);
	codes[1] = r.last.code;
	CHECK_INT(codes[1], 452);
	CHECK_STR(r.last.enhanced, "4.2.2");
	run_free(&r);
}

/*
 * LMTP: the next hop answers for the first recipient, then goes away: the
 * second's reply is the local failure, numbered as the second of two (it
 * was numbered anew, as the first of one, so a caller filing replies by
 * index put it over the first recipient's)
 */
static void
test_lmtp_close_after_first(void)
{
	static const char *const script[] = {
		"220 lmtp\r\n", "250 lmtp\r\n", "250 ok\r\n", "250 ok\r\n", "250 ok\r\n",
		"354 go\r\n", "250 2.0.0 <a> saved\r\n", NULL,
	};
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.lmtp = true;
	run_init(&r, script, &t);
	open_to_data(&r, (const char *const[]){ "a@x", "b@x", NULL });
	nexthop_write(r.nh, "hi\r\n", 4);
	r.replies = 0;
	nexthop_end(r.nh, on_step, &r);
	for (int i = 0; i < 100 && r.replies == 0; i++)
		pump_out(&r);
	CHECK_INT(r.replies, 1);
	CHECK_INT(r.last.code, 250);
	CHECK_INT((int)r.last.index, 0);
	CHECK_INT((int)r.last.count, 2);
	bufferevent_free(r.peer.bev);	/* gone before the second reply */
	r.peer.bev = NULL;
	CHECK(wait_step(&r));
	CHECK_INT(r.replies, 2);
	CHECK_INT(r.last.code, 451);
	CHECK(r.last.local);
	CHECK_INT((int)r.last.index, 1);
	CHECK_INT((int)r.last.count, 2);
	run_free(&r);
}

static void
test_malformed(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250-x\r\n251 mixed codes\r\n", NULL,
	};
	struct run r;

	run_init(&r, script, &smtp_target);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(r.last.local);
	CHECK_STR(r.last.enhanced, "4.4.2");
	CHECK(strstr(r.last.text, "different codes") != NULL);
	CHECK(!nexthop_alive(r.nh));
	run_free(&r);
}

static void
test_long_reply(void)
{
	static char	 big[8192];
	const char	*script[] = { big, NULL };
	struct run	 r;

	memset(big, 'x', sizeof(big) - 3);
	memcpy(big, "220 ", 4);
	big[sizeof(big) - 3] = '\r';
	big[sizeof(big) - 2] = '\n';
	run_init(&r, script, &smtp_target);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(strstr(r.last.text, "too long") != NULL);
	run_free(&r);
}

static void
test_timeout(void)
{
	static const char *const script[] = { "220 x\r\n", SILENT, NULL };
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.timeout_ms = 50;
	run_init(&r, script, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(strstr(r.last.text, "timed out (EHLO)") != NULL);
	run_free(&r);
}

static void
on_drained(void *arg)
{
	(*(int *)arg)++;
}

/*
 * A body bigger than the socket takes while the next hop reads nothing:
 * the write is partial, the rest waits (and the drain with it) until the
 * next hop reads; then the whole body and the dot arrive, and the next
 * message's envelope goes out as usual.
 */
static void
test_slow_reader(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250 x\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n",
		"250 done\r\n", "250 ok 2\r\n", NULL,
	};
	struct run	 r;
	static char	 chunk[80 * 13000];	/* whole lines */
	int		 drained = 0;
	long		 queued;

	for (size_t i = 0; i < sizeof(chunk); i++)
		chunk[i] = i % 80 == 78 ? '\r' : i % 80 == 79 ? '\n' : 'a';
	run_init(&r, script, &smtp_target);
	nexthop_set_drain(r.nh, 1024, on_drained, &drained);
	open_to_data(&r, (const char *const[]){ "a@x", NULL });
	bufferevent_disable(r.peer.bev, EV_READ);	/* the next hop stops reading */
	queued = nexthop_write(r.nh, chunk, sizeof(chunk));
	CHECK(queued == (long)sizeof(chunk));
	pump_out(&r);
	CHECK_INT(drained, 0);	/* the socket took part of it; the rest waits */
	CHECK(nexthop_end(r.nh, on_step, &r) == 0);
	bufferevent_enable(r.peer.bev, EV_READ);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	CHECK_INT(drained, 1);
	CHECK(r.peer.body_total == sizeof(chunk) + 3);
	CHECK(nexthop_mail(r.nh, "t@x", NULL, 0, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_STR(r.last.text, "ok 2");
	run_free(&r);
}

/*
 * Small body chunks are held for one write, but no longer than the linger
 * after the first of them: a client that keeps trickling does not push the
 * deadline back (the next hop would wait for ever).
 */
static void
test_body_linger(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250 x\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n",
		"250 done\r\n", NULL,
	};
	struct run	r;

	run_init(&r, script, &smtp_target);
	open_to_data(&r, (const char *const[]){ "a@x", NULL });
	for (int i = 0; i < 10; i++) {	/* a chunk every 20 ms of the loop, 200 ms in all */
		CHECK(nexthop_write(r.nh, "abc\r\n", 5) >= 0);
		pump_out(&r);
	}
	CHECK(r.peer.body_total > 0);	/* the first ones went at their linger */
	CHECK(nexthop_end(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	CHECK(r.peer.body_total == 10 * 5 + 3);
	run_free(&r);
}

static void
test_close_mid_data(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250 x\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", NULL,
	};
	struct run	r;
	char		chunk[4096];

	memset(chunk, 'a', sizeof(chunk));
	run_init(&r, script, &smtp_target);
	open_to_data(&r, (const char *const[]){ "a@x", NULL });
	nexthop_write(r.nh, chunk, sizeof(chunk));
	pump_out(&r);
	bufferevent_free(r.peer.bev);	/* the next hop goes away mid-DATA */
	r.peer.bev = NULL;
	pump_out(&r);
	if (nexthop_end(r.nh, on_step, &r) == 0)
		CHECK(wait_step(&r));
	else
		r.last.code = 451;	/* already known dead: the caller's 451 */
	CHECK_INT(r.last.code, 451);
	CHECK(!nexthop_alive(r.nh));
	run_free(&r);
}

static void
test_require_tls(void)
{
	static const char *const script[] = { "220 x\r\n", "250 x\r\n", NULL };
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.tls = NH_TLS_REQUIRE;
	run_init(&r, script, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(strstr(r.last.text, "STARTTLS not offered") != NULL);
	run_free(&r);
}

static void
test_auth_needs_tls(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250-x\r\n250 AUTH PLAIN\r\n", "235 ok\r\n", NULL,
	};
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.user = "u";
	t.password = "p";
	run_init(&r, script, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(strstr(r.last.text, "without TLS") != NULL);
	run_free(&r);
	t.auth_plaintext = true;
	run_init(&r, script, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 235);
	CHECK(strstr(r.peer.got, "AUTH PLAIN AHUAcA==\n") != NULL);
	run_free(&r);
}

/*
 * A next hop that offers AUTH LOGIN only: the username and the password,
 * each in base64 after its 334; a refused password is the caller's
 * verdict; PLAIN is preferred when both are offered; neither is a 451
 */
static void
test_auth_login(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250-x\r\n250 AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n",
		"334 UGFzc3dvcmQ6\r\n", "235 2.7.0 ok\r\n", NULL,
	};
	static const char *const refused[] = {
		"220 x\r\n", "250-x\r\n250 AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n",
		"334 UGFzc3dvcmQ6\r\n", "535 5.7.8 bad credentials\r\n", NULL,
	};
	static const char *const both[] = {
		"220 x\r\n", "250-x\r\n250 AUTH LOGIN PLAIN\r\n", "235 ok\r\n", NULL,
	};
	static const char *const neither[] = {
		"220 x\r\n", "250-x\r\n250 AUTH CRAM-MD5\r\n", NULL,
	};
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.user = "user";
	t.password = "secret";
	t.auth_plaintext = true;
	run_init(&r, script, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 235);
	CHECK(nexthop_alive(r.nh));
	CHECK(strstr(r.peer.got, "AUTH LOGIN\ndXNlcg==\nc2VjcmV0\n") != NULL);
	run_free(&r);

	run_init(&r, refused, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 535);
	CHECK_STR(r.last.enhanced, "5.7.8");
	CHECK(!r.last.local);
	run_free(&r);

	run_init(&r, both, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 235);
	CHECK(strstr(r.peer.got, "AUTH PLAIN AHVzZXIAc2VjcmV0\n") != NULL);
	run_free(&r);

	run_init(&r, neither, &t);
	open_step(&r);
	CHECK_INT(r.last.code, 451);
	CHECK(r.last.local);
	CHECK(strstr(r.last.text, "neither AUTH PLAIN nor AUTH LOGIN") != NULL);
	run_free(&r);
}

/*
 * MAIL and the RCPTs in one step: pipelined when offered (DATA with them,
 * its 354 taken by nexthop_data at once), one by one else
 */
/*
 * LMTP: a next hop that answers DATA with 354 when it took no recipient
 * (RFC 2033 4.2 says DATA must fail then) is a failure, not a stream: its
 * end of data would have no reply to wait for (the count of them wrapped
 * below zero, and a close then made a 451 for each of 2^32 recipients).
 * Both ways DATA goes: alone, and pipelined with the envelope.
 */
static void
test_lmtp_354_without_recipient(void)
{
	static const char *const alone[] = {
		"220 lmtp\r\n", "250 lmtp\r\n", "250 ok\r\n", "550 5.1.1 unknown\r\n",
		"354 go\r\n", NULL,
	};
	static const char *const piped[] = {
		"220 lmtp\r\n", "250-lmtp\r\n250 PIPELINING\r\n", "250 ok\r\n",
		"550 5.1.1 unknown\r\n", "354 go\r\n", NULL,
	};
	const char		*rcpts[] = { "a@x" };
	struct nexthop_target	 t = smtp_target;
	struct run		 r;

	t.lmtp = true;
	run_init(&r, alone, &t);
	open_to_data(&r, (const char *const[]){ "a@x", NULL });
	CHECK_INT(r.last.code, 451);
	CHECK(r.last.local);
	CHECK(strstr(r.last.text, "no recipient") != NULL);
	CHECK(!nexthop_alive(r.nh));
	CHECK(nexthop_end(r.nh, on_step, &r) == -1);
	run_free(&r);

	run_init(&r, piped, &t);
	open_envelope(&r, rcpts, 1);
	CHECK_INT(r.last.code, 451);
	CHECK(r.last.local);
	CHECK(!nexthop_alive(r.nh));
	CHECK(nexthop_data(r.nh, on_step, &r) == -1);
	run_free(&r);
}

static void
test_envelope(bool pipelining)
{
	static const char *const piped[] = {
		"220 x\r\n", "250-x\r\n250 PIPELINING\r\n", "250 2.1.0 ok\r\n",
		"550 5.1.1 unknown\r\n", "250 2.1.5 ok\r\n", "354 go\r\n", "250 2.0.0 queued\r\n", NULL,
	};
	static const char *const plain[] = {
		"220 x\r\n", "250 x\r\n", "250 2.1.0 ok\r\n",
		"550 5.1.1 unknown\r\n", "250 2.1.5 ok\r\n", NULL,
	};
	const char	*rcpts[] = { "nobody@x", "b@x" };
	struct run	 r;

	run_init(&r, pipelining ? piped : plain, &smtp_target);
	open_envelope(&r, rcpts, 2);
	CHECK_INT(r.last.code, 250);
	CHECK_STR(r.last.enhanced, "2.1.0");
	CHECK_INT((int)nexthop_rcpt_results(r.nh), 2);
	CHECK_INT(nexthop_rcpt_result(r.nh, 0)->code, 550);
	CHECK_STR(nexthop_rcpt_result(r.nh, 0)->text, "unknown");
	CHECK_INT(nexthop_rcpt_result(r.nh, 1)->code, 250);
	CHECK_INT((int)nexthop_accepted(r.nh), 1);
	CHECK(strstr(r.peer.got, "MAIL FROM:<s@x>\nRCPT TO:<nobody@x>\nRCPT TO:<b@x>\n") != NULL);
	if (!pipelining) {
		CHECK(strstr(r.peer.got, "DATA") == NULL);
		CHECK(nexthop_alive(r.nh));
		run_free(&r);
		return;
	}
	/* the next hop reads the body now: no RSET, no pool, and no second DATA */
	CHECK(strstr(r.peer.got, "RCPT TO:<b@x>\nDATA\n") != NULL);
	CHECK(!nexthop_alive(r.nh));
	run_free(&r);

	/* again, streaming the body after the 354 that came with the envelope */
	run_init(&r, piped, &smtp_target);
	open_envelope(&r, rcpts, 2);
	CHECK_INT(r.replies, 2);	/* open, envelope: no callback for the 354 */
	CHECK(nexthop_data(r.nh, on_step, &r) == 1);
	CHECK(nexthop_write(r.nh, "hi\r\n", 4) >= 0);
	CHECK(nexthop_end(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 250);
	r.peer.body[r.peer.body_len] = '\0';
	CHECK_STR(r.peer.body, "hi\r\n.\r\n");
	CHECK(strstr(r.peer.got, "DATA\nDATA") == NULL);
	CHECK(nexthop_alive(r.nh));
	run_free(&r);
}

/* the pipelined DATA refused (no valid recipient yet, say): DATA is sent again */
static void
test_envelope_data_refused(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250-x\r\n250 PIPELINING\r\n", "250 2.1.0 ok\r\n",
		"250 2.1.5 ok\r\n", "451 4.3.0 not now\r\n", "354 go\r\n", NULL,
	};
	const char	*rcpts[] = { "a@x" };
	struct run	 r;

	run_init(&r, script, &smtp_target);
	open_envelope(&r, rcpts, 1);
	CHECK_INT(r.last.code, 250);
	CHECK(nexthop_alive(r.nh));
	CHECK(nexthop_data(r.nh, on_step, &r) == 0);
	CHECK(wait_step(&r));
	CHECK_INT(r.last.code, 354);
	CHECK(strstr(r.peer.got, "RCPT TO:<a@x>\nDATA\nDATA\n") != NULL);
	run_free(&r);
}

static void
test_envelope_mail_refused(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250 x\r\n", "553 5.7.1 no\r\n", NULL,
	};
	const char	*rcpts[] = { "a@x" };
	struct run	 r;

	run_init(&r, script, &smtp_target);
	open_envelope(&r, rcpts, 1);
	CHECK_INT(r.last.code, 553);
	CHECK_INT(nexthop_rcpt_result(r.nh, 0)->code, 0);	/* never sent */
	CHECK(strstr(r.peer.got, "RCPT") == NULL);
	run_free(&r);
}

/* the reference: a "." at the start of a line doubled */
static void
stuff(const char *in, char *out)
{
	bool bol = true;

	for (; *in != '\0'; in++) {
		if (bol && *in == '.')
			*out++ = '.';
		*out++ = *in;
		bol = *in == '\n';
	}
	*out = '\0';
}

/* a body cut in two at every octet: the stuffing is the same */
static void
test_stuffing_splits(void)
{
	static const char *const script[] = {
		"220 x\r\n", "250 x\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n",
		"250 done\r\n", NULL,
	};
	const char	*body = ".\r\n..\r\nab.\r\n.x\r\n\r\n...\r\n.";
	char		 want[256];
	size_t		 len = strlen(body);
	int		 bad = 0;

	stuff(body, want);
	strcat(want, "\r\n.\r\n");	/* no final CRLF in the body: one is added */
	for (size_t i = 0; i <= len; i++) {
		struct run r;

		run_init(&r, script, &smtp_target);
		nexthop_open(r.nh, on_step, &r);
		wait_step(&r);
		nexthop_mail(r.nh, "s@x", NULL, 0, on_step, &r);
		wait_step(&r);
		nexthop_rcpt(r.nh, "a@x", NULL, on_step, &r);
		wait_step(&r);
		nexthop_data(r.nh, on_step, &r);
		wait_step(&r);
		nexthop_write(r.nh, body, i);
		nexthop_write(r.nh, body + i, len - i);
		nexthop_end(r.nh, on_step, &r);
		if (!wait_step(&r) || r.last.code != 250)
			bad++;
		r.peer.body[r.peer.body_len] = '\0';
		if (strcmp(r.peer.body, want) != 0)
			bad++;
		run_free(&r);
	}
	CHECK_INT(bad, 0);
}

int
main(void)
{
	test_stuffing_splits();
	test_envelope(true);
	test_envelope(false);
	test_envelope_mail_refused();
	test_envelope_data_refused();
	test_transaction();
	test_size_limit();
	test_helo_fallback();
	test_lmtp();
	test_lmtp_close_after_first();
	test_lmtp_354_without_recipient();
	test_malformed();
	test_long_reply();
	test_timeout();
	test_close_mid_data();
	test_slow_reader();
	test_body_linger();
	test_require_tls();
	test_auth_needs_tls();
	test_auth_login();
	return tap_done();
}
