/*
 * fuzz_session.c -- libFuzzer target for the protocol engine (session.h):
 * arbitrary client byte streams in arbitrary chunk splits, against a policy
 * that answers at once or later, accepts, rejects or returns bad verdicts.
 *
 * Input: an 8-octet header, then the client's bytes.
 *   [0] EXT_* bits offered
 *   [1] limits: small max_size, 2 recipients, short text lines, 3 bad
 *       commands, 64-octet command lines, STARTTLS, AUTH, AUTH without TLS
 *   [2] driver: chunk mode (2 bits), no hooks, no optional io callbacks,
 *       implicit TLS, fire timers, pause/resume, shut down at the end
 *   [3] policy: how often it waits, rejects, answers nonsense (2 bits each);
 *       0x40: bare LF accepted in DATA; 0x80: long generated reply texts
 *       (up to 40 lines of up to 600 octets) and, with [4] & 1, a 255-octet
 *       host name, to reach the reply builders' bounds
 *   [4..7] seed of the generator behind every other choice; [4] & 2: LMTP
 *       (LHLO, a reply per recipient, the policy's per-recipient verdicts);
 *       [4] & 4: no Received field; [4] & 8: the policy adds header fields
 *       (session_add_header) at DATA, bad ones too
 *
 * What must hold: every reply line is "ddd" SP/"-" text CRLF, at most 512
 * octets, no NUL, no bare CR or LF, 2xx-5xx, one code per multi-line reply
 * of at most 32 lines;
 * nothing is written after close; at most one ask is outstanding and only
 * the outstanding one is cancelled; a feed that takes less than it is given
 * has a reason (an ask, a pause, closing); a message that reaches DATA_END
 * arrived with CRLF line ends, within max_size and max_text_line, was never
 * aborted, and its size is what the data hook saw (never a NUL, and CRLF
 * line ends also when a bare LF is accepted); when the policy waits on
 * DATA_END, the input taken so far ends in CRLF "." CRLF (no smuggling);
 * closed comes once.  BDAT: the same, but a message may end mid-line and
 * the input stops at the chunk's end; BODY=BINARYMIME data is not text.
 * LMTP: a recipient verdict is taken only while DATA_END is asked, for a
 * recipient that exists.  Trace fields: the data starts with the Received
 * field trace_received() makes of the envelope (octet for octet but the
 * date) and then the fields added at DATA, as trace_header_add() makes them
 * (the same verdict for each call); they do not count in the size.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "session.h"
#include "trace.h"
#include "fuzz.h"

#define HEADER		8
#define REPLY_MAX	512	/* RFC 5321 4.5.3.1.5, incl. CRLF */
#define REPLY_LINES	32	/* lines in one reply */
#define NO_EVENT	SEV_COUNT

struct harness {
	uint32_t		 rng;
	unsigned		 wait_pct, reject_pct, weird_pct;
	bool			 long_texts;
	char			 text[40 * 602];	/* a generated verdict text */
	const struct session_config *cfg;

	/* the policy */
	struct session		*s;
	enum session_event	 pending;	/* outstanding HOOK_WAIT, or NO_EVENT */
	bool			 paused;
	unsigned		 closed_calls;

	/* the message in progress, as the policy sees it */
	bool			 in_data;	/* 354 given, no DATA_END or abort yet */
	bool			 aborted;
	uint64_t		 data_bytes;
	size_t			 data_line;	/* octets of the current line */
	int			 data_last;	/* last octet seen, or -1 */
	bool			 end_waiting;	/* DATA_END answered HOOK_WAIT */
	bool			 end_bdat;	/* ... for a BDAT LAST */
	bool			 binary;	/* the last MAIL said BODY=BINARYMIME */
	bool			 add_headers;	/* the policy adds fields at DATA */
	char			 added[TRACE_ADDED_MAX];	/* what they should be */
	size_t			 added_len;
	bool			 trace_known;	/* expect holds this message's trace fields */
	char			 expect[TRACE_RECEIVED_MAX + TRACE_ADDED_MAX];
	size_t			 expect_len, expect_pos, date_at;	/* date: 31 octets, not compared */

