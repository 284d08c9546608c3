/*
 * fuzz_nexthop.c -- libFuzzer target for nexthop.c, the next-hop client,
 * against a next hop that says anything: the fuzzer's octets are all it
 * sends, then it closes.
 *
 * Input: a flag octet ([0] & 1 LMTP, & 2 the envelope in one step, else
 * MAIL and RCPT one by one, & 4 AUTH, & 0x38 the body's chunk size),
 * a length octet n, n octets of message text (made into CRLF lines), then
 * what the next hop says: segments, each a length octet and its octets,
 * one said whenever the client waits (a reply, part of one, several, or
 * one out of turn), and the end of file after the last.  The client goes as far as the replies let it:
 * open, envelope (two recipients), DATA, the body, the final dot, RSET,
 * QUIT.
 * Checked: every reply given to the caller has a code 200-599, printable
 * text with '\n' between lines, an enhanced code of the reply's class or
 * none; a local one is 451 (or SIZE's 552); callbacks only while a step is
 * in flight, never from inside a call, LMTP's at most one per recipient;
 * a dead client refuses every step; what reached the next hop after DATA
 * is the body dot-stuffed and ended by one CRLF "." CRLF; nothing leaks.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/util.h>

#include "nexthop.h"
#include "fuzz.h"

enum phase { P_OPEN, P_MAIL, P_RCPT1, P_RCPT2, P_ENVELOPE, P_DATA, P_END, P_RSET, P_DONE };

struct drive {
	struct nexthop	*nh;
	enum phase	 phase;
	bool		 in_flight;	/* a step was started and not answered */
	bool		 in_call;	/* inside a nexthop_* call */
	bool		 next;		/* answered: the next step is due */
	bool		 ok;		/* ... and the reply was 2xx (354 for DATA) */
	bool		 lmtp;
	unsigned	 lmtp_index, lmtp_count;	/* LMTP end: the next reply's, theirs */
	bool		 wrote_end;	/* the body and the final dot were asked */
};

static void
check_reply(const struct nexthop_reply *r)
{
	const char *p;

	REQUIRE(r->code >= 200 && r->code <= 599);
	REQUIRE(strlen(r->text) < NEXTHOP_TEXT_MAX);
	for (p = r->text; *p != '\0'; p++)
		REQUIRE(*p == '\n' || (*p >= 0x20 && *p <= 0x7e));
	if (r->enhanced[0] != '\0') {
		REQUIRE(r->enhanced[0] - '0' == r->code / 100);
		REQUIRE(r->enhanced[1] == '.');
	}
	if (r->local)
		REQUIRE(r->code == 451 || r->code == 552);
}

static void
on_step(void *arg, struct nexthop *nh, const struct nexthop_reply *r)
{
	struct drive *d = arg;

	REQUIRE(nh == d->nh);
	REQUIRE(!d->in_call);
	REQUIRE(d->in_flight);
	check_reply(r);
	if (d->phase == P_END && d->lmtp) {
		/*
		 * one reply per recipient taken at RCPT (a local failure too):
		 * at most two, numbered in order, of one count
		 */
		REQUIRE(r->count >= 1 && r->count <= 2);
		REQUIRE(r->index == d->lmtp_index);
		REQUIRE(d->lmtp_count == 0 || r->count == d->lmtp_count);
		d->lmtp_count = r->count;
		d->lmtp_index++;
		if (r->index + 1 < r->count)
			return;
	}
	d->in_flight = false;
	d->next = true;
	d->ok = d->phase == P_DATA ? r->code == 354 : r->code / 100 == 2;
}

/* starts a step: false when the client refused it (dead, or a step in flight) */
static bool
start(struct drive *d, int rc)
{
	d->in_call = false;
	REQUIRE(!d->in_flight);		/* steps start only once answered */
	if (rc == -1) {
		REQUIRE(!nexthop_alive(d->nh));
		return false;
	}
	d->in_flight = true;
	return true;
}

#define CALL(d, expr) ((d)->in_call = true, start((d), (expr)))