	/* the transport */
	bool			 closed;
	bool			 tls_asked;
	unsigned		 timer_ms;
	char			 line[REPLY_MAX + 1];
	size_t			 line_len;
	char			 cont_code[3];	/* code of an unfinished multi-line reply */
	bool			 in_multi;
	unsigned		 reply_lines;	/* lines of the reply so far */
};

static uint32_t
rnd(struct harness *h)
{
	/* xorshift32; a zero seed would stay zero */
	uint32_t x = h->rng != 0 ? h->rng : 0x9e3779b9u;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return h->rng = x;
}

static bool
chance(struct harness *h, unsigned pct)
{
	return rnd(h) % 100 < pct;
}

/* --- the transport ------------------------------------------------------ */

static void
check_reply_line(struct harness *h, const char *l, size_t len)
{
	size_t	i;

	REQUIRE(len >= 6 && len <= REPLY_MAX);	/* "ddd" SP CRLF at least */
	REQUIRE(l[len - 2] == '\r' && l[len - 1] == '\n');
	REQUIRE(l[0] >= '2' && l[0] <= '5');
	REQUIRE(l[1] >= '0' && l[1] <= '9' && l[2] >= '0' && l[2] <= '9');
	REQUIRE(l[3] == ' ' || l[3] == '-');
	for (i = 0; i < len - 2; i++)
		REQUIRE(l[i] != '\0' && l[i] != '\r' && l[i] != '\n');
	if (h->in_multi)
		REQUIRE(memcmp(h->cont_code, l, 3) == 0);
	else
		h->reply_lines = 0;
	REQUIRE(++h->reply_lines <= REPLY_LINES);
	h->in_multi = l[3] == '-';
	memcpy(h->cont_code, l, 3);
}

static void
io_write(void *ctx, const char *buf, size_t len)
{
	struct harness	*h = ctx;
	size_t		 i;

	REQUIRE(!h->closed);
	REQUIRE(len > 0);
	for (i = 0; i < len; i++) {
		REQUIRE(h->line_len < sizeof(h->line));	/* else the line is > 512 */
		h->line[h->line_len++] = buf[i];
		if (buf[i] == '\n') {
			check_reply_line(h, h->line, h->line_len);
			h->line_len = 0;
		}
	}
}

static void
io_close(void *ctx)
{
	struct harness	*h = ctx;

	REQUIRE(!h->closed);
	REQUIRE(h->line_len == 0 && !h->in_multi);	/* the last reply is whole */
	h->closed = true;
}

static void
io_wake(void *ctx)
{
	(void)ctx;
}

static void
io_timer(void *ctx, unsigned ms)
{
	struct harness	*h = ctx;

	REQUIRE(!h->closed);
	h->timer_ms = ms;
}

static void
io_starttls(void *ctx)
{
	struct harness	*h = ctx;

	REQUIRE(!h->closed);
	REQUIRE(!h->tls_asked);
	h->tls_asked = true;
}

/* --- the policy --------------------------------------------------------- */

static const struct verdict weird[] = {
	{ true, 0, NULL },
	{ false, 0, NULL },
	{ false, 550, "5.7.1 Go away" },
	{ false, 450, "4.7.1 Later" },
	{ true, 250, "2.1.0 Fine\nsecond line\nthird" },
	{ false, 250, "a rejection with a 2xx code" },
	{ true, 550, NULL },
	{ false, 550, "text\r\nRSET" },
	{ false, 550, "\x01 control" },
	{ true, 999, NULL },
	{ false, 554, "4.7.1 class mismatch" },
	{ true, 220, "Hi" },
	{ true, 354, NULL },
	{ true, 221, "Bye" },
	{ true, 235, "2.7.0 Welcome" },
	{ false, 421, "4.3.2 Closing" },
	{ false, 421, NULL },
	{ false, 535, "5.7.8 Bad credentials" },
	{ false, 550, "" },
	{ false, 550, "\n\n" },
	{ false, 550, "5.1.1 " },
	{ true, 250, "x\ty" },
	{ true, 250, "\xc3\xa9t\xc3\xa9" },
	{ false, 550, "5.7.1 1234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"
	    "12345678901234567890123456789012345678901234567890123456789012345678901234567890" },
	{ false, 550, "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20\n"
	    "21\n22\n23\n24\n25\n26\n27\n28\n29\n30\n31\n32\n33\n34\n35\n36\n37\n38\n39\n40" },
};