/* the message text: the fuzzer's octets as CRLF lines, no bare CR or LF */
static size_t
make_body(const uint8_t *in, size_t n, char *out)
{
	size_t i, len = 0;

	for (i = 0; i < n; i++) {
		if (in[i] == '\r')
			continue;
		if (in[i] == '\n')
			out[len++] = '\r';
		out[len++] = (char)in[i];
	}
	return len;
}

/*
 * What reached the next hop after the DATA line that got its 354 (at
 * start) is the body dot-stuffed, then
 * CRLF "." CRLF (a CRLF added if the body did not end with one); when the
 * connection ended before all of it went out, a prefix of that.
 */
static void
check_stream(const char *sent, size_t sent_len, size_t start, const char *body, size_t body_len)
{
	const char	*p, *end, *stop;
	char		*want, *got, *q;
	bool		 bol = true, whole;
	size_t		 want_len, got_len;

	/* the stream follows the DATA that had its 354 */
	REQUIRE(start >= 6 && start <= sent_len && memcmp(sent + start - 6, "DATA\r\n", 6) == 0);
	p = sent + start;
	stop = sent + sent_len;
	/* the terminator: the first "." CRLF at a line start */
	end = NULL;
	for (const char *x = p; x + 3 <= stop; x++) {
		if ((x == p || x[-1] == '\n') && memcmp(x, ".\r\n", 3) == 0) {
			end = x;
			break;
		}
	}
	whole = end != NULL;
	if (!whole)
		end = stop;
	want = malloc(body_len + 3);
	memcpy(want, body, body_len);
	want_len = body_len;
	if (body_len > 0 && !(body_len >= 2 && body[body_len - 2] == '\r' && body[body_len - 1] == '\n')) {
		memcpy(want + want_len, "\r\n", 2);
		want_len += 2;
	}
	got = malloc((size_t)(end - p) + 1);
	for (q = got; p < end; p++) {
		if (bol && *p == '.') {
			if (p + 1 == end && !whole)
				break;		/* cut between the two dots */
			REQUIRE(p + 1 < end && p[1] == '.');	/* stuffed */
			p++;
		}
		*q++ = *p;
		bol = *p == '\n';
	}
	got_len = (size_t)(q - got);
	if (whole)
		REQUIRE(got_len == want_len);
	else
		REQUIRE(got_len <= want_len);
	REQUIRE(memcmp(got, want, got_len) == 0);
	free(got);
	free(want);
}