/*
 * A long reply text: up to 40 lines, their widths often at the bounds that
 * matter (240 octets after a 255-octet host name, 496 for a text line, 512
 * for a reply line), sometimes an enhanced code first.  Most texts are valid
 * (lines of at most 496 printable octets), so that long ones reach the
 * reply builders; the rest may have longer lines or a control octet.
 */
static struct verdict
long_verdict(struct harness *h)
{
	static const size_t	 widths[] = { 0, 1, 200, 239, 240, 241, 250, 400,
	    450, 495, 496, 497, 500, 511, 512, 600 };
	size_t			 lines = 1 + rnd(h) % 40, len = 0, w;
	bool			 accept = chance(h, 60), valid = chance(h, 80);

	if (chance(h, 30)) {
		memcpy(h->text, accept ? "2.0.0 " : chance(h, 50) ? "5.7.1 " : "4.7.1 ", 6);
		len = 6;
	}
	for (size_t i = 0; i < lines; i++) {
		if (i > 0)
			h->text[len++] = '\n';
		w = chance(h, 50) ? widths[rnd(h) % (sizeof(widths) / sizeof(widths[0]))] :
		    rnd(h) % 601;
		if (valid && w > 496)
			w = 496 - (i == 0 ? len : 0);
		for (size_t k = 0; k < w; k++)
			h->text[len++] = (char)(0x20 + rnd(h) % 0x5f);
	}
	if (!valid && len > 0 && chance(h, 30))
		h->text[rnd(h) % len] = (char)(rnd(h) % 0x20);
	h->text[len] = '\0';
	if (accept)
		return (struct verdict){ true, chance(h, 70) ? 0 : 250, h->text };
	return (struct verdict){ false, chance(h, 50) ? 0 : chance(h, 50) ? 550 : 450,
	    h->text };
}

static struct verdict
choose_verdict(struct harness *h)
{
	if (h->long_texts && chance(h, 30))
		return long_verdict(h);
	if (chance(h, h->weird_pct))
		return weird[rnd(h) % (sizeof(weird) / sizeof(weird[0]))];
	if (chance(h, h->reject_pct))
		return (struct verdict){ false, 0, NULL };
	return (struct verdict){ true, 0, NULL };
}