/* the peer's side: everything the client sent so far */
static void
collect(int fd, char *sent, size_t *len, size_t cap)
{
	ssize_t n;

	while (*len < cap && (n = read(fd, sent + *len, cap - *len)) > 0)
		*len += (size_t)n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const rcpts[] = { "a@example.org", "b@example.org" };
	static char		 sent[1 << 16];
	struct nexthop_target	 t = {
		.host = "next.example", .port = 25, .helo = "front.example",
		.timeout_ms = 1000, .auth_plaintext = true,
	};
	struct event_base	*base;
	struct drive		 d;
	char			 body[512];
	size_t			 body_len, sent_len = 0, body_start = 0, chunk, off, blen;
	int			 fds[2], turns, idle = 0;
	bool			 eof = false;
	bool			 envelope;

	if (size < 2 || (size_t)data[1] + 2 > size)
		return 0;
	t.lmtp = data[0] & 1;
	envelope = data[0] & 2;
	if (data[0] & 4) {
		t.user = "user";
		t.password = "secret";
	}
	chunk = 1 + (size_t)((data[0] >> 3) & 7) * 9;
	blen = data[1];
	body_len = make_body(data + 2, blen, body);
	data += 2 + blen;
	size -= 2 + blen;

	/* the next hop: says its next segment whenever the client waits */
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
	evutil_make_socket_nonblocking(fds[0]);
	evutil_make_socket_nonblocking(fds[1]);
	base = event_base_new();
	REQUIRE(base != NULL);
	memset(&d, 0, sizeof(d));
	d.lmtp = t.lmtp;
	d.nh = nexthop_create(base, NULL, &t, fds[0]);
	REQUIRE(d.nh != NULL);
	d.phase = P_OPEN;
	if (!CALL(&d, nexthop_open(d.nh, on_step, &d)))
		d.phase = P_DONE;

	for (turns = 0; d.phase != P_DONE && turns < 10000; turns++) {
		if (!d.next) {
			/* idle turns: the client has read all it could */
			event_base_loop(base, eof ? EVLOOP_ONCE : EVLOOP_NONBLOCK);
			collect(fds[1], sent, &sent_len, sizeof(sent));
			if (d.next || eof || ++idle < 3)
				continue;
			idle = 0;
			if (size > 0) {		/* the next segment */
				size_t len = data[0] < size - 1 ? data[0] : size - 1;

				REQUIRE(write(fds[1], data + 1, len) == (ssize_t)len);
				data += 1 + len;
				size -= 1 + len;
			} else {		/* all said: the end of file */
				shutdown(fds[1], SHUT_WR);
				eof = true;
			}
			continue;
		}
		idle = 0;
		d.next = false;
		if (!d.ok && d.phase != P_RCPT1 && d.phase != P_RCPT2) {
			d.phase = P_DONE;	/* refused or failed: the client stops here */
			break;
		}
		switch (d.phase) {
		case P_OPEN:
			if (envelope) {
				d.phase = P_ENVELOPE;
				if (!CALL(&d, nexthop_envelope(d.nh, "s@example.net", "",
				    body_len, rcpts, 2, on_step, &d)))
					d.phase = P_DONE;
			} else {
				d.phase = P_MAIL;
				if (!CALL(&d, nexthop_mail(d.nh, "s@example.net", "", body_len,
				    on_step, &d)))
					d.phase = P_DONE;
			}
			break;
		case P_MAIL:
		case P_RCPT1:
			d.phase = d.phase == P_MAIL ? P_RCPT1 : P_RCPT2;
			if (!CALL(&d, nexthop_rcpt(d.nh, rcpts[d.phase == P_RCPT2], "",
			    on_step, &d)))
				d.phase = P_DONE;
			break;
		case P_RCPT2:
		case P_ENVELOPE: {
			int rc;

			if (d.phase == P_ENVELOPE) {
				REQUIRE(nexthop_rcpt_results(d.nh) <= 2);
				for (size_t k = 0; k < nexthop_rcpt_results(d.nh); k++) {
					const struct nexthop_brief *b = nexthop_rcpt_result(d.nh, k);

					REQUIRE(b != NULL);
					REQUIRE(b->code == 0 || (b->code >= 200 && b->code <= 599));
				}
			}
			d.phase = P_DATA;
			d.in_call = true;
			rc = nexthop_data(d.nh, on_step, &d);
			d.in_call = false;
			if (rc == 1) {		/* the pipelined DATA had its 354 */
				d.next = d.ok = true;
				break;
			}
			if (!start(&d, rc))
				d.phase = P_DONE;
			break;
		}
		case P_DATA:
			/* the client waited for 354: DATA is out, the stream starts here */
			collect(fds[1], sent, &sent_len, sizeof(sent));
			body_start = sent_len;
			for (off = 0; off < body_len; off += chunk) {
				size_t len = body_len - off < chunk ? body_len - off : chunk;

				d.in_call = true;
				if (nexthop_write(d.nh, body + off, len) == -1) {
					d.in_call = false;
					REQUIRE(!nexthop_alive(d.nh));
					break;
				}
				d.in_call = false;
			}
			d.phase = P_END;
			if (CALL(&d, nexthop_end(d.nh, on_step, &d)))
				d.wrote_end = true;
			else
				d.phase = P_DONE;
			break;
		case P_END:
			d.phase = P_RSET;
			if (!CALL(&d, nexthop_rset(d.nh, on_step, &d)))
				d.phase = P_DONE;
			break;
		case P_RSET:
		case P_DONE:
			d.phase = P_DONE;
			break;
		}
	}
	collect(fds[1], sent, &sent_len, sizeof(sent));
	if (d.wrote_end)
		check_stream(sent, sent_len, body_start, body, body_len);
	if (!nexthop_alive(d.nh)) {
		REQUIRE(nexthop_rset(d.nh, on_step, &d) == -1);
		REQUIRE(nexthop_mail(d.nh, "x@example.net", "", 0, on_step, &d) == -1);
	}
	nexthop_destroy(d.nh);
	event_base_free(base);
	close(fds[1]);
	return 0;
}