static void
check_args(struct harness *h, enum session_event ev,
    const struct session_event_args *a)
{
	REQUIRE(a != NULL);
	switch (ev) {
	case SEV_HELO:
	case SEV_EHLO:
	case SEV_VRFY:
	case SEV_EXPN:
		REQUIRE(a->arg != NULL && strlen(a->arg) < REPLY_MAX);
		REQUIRE(strpbrk(a->arg, "\r\n") == NULL);
		break;
	case SEV_MAIL:
	case SEV_RCPT:
		REQUIRE(a->path != NULL && a->path->address != NULL);
		REQUIRE(strlen(a->path->address) + 2 <= SMTP_PATH_MAX);
		REQUIRE(strpbrk(a->path->address, "\r\n") == NULL);
		REQUIRE(a->path->nparams <= SMTP_PARAMS_MAX);
		if (ev == SEV_MAIL) {
			const struct smtp_param *body = proto_param(a->path, "BODY");

			h->binary = body != NULL && body->value != NULL &&
			    strcasecmp(body->value, "BINARYMIME") == 0;
		}
		break;
	case SEV_AUTH:
		REQUIRE(a->auth != NULL && a->auth->method != NULL &&
		    a->auth->username != NULL && a->auth->password != NULL &&
		    a->auth->authzid != NULL);
		break;
	case SEV_DATA_END:
		/* the message the policy saw is the message the engine accepts */
		REQUIRE(h->in_data && !h->aborted);
		/* the trace fields came first, all of them */
		REQUIRE(h->trace_known || (!h->cfg->received_header && h->added_len == 0));
		REQUIRE(!h->trace_known || h->expect_pos == h->expect_len);
		REQUIRE(a->size == h->data_bytes);
		REQUIRE(h->cfg->max_size == 0 || a->size <= h->cfg->max_size);
		h->end_bdat = strcmp(session_state_name(h->s), "bdat") == 0;
		REQUIRE(h->end_bdat || h->data_last == -1 ||
		    (h->data_last == '\n' && h->data_line == 0));
		REQUIRE(!h->end_bdat || h->binary || h->data_last != '\r');
		h->in_data = false;
		break;
	default:
		break;
	}
}

/* LMTP: verdicts for some recipients, some that do not exist. */
static void
recipient_verdicts(struct harness *h, bool asked)
{
	size_t n = session_recipient_count(h->s);

	while (chance(h, 50)) {
		size_t		i = rnd(h) % (n + 2);
		struct verdict	v = choose_verdict(h);
		int		rc = session_recipient_verdict(h->s, i, &v);

		REQUIRE(rc == ((asked && h->cfg->lmtp && i < n) ? 0 : -1));
	}
}

/*
 * At DATA: a few header fields, good and bad (CR, LF, controls, long words,
 * bad names); each call must get what trace_header_add() says, and the
 * good ones are what the data must start with after the Received field.
 */
static void
add_headers(struct harness *h, struct session *s)
{
	static const char *const names[] = { "X-Fuzz", "X A", "X:B", "", "Received" };
	char		 value[1200];
	const char	*why, *why2;
	unsigned	 n = rnd(h) % 4;

	h->added_len = 0;	/* a new DATA starts afresh */
	if (!h->add_headers || s == NULL)
		return;
	for (unsigned k = 0; k < n; k++) {
		const char	*name = names[rnd(h) % 5];
		size_t		 vlen = chance(h, 10) ? rnd(h) % sizeof(value) : rnd(h) % 200;
		size_t		 len = h->added_len;
		int		 rc, want;

		for (size_t i = 0; i < vlen; i++)
			value[i] = chance(h, 15) ? ' ' : chance(h, 2) ?
			    (char)(rnd(h) % 0x20) : (char)(0x21 + rnd(h) % 0x5e);
		want = trace_header_add(h->added, &len, sizeof(h->added), name,
		    strlen(name), value, vlen, &why2);
		rc = session_add_header(s, name, strlen(name), value, vlen, &why);
		REQUIRE(rc == want);
		if (rc == 0)
			h->added_len = len;
	}
}

/* The trace fields the data must start with: the Received field and the added ones. */
static void
trace_expect(struct harness *h, struct session *s)
{
	bool			 ext = false;
	const char		*helo = session_helo(s, &ext);
	const struct smtp_path	*rcpt = session_recipient_count(s) == 1 ?
				    session_recipient(s, 0, NULL) : NULL;
	struct trace_received	 r = {
		.helo = helo, .reverse = session_reverse_name(s),
		.addr = session_peer(s)->remote_addr, .by = h->cfg->hostname,
		.protocol = trace_protocol(h->cfg->lmtp, ext, session_tls(s) != NULL,
		    session_user(s) != NULL),
		.id = session_id(s), .rcpt = rcpt != NULL ? rcpt->address : NULL,
		.when = 0,
	};
	size_t			 n = 0;

	if (h->cfg->received_header) {
		n = trace_received(h->expect, TRACE_RECEIVED_MAX, &r);
		REQUIRE(n > 33);
		h->date_at = n - 33;	/* the date, then CRLF */
	}
	memcpy(h->expect + n, h->added, h->added_len);
	h->expect_len = n + h->added_len;
	h->expect_pos = 0;
	h->trace_known = true;
}

static enum hook_result
hook_ask(void *ctx, struct session *s, enum session_event ev,
    const struct session_event_args *args, struct verdict *v)
{
	struct harness	*h = ctx;

	REQUIRE(ev < SEV_COUNT);
	REQUIRE(h->pending == NO_EVENT);	/* one ask at a time */
	REQUIRE(!h->closed);
	REQUIRE(session_event_name(ev) != NULL);
	REQUIRE(h->s == NULL || h->s == s);	/* NULL: inside session_create */
	check_args(h, ev, args);
	if (ev == SEV_DATA)
		add_headers(h, s);
	if (ev == SEV_DATA_END)
		recipient_verdicts(h, true);
	if (chance(h, h->wait_pct)) {
		h->pending = ev;
		h->end_waiting = ev == SEV_DATA_END;
		return HOOK_WAIT;
	}
	*v = choose_verdict(h);
	return HOOK_DONE;
}

static void
hook_cancel(void *ctx, struct session *s, enum session_event ev)
{
	struct harness	*h = ctx;

	(void)s;
	REQUIRE(h->pending == ev);
	h->pending = NO_EVENT;
}

static void
hook_outcome(void *ctx, struct session *s, enum session_event ev, int code)
{
	struct harness	*h = ctx;

	(void)s;
	REQUIRE(ev < SEV_COUNT);
	REQUIRE(code >= 200 && code <= 599);
	if (ev == SEV_DATA && code == 354) {
		h->in_data = true;
		h->aborted = false;
		h->data_bytes = 0;
		h->data_line = 0;
		h->data_last = -1;
		h->trace_known = false;
	}
}

static void
hook_data(void *ctx, struct session *s, const char *buf, size_t len)
{
	struct harness	*h = ctx;
	size_t		 i;

	REQUIRE(h->in_data && !h->aborted);
	REQUIRE(len > 0);
	if (!h->trace_known)
		trace_expect(h, s);
	for (; len > 0 && h->expect_pos < h->expect_len; buf++, len--, h->expect_pos++) {
		if (!h->cfg->received_header || h->expect_pos < h->date_at ||
		    h->expect_pos >= h->date_at + 31)
			REQUIRE(*buf == h->expect[h->expect_pos]);
	}
	if (len == 0)
		return;
	h->data_bytes += len;
	REQUIRE(h->cfg->max_size == 0 || h->data_bytes <= h->cfg->max_size);
	if (h->binary && strcmp(session_state_name(s), "bdat") == 0)
		return;		/* BINARYMIME: octets, not text */
	REQUIRE(memchr(buf, '\0', len) == NULL);	/* a NUL fails the message */
	for (i = 0; i < len; i++) {
		/* CRLF only: a CR is followed by LF, an LF follows a CR */
		if (h->data_last == '\r')
			REQUIRE(buf[i] == '\n');
		if (buf[i] == '\n') {
			REQUIRE(h->data_last == '\r');
			REQUIRE(h->cfg->max_text_line == 0 ||
			    h->data_line + 1 <= h->cfg->max_text_line);
			h->data_line = 0;
		} else
			h->data_line++;
		h->data_last = (unsigned char)buf[i];
	}
}

static void
hook_abort(void *ctx, struct session *s, enum session_abort why)
{
	struct harness	*h = ctx;

	(void)s;
	REQUIRE(why <= ABORT_TOO_MANY_HOPS);
	h->aborted = true;
}

static void
hook_closed(void *ctx, struct session *s)
{
	struct harness	*h = ctx;

	(void)s;
	REQUIRE(h->pending == NO_EVENT);	/* cancelled first */
	h->closed_calls++;
}

/* --- the driver --------------------------------------------------------- */

static char	long_host[256];

static void
configure(struct session_config *cfg, uint8_t ext, uint8_t lim,
    uint8_t policy, uint8_t seed)
{
	session_config_init(cfg);
	cfg->hostname = "fuzz.example";
	if ((policy & 0x80) && (seed & 1)) {
		/* the longest name server.hostname takes: 255 octets */
		for (size_t i = 0; i < 255; i++)
			long_host[i] = i % 64 == 63 ? '.' : 'h';
		cfg->hostname = long_host;
	}
	cfg->accept_bare_lf = (policy & 0x40) != 0;
	cfg->extensions = ext & EXT_ALL;
	if (lim & 0x01)
		cfg->max_size = 100;
	if (lim & 0x02)
		cfg->max_recipients = 2;
	if (lim & 0x04)
		cfg->max_text_line = 40;
	if (lim & 0x08)
		cfg->max_bad_commands = 3;
	if (lim & 0x10)
		cfg->max_line = 64;
	if (lim & 0x20)
		cfg->starttls = true;
	if (lim & 0x40)
		cfg->auth_methods = AUTH_PLAIN | AUTH_LOGIN;
	if (lim & 0x80)
		cfg->auth_without_tls = true;
}

static size_t
chunk_size(struct harness *h, unsigned mode, size_t left)
{
	size_t	n;

	switch (mode) {
	case 0:
		n = left;
		break;
	case 1:
		n = 1;
		break;
	case 2:
		n = 1 + rnd(h) % 16;
		break;
	default:
		n = 1 + rnd(h) % 600;
		break;
	}
	return n < left ? n : left;
}

/* Every line is one line; a JSON one is printable UTF-8 between braces. */
static void
quiet_log(void *arg, enum log_level level, const char *line)
{
	size_t	len, n;

	(void)arg;
	(void)level;
	REQUIRE(line != NULL);
	len = strlen(line);
	REQUIRE(memchr(line, '\n', len) == NULL && memchr(line, '\r', len) == NULL);
	if (log_get_format() != LOG_JSON)
		return;
	REQUIRE(len >= 2 && line[0] == '{' && line[len - 1] == '}');
	for (size_t i = 0; i < len; i += n) {
		REQUIRE((unsigned char)line[i] >= 0x20);
		REQUIRE((n = log_utf8_len((const unsigned char *)line + i, len - i)) != 0);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct session_hooks hooks = {
		hook_ask, hook_cancel, hook_outcome, hook_data, hook_abort,
		hook_closed,
	};
	static const struct session_tls tls = { "TLSv1.3", "TLS_AES_128_GCM_SHA256", "" };
	struct session_io	 io = { io_write, io_close, io_wake, io_timer, io_starttls, NULL };
	struct session_config	 cfg;
	struct session_peer	 peer = { "192.0.2.1", 40000, "127.0.0.1", 25, NULL, "", 0 };
	struct harness		 h;
	const char		*in;
	size_t			 len, off, n, want;
	unsigned		 mode, stalls = 0;
	uint8_t			 drv;
	bool			 with_hooks;

	if (size < HEADER)
		return 0;
	log_set_level(LOG_DEBUG);		/* the log lines are code too */
	log_set_format(size % 2 ? LOG_JSON : LOG_TEXT);	/* both, the input unchanged */
	log_set_sink(quiet_log, NULL);
	memset(&h, 0, sizeof(h));
	configure(&cfg, data[0], data[1], data[3], data[4]);
	cfg.lmtp = (data[4] & 2) != 0;
	cfg.received_header = (data[4] & 4) == 0;
	h.add_headers = (data[4] & 8) != 0;
	drv = data[2];
	mode = drv & 0x03;
	with_hooks = !(drv & 0x04);
	if (drv & 0x08) {
		io.wake = NULL;
		io.timer = NULL;
		io.starttls = NULL;
	}
	if (drv & 0x10)
		peer.tls = &tls;
	h.wait_pct = (const unsigned[]){ 0, 25, 50, 90 }[data[3] & 3];
	h.reject_pct = (const unsigned[]){ 0, 20, 40, 80 }[(data[3] >> 2) & 3];
	h.weird_pct = (const unsigned[]){ 0, 10, 25, 50 }[(data[3] >> 4) & 3];
	h.long_texts = (data[3] & 0x80) != 0;
	h.rng = (uint32_t)data[4] | (uint32_t)data[5] << 8 |
	    (uint32_t)data[6] << 16 | (uint32_t)data[7] << 24;
	h.pending = NO_EVENT;
	h.cfg = &cfg;
	in = (const char *)data + HEADER;
	len = size - HEADER;

	h.s = NULL;
	if ((h.s = session_create(&cfg, with_hooks ? &hooks : NULL, &h, &io, &h,
	    &peer)) == NULL)
		return 0;
	REQUIRE(session_state_name(h.s) != NULL);

	for (off = 0; off < len && !h.closed; ) {
		/* answer a waiting ask before the next feed, most of the time */
		if (h.pending != NO_EVENT && chance(&h, 80)) {
			struct verdict v;

			if (h.pending == SEV_DATA_END)
				recipient_verdicts(&h, true);
			else if (chance(&h, 5))
				recipient_verdicts(&h, false);	/* refused: no DATA_END asked */
			v = choose_verdict(&h);

			h.pending = NO_EVENT;
			REQUIRE(session_decide(h.s, &v) == 0);
			continue;
		}
		if (h.pending == NO_EVENT && chance(&h, 2)) {
			struct verdict v = { true, 0, NULL };

			REQUIRE(session_decide(h.s, &v) == -1);	/* nothing to answer */
		}
		if (h.tls_asked && chance(&h, 50)) {
			h.tls_asked = false;
			session_tls_started(h.s, &tls);
			continue;
		}
		if ((drv & 0x20) && h.timer_ms != 0 && chance(&h, 3)) {
			session_timeout(h.s);	/* cancels a waiting ask */
			continue;
		}
		if (drv & 0x40) {
			if (!h.paused && chance(&h, 5)) {
				h.paused = true;
				session_pause(h.s);
			} else if (h.paused && chance(&h, 50)) {
				h.paused = false;
				session_resume(h.s);
			}
		}
		want = chunk_size(&h, mode, len - off);
		h.end_waiting = false;
		n = session_feed(h.s, in + off, want);
		REQUIRE(n <= want);
		off += n;
		if (h.end_waiting && h.pending == SEV_DATA_END && !h.end_bdat) {
			/* the engine stops right after the final dot: CRLF "." CRLF */
			REQUIRE(off >= 5 && memcmp(in + off - 5, "\r\n.\r\n", 5) == 0);
		}
		if (n < want) {
			/* the engine holds back only for a reason */
			REQUIRE(h.pending != NO_EVENT || h.paused ||
			    session_closing(h.s));
			if (h.paused && h.pending == NO_EVENT && !session_closing(h.s)) {
				h.paused = false;
				session_resume(h.s);
			}
			if (session_closing(h.s) && h.pending == NO_EVENT &&
			    !h.paused && ++stalls > 4)
				break;
		}
		REQUIRE(session_state_name(h.s) != NULL);
	}

	if (!h.closed) {
		if (drv & 0x80)
			session_shutdown(h.s);
		else
			session_eof(h.s);
	}
	if (h.pending != NO_EVENT && chance(&h, 50)) {
		struct verdict v = choose_verdict(&h);

		/* a late verdict: taken, or refused if the session closed */
		if (session_decide(h.s, &v) == 0)
			h.pending = NO_EVENT;
	}
	if (h.closed)
		REQUIRE(h.line_len == 0);
	session_destroy(h.s);
	REQUIRE(h.closed_calls == (with_hooks ? 1u : 0u));
	REQUIRE(h.pending == NO_EVENT);
	log_set_sink(NULL, NULL);
	return 0;
}
