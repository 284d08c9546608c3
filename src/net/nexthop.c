/*
 * nexthop.c -- an SMTP or LMTP client for one next hop, on the worker's event
 * base: the before-queue proxy's other half (docs/API.md, "Forwarding").
 *
 * Owns one connection to a next hop and its protocol: connect, greeting,
 * EHLO/LHLO (HELO when an SMTP server refuses EHLO), STARTTLS per the
 * target's tls, AUTH (PLAIN, or LOGIN), then MAIL, RCPT, DATA with the body streamed and
 * dot-stuffed as it arrives, the final dot, RSET and QUIT.  Each step is
 * started by its caller and answered once (LMTP's end of data: once per
 * accepted recipient) through a callback from the event loop, never from
 * inside the call.  Every wait is bounded by the target's timeout; replies
 * are read as bounded lines (a line, a reply's lines, its kept text), and
 * whatever goes wrong is a local 451 with the reason, after which the
 * connection is dead.  Knows nothing of the engine or Lua: lua_nexthop.c
 * binds it to a session.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "nexthop.h"
#include "tlsclient.h"

#define LINE_MAX_NH	2048	/* a reply line from the next hop, CRLF included */
#define LINES_MAX_NH	64	/* lines of one reply (an EHLO reply is the longest) */
#define KEEP_LINES	8	/* lines of a reply's text kept for the client */
#define OUT_HIGH	(256 * 1024)	/* default drain mark: the stream's output buffer */
#define BODY_BATCH	(64 * 1024)	/* direct: body octets held for one write (on_flush) */
#define BODY_LINGER_MS	100		/* ... for at most this long */
/*
 * LMTP's end of data has a reply per accepted recipient: with none, DATA
 * must fail (RFC 2033 4.2), and a 354 would leave no reply to wait for
 */
#define NO_RCPT_354	"DATA accepted with no recipient (RFC 2033 4.2)"

enum step {
	ST_IDLE,
	ST_CONNECT,	/* TCP connect */
	ST_GREETING,
	ST_EHLO,	/* EHLO or LHLO */
	ST_HELO,	/* the fallback */
	ST_STARTTLS,	/* its 220 */
	ST_HANDSHAKE,
	ST_EHLO2,	/* after TLS */
	ST_AUTH,	/* AUTH PLAIN's, or LOGIN's password's: 235 */
	ST_AUTH_LOGIN,	/* AUTH LOGIN: 334, the username asked */
	ST_AUTH_USER,	/* ... the username sent: 334, the password asked */
	ST_MAIL,
	ST_RCPT,
	ST_ENV_MAIL,	/* the envelope step: MAIL's reply */
	ST_ENV_RCPT,	/* ... then each RCPT's */
	ST_ENV_DATA,	/* ... then the pipelined DATA's */
	ST_DATA,	/* 354 */
	ST_STREAM,	/* body flowing: no reply expected */
	ST_END,		/* the final dot's reply(ies) */
	ST_RSET,
	ST_QUIT,
	ST_DEAD,
};

static const char *const step_names[] = {
	"idle", "connect", "greeting", "EHLO", "HELO", "STARTTLS", "TLS handshake",
	"EHLO after STARTTLS", "AUTH", "AUTH LOGIN", "AUTH LOGIN username", "MAIL", "RCPT", "MAIL", "RCPT", "DATA", "DATA", "data", "end of data",
	"RSET", "QUIT", "closed",
};

struct nexthop {
	struct event_base	*base;
	struct evdns_base	*dns;
	struct bufferevent	*bev;
	struct event		*timer;
	struct event		*flush;		/* direct: writes the output, end of the turn */
	SSL_CTX			*ssl;
	enum step		 step;
	nexthop_cb		*cb;
	void			*arg;
	/* the target, copied */
	char			*host, *helo, *user, *password, *cafile, *servername;
	int			 port;
	bool			 lmtp, auth_plaintext, no_verify;
	enum nexthop_tls	 tls;
	unsigned		 timeout_ms;
	char			 name[300];
	/* what the next hop said */
	unsigned		 ext;
	uint64_t		 size_limit;
	bool			 tls_on;
	unsigned		 accepted;	/* RCPT 2xx in this transaction */
	unsigned		 end_left;	/* LMTP replies still due */
	/* the reply being read */
	struct nexthop_reply	 r;
	size_t			 text_len;
	unsigned		 lines, kept;
	int			 first_code;
	/* the stream */
	bool			 bol;		/* the next octet starts a line */
	bool			 drain_wait;
	bool			 direct;	/* plain TCP, connected: see kick() */
	bool			 wr_on;		/* ... a partial write: EV_WRITE enabled */
	bool			 local_pending;	/* r is a local reply due from the loop */
	bool			*gone;		/* set by nexthop_destroy: a callback freed it */
	char			 why[NEXTHOP_TEXT_MAX];	/* why it is dead */
	/* the envelope step */
	char			**env_rcpts;
	size_t			 env_n, env_sent, env_got;
	struct nexthop_brief	*env_res;
	size_t			 env_cap;	/* env_res's room */
	struct nexthop_reply	 env_mail;	/* MAIL's reply */
	bool			 env_pipelined;
	bool			 env_354;	/* the pipelined DATA got 354 */
	bool			 data_open;	/* ... and nexthop_data has not taken it yet */
	size_t			 low;
	void			(*drained)(void *);
	void			*drained_arg;
};

static void	nh_read(struct bufferevent *, void *);
static void	nh_write(struct bufferevent *, void *);
static void	nh_event(struct bufferevent *, short, void *);
static void	kick(struct nexthop *);

/* ---- results -------------------------------------------------------------- */

static void
arm(struct nexthop *nh)
{
	struct timeval tv = { nh->timeout_ms / 1000, (nh->timeout_ms % 1000) * 1000 };

	evtimer_add(nh->timer, &tv);
}

/* hands r to the step's callback; the step is over when last */
static void
deliver(struct nexthop *nh, const struct nexthop_reply *r, bool last)
{
	nexthop_cb	*cb = nh->cb;
	void		*arg = nh->arg;

	if (last) {
		nh->cb = NULL;
		nh->arg = NULL;
		evtimer_del(nh->timer);
		if (nh->step != ST_DEAD)
			nh->step = ST_IDLE;
	}
	if (cb != NULL)
		cb(arg, nh, r);
}

/*
 * The connection is over (why): a step in flight gets a local 451 (a
 * connection never made: 4.4.1, else 4.4.2).  LMTP: every reply still due.
 */
static void
fail(struct nexthop *nh, const char *why)
{
	struct nexthop_reply	 r;
	enum step		 was = nh->step;
	unsigned		 left;

	if (nh->step == ST_DEAD)
		return;
	nh->step = ST_DEAD;
	snprintf(nh->why, sizeof(nh->why), "Next hop %s: %s (%s)", nh->name, why, step_names[was]);
	evtimer_del(nh->timer);
	if (nh->bev != NULL) {
		bufferevent_free(nh->bev);
		nh->bev = NULL;
	}
	if (nh->drain_wait) {
		/* a writer that waits for the drain must not wait for ever */
		nh->drain_wait = false;
		if (nh->drained != NULL)
			nh->drained(nh->drained_arg);
	}
	if (was == ST_QUIT) {
		nexthop_destroy(nh);
		return;
	}
	if (nh->cb == NULL)
		return;
	memset(&r, 0, sizeof(r));
	r.code = 451;
	r.local = true;
	snprintf(r.enhanced, sizeof(r.enhanced), "%s", was <= ST_GREETING ? "4.4.1" : "4.4.2");
	snprintf(r.text, sizeof(r.text), "%s", nh->why);
	/*
	 * LMTP's end of data: a 451 for each recipient not answered yet,
	 * numbered after those that were (index of count, as on_reply's)
	 */
	left = r.count = 1;
	if (was == ST_END && nh->lmtp && nh->end_left > 0) {
		left = nh->end_left;
		r.count = nh->accepted > left ? nh->accepted : left;
	}
	for (unsigned i = 0; i < left; i++) {
		r.index = r.count - left + i;
		/* the callback may destroy nh on the last one only */
		deliver(nh, &r, i + 1 == left);
	}
}

/* a reply made here without losing the connection (SIZE refused, say) */
static void
local_reply(struct nexthop *nh, int code, const char *enh, const char *text)
{
	memset(&nh->r, 0, sizeof(nh->r));
	nh->r.code = code;
	nh->r.local = true;
	nh->r.count = 1;
	snprintf(nh->r.enhanced, sizeof(nh->r.enhanced), "%s", enh);
	snprintf(nh->r.text, sizeof(nh->r.text), "%s", text);
	nh->step = ST_IDLE;
	/* from the loop, never from inside the call: the timer, made active */
	nh->local_pending = true;
	evtimer_del(nh->timer);
	event_active(nh->timer, EV_TIMEOUT, 0);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct nexthop *nh = arg;

	(void)fd;
	(void)what;
	if (nh->local_pending) {
		nh->local_pending = false;
		deliver(nh, &nh->r, true);
		return;
	}
	if (nh->step == ST_QUIT) {
		nexthop_destroy(nh);
		return;
	}
	fail(nh, "timed out");
}

/* ---- sending ---------------------------------------------------------------- */

/* a command line (no CR or LF in it: the caller's paths come from the engine) */
static void
send_line(struct nexthop *nh, enum step step, const char *fmt, const char *a, const char *b)
{
	struct evbuffer *out = bufferevent_get_output(nh->bev);

	evbuffer_add_printf(out, fmt, a, b != NULL ? b : "");
	evbuffer_add(out, "\r\n", 2);
	nh->step = step;
	arm(nh);
	kick(nh);
}

/*
 * A command line from up to four parts, copied into one line (no printf:
 * MAIL, each RCPT and DATA of every message come here)
 */
static void
add_parts(struct nexthop *nh, const char *a, const char *b, const char *c, const char *d)
{
	struct evbuffer	*out = bufferevent_get_output(nh->bev);
	const char	*part[4] = { a, b, c, d };
	char		 line[1024];
	size_t		 len = 0, l;

	for (int i = 0; i < 4 && part[i] != NULL; i++) {
		l = strlen(part[i]);
		if (len + l > sizeof(line) - 2) {	/* a long one: in pieces */
			evbuffer_add(out, line, len);
			evbuffer_add(out, part[i], l);
			len = 0;
			continue;
		}
		memcpy(line + len, part[i], l);
		len += l;
	}
	memcpy(line + len, "\r\n", 2);
	evbuffer_add(out, line, len + 2);
}

/* ... sent as the command of step */
static void
send_parts(struct nexthop *nh, enum step step, const char *a, const char *b, const char *c,
    const char *d)
{
	add_parts(nh, a, b, c, d);
	nh->step = step;
	arm(nh);
	kick(nh);
}

static int
start(struct nexthop *nh, nexthop_cb *cb, void *arg)
{
	if (nh->step != ST_IDLE || nh->bev == NULL || nh->cb != NULL)
		return -1;
	nh->cb = cb;
	nh->arg = arg;
	return 0;
}

/* ---- replies ---------------------------------------------------------------- */

static void
reply_reset(struct nexthop *nh)
{
	memset(&nh->r, 0, sizeof(nh->r));
	nh->text_len = 0;
	nh->lines = nh->kept = 0;
	nh->first_code = 0;
}

/* an EHLO line's keyword, into ext */
static void
ehlo_keyword(struct nexthop *nh, const char *t)
{
	char	kw[32];
	size_t	i;

	for (i = 0; t[i] != '\0' && t[i] != ' ' && t[i] != '=' && i < sizeof(kw) - 1; i++)
		kw[i] = (char)toupper((unsigned char)t[i]);
	kw[i] = '\0';
	t += i;
	while (*t == ' ' || *t == '=')
		t++;
	if (strcmp(kw, "SIZE") == 0) {
		nh->ext |= NH_EXT_SIZE;
		nh->size_limit = strtoull(t, NULL, 10);
	} else if (strcmp(kw, "8BITMIME") == 0)
		nh->ext |= NH_EXT_8BITMIME;
	else if (strcmp(kw, "SMTPUTF8") == 0)
		nh->ext |= NH_EXT_SMTPUTF8;
	else if (strcmp(kw, "STARTTLS") == 0)
		nh->ext |= NH_EXT_STARTTLS;
	else if (strcmp(kw, "PIPELINING") == 0)
		nh->ext |= NH_EXT_PIPELINING;
	else if (strcmp(kw, "ENHANCEDSTATUSCODES") == 0)
		nh->ext |= NH_EXT_ENHANCED;
	else if (strcmp(kw, "AUTH") == 0) {
		char up[256];

		for (i = 0; t[i] != '\0' && i < sizeof(up) - 2; i++)
			up[i + 1] = (char)toupper((unsigned char)t[i]);
		up[0] = ' ';
		up[i + 1] = '\0';
		if (strstr(up, " PLAIN") != NULL)
			nh->ext |= NH_EXT_AUTH_PLAIN;
		if (strstr(up, " LOGIN") != NULL)
			nh->ext |= NH_EXT_AUTH_LOGIN;
	}
}

/*
 * One line of a reply (CRLF removed, len octets): 1 when the reply is
 * complete, 0 for more lines, -1 (why set) when it breaks the protocol.
 */
static int
reply_line(struct nexthop *nh, char *line, size_t len, const char **why)
{
	int	 code;
	bool	 last;
	char	*t, enh[REPLY_ENHANCED_MAX];

	if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
	    !isdigit((unsigned char)line[2]) || (len > 3 && line[3] != ' ' && line[3] != '-')) {
		*why = "malformed reply";
		return -1;
	}
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (code < 200 || code > 599) {
		*why = "reply code out of range";
		return -1;
	}
	if (nh->lines == 0)
		nh->first_code = code;
	else if (code != nh->first_code) {
		*why = "reply lines with different codes";
		return -1;
	}
	if (++nh->lines > LINES_MAX_NH) {
		*why = "reply too long";
		return -1;
	}
	last = len == 3 || line[3] == ' ';
	t = len > 4 ? line + 4 : line + len;
	/* printable ASCII only: a verdict's text may carry nothing else */
	for (char *p = t; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	if ((nh->step == ST_EHLO || nh->step == ST_EHLO2) && nh->lines > 1 && code / 100 == 2)
		ehlo_keyword(nh, t);
	t = (char *)reply_split_enhanced(t, enh);
	if (enh[0] != '\0' && enh[0] - '0' != code / 100)
		enh[0] = '\0';	/* a class that contradicts the code: not kept */
	if (nh->lines == 1)
		memcpy(nh->r.enhanced, enh, sizeof(enh));
	if (nh->kept < KEEP_LINES) {
		size_t tl = strlen(t), room = sizeof(nh->r.text) - nh->text_len - 1;

		if (tl > REPLY_TEXT_MAX - 16)
			tl = REPLY_TEXT_MAX - 16;
		if (nh->kept > 0 && room > 0) {
			nh->r.text[nh->text_len++] = '\n';
			room--;
		}
		if (tl > room)
			tl = room;
		memcpy(nh->r.text + nh->text_len, t, tl);
		nh->text_len += tl;
		nh->r.text[nh->text_len] = '\0';
		nh->kept++;
	}
	if (!last)
		return 0;
	nh->r.code = code;
	return 1;
}

/* ---- the steps' progress ------------------------------------------------------ */

static void	send_ehlo(struct nexthop *, enum step);
static void	env_done(struct nexthop *);
static void	env_send_rcpt(struct nexthop *);
static void	send_auth(struct nexthop *);
static void	after_ehlo(struct nexthop *);

static void
start_tls(struct nexthop *nh)
{
	char			 err[384];
	struct bufferevent	*b;
	bool			 verify = nh->tls == NH_TLS_REQUIRE && !nh->no_verify;

	if (nh->ssl == NULL && (nh->ssl = tlsclient_ctx(nh->cafile, err, sizeof(err))) == NULL) {
		fail(nh, err);
		return;
	}
	/* the TLS filter writes through the socket's bufferevent (it enables EV_WRITE) */
	nh->direct = nh->wr_on = false;
	b = tlsclient_wrap(nh->bev, nh->ssl, nh->servername != NULL ? nh->servername : nh->host,
	    verify, err, sizeof(err));
	if (b == NULL) {
		fail(nh, err);
		return;
	}
	nh->bev = b;
	bufferevent_setcb(b, nh_read, nh_write, nh_event, nh);
	bufferevent_enable(b, EV_READ | EV_WRITE);
	nh->step = ST_HANDSHAKE;
	arm(nh);
}

static void
send_ehlo(struct nexthop *nh, enum step step)
{
	nh->ext = 0;
	nh->size_limit = 0;
	send_line(nh, step, nh->lmtp ? "LHLO %s%s" : "EHLO %s%s", nh->helo, NULL);
}

static void
after_ehlo(struct nexthop *nh)
{
	if (!nh->tls_on && nh->tls != NH_TLS_NONE) {
		if (nh->ext & NH_EXT_STARTTLS) {
			send_line(nh, ST_STARTTLS, "STARTTLS%s%s", "", NULL);
			return;
		}
		if (nh->tls == NH_TLS_REQUIRE) {
			fail(nh, "STARTTLS not offered, and TLS is required");
			return;
		}
	}
	if (nh->user != NULL) {
		send_auth(nh);
		return;
	}
	deliver(nh, &nh->r, true);
}

/*
 * prefix and secret in base64 as the command of step, no copy of the
 * secret left behind; send_auth checked the length (1,024 octets make
 * 1,368)
 */
static void
send_secret(struct nexthop *nh, enum step step, const char *prefix, const char *secret,
    size_t len)
{
	char	b64[1400];
	int	n;

	n = EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)secret, (int)len);
	b64[n] = '\0';
	send_line(nh, step, "%s%s", prefix, b64);
	OPENSSL_cleanse(b64, sizeof(b64));
}

static void
send_auth(struct nexthop *nh)
{
	char		 plain[1024];
	size_t		 ul = strlen(nh->user), pl = strlen(nh->password);

	if (!nh->tls_on && !nh->auth_plaintext) {
		fail(nh, "AUTH refused without TLS (auth over plaintext not allowed)");
		return;
	}
	if ((nh->ext & (NH_EXT_AUTH_PLAIN | NH_EXT_AUTH_LOGIN)) == 0) {
		fail(nh, "neither AUTH PLAIN nor AUTH LOGIN offered");
		return;
	}
	if (ul + pl + 2 > sizeof(plain)) {
		fail(nh, "AUTH credentials too long");
		return;
	}
	if ((nh->ext & NH_EXT_AUTH_PLAIN) == 0) {
		/* LOGIN only (an older server): the username and password asked in turn */
		send_line(nh, ST_AUTH_LOGIN, "AUTH LOGIN%s%s", "", "");
		return;
	}
	plain[0] = '\0';
	memcpy(plain + 1, nh->user, ul);
	plain[1 + ul] = '\0';
	memcpy(plain + 2 + ul, nh->password, pl);
	send_secret(nh, ST_AUTH, "AUTH PLAIN ", plain, ul + pl + 2);
	OPENSSL_cleanse(plain, sizeof(plain));
}

/* the recipients' copies (their results stay) */
static void
env_free(struct nexthop *nh)
{
	if (nh->env_rcpts == NULL)
		return;
	for (size_t i = 0; i < nh->env_n; i++)
		free(nh->env_rcpts[i]);
	free(nh->env_rcpts);
	nh->env_rcpts = NULL;
	nh->env_sent = 0;
}

static void
env_send_rcpt(struct nexthop *nh)
{
	send_parts(nh, ST_ENV_RCPT, "RCPT TO:<", nh->env_rcpts[nh->env_sent++], ">", NULL);
}

/*
 * The envelope step is over: MAIL's reply to the caller.  When the
 * pipelined DATA got its 354 the next hop reads the body now: the stream
 * state comes before the callback, which may call nexthop_data (taking the
 * 354 at once) or end the transaction (no RSET there: the connection ends).
 */
static void
env_done(struct nexthop *nh)
{
	nexthop_cb	*cb = nh->cb;
	void		*arg = nh->arg;

	env_free(nh);
	if (!nh->env_354) {
		deliver(nh, &nh->env_mail, true);
		return;
	}
	nh->env_354 = false;
	nh->cb = NULL;
	nh->arg = NULL;
	evtimer_del(nh->timer);
	nh->step = ST_STREAM;
	nh->bol = true;
	nh->data_open = true;
	if (cb != NULL)
		cb(arg, nh, &nh->env_mail);
}

/* a complete reply for the step in flight */
static void
on_reply(struct nexthop *nh)
{
	int		 c = nh->r.code, cls = c / 100;
	enum step	 step = nh->step;

	nh->r.count = 1;
	switch (step) {
	case ST_GREETING:
		if (cls != 2) {
			deliver(nh, &nh->r, true);	/* its refusal, as it is */
			return;
		}
		send_ehlo(nh, ST_EHLO);
		return;
	case ST_EHLO:
		if (cls != 2 && !nh->lmtp && c >= 500 && c <= 504) {
			send_line(nh, ST_HELO, "HELO %s%s", nh->helo, NULL);
			return;
		}
		/* fall through */
	case ST_EHLO2:
		if (cls != 2) {
			deliver(nh, &nh->r, true);
			return;
		}
		after_ehlo(nh);
		return;
	case ST_HELO:
		if (cls != 2)
			deliver(nh, &nh->r, true);
		else
			after_ehlo(nh);
		return;
	case ST_STARTTLS:
		if (c != 220) {
			if (nh->tls == NH_TLS_REQUIRE) {
				fail(nh, "STARTTLS refused, and TLS is required");
				return;
			}
			/* opportunistic: on without TLS */
			nh->tls = NH_TLS_NONE;
			after_ehlo(nh);
			return;
		}
		evtimer_del(nh->timer);
		start_tls(nh);
		return;
	case ST_AUTH_LOGIN:
	case ST_AUTH_USER:
		if (c == 334) {
			if (nh->step == ST_AUTH_LOGIN)
				send_secret(nh, ST_AUTH_USER, "", nh->user, strlen(nh->user));
			else
				send_secret(nh, ST_AUTH, "", nh->password, strlen(nh->password));
			return;
		}
		deliver(nh, &nh->r, true);	/* refused: the caller's verdict */
		return;
	case ST_AUTH:
		if (cls == 3) {
			fail(nh, "AUTH asked for more after the credentials");
			return;
		}
		deliver(nh, &nh->r, true);
		return;
	case ST_RCPT:
		if (cls == 2)
			nh->accepted++;
		deliver(nh, &nh->r, true);
		return;
	case ST_DATA:
		if (c == 354 && nh->lmtp && nh->accepted == 0) {
			fail(nh, NO_RCPT_354);
			return;
		}
		if (c == 354) {
			nh->step = ST_STREAM;
			nh->bol = true;
			evtimer_del(nh->timer);
			deliver(nh, &nh->r, false);
			nh->cb = NULL;
			nh->arg = NULL;
			return;
		}
		deliver(nh, &nh->r, true);
		return;
	case ST_END:
		if (nh->lmtp) {
			nh->r.count = nh->accepted;
			nh->r.index = nh->accepted - nh->end_left;
			nh->end_left--;
			if (nh->end_left > 0) {
				arm(nh);
				deliver(nh, &nh->r, false);
				return;
			}
		}
		nh->accepted = 0;
		deliver(nh, &nh->r, true);
		return;
	case ST_MAIL:
		nh->accepted = 0;
		deliver(nh, &nh->r, true);
		return;
	case ST_ENV_MAIL:
		nh->env_mail = nh->r;
		nh->env_mail.count = 1;
		if (cls != 2 && !nh->env_pipelined) {
			env_done(nh);
			return;
		}
		nh->step = ST_ENV_RCPT;
		if (!nh->env_pipelined)
			env_send_rcpt(nh);
		else
			arm(nh);
		return;
	case ST_ENV_RCPT: {
		struct nexthop_brief *b = &nh->env_res[nh->env_got++];

		b->code = c;
		memcpy(b->enhanced, nh->r.enhanced, sizeof(b->enhanced));
		size_t tl = strlen(nh->r.text);

		if (tl >= sizeof(b->text))
			tl = sizeof(b->text) - 1;	/* cut: a line of its, at most */
		memcpy(b->text, nh->r.text, tl);
		b->text[tl] = '\0';
		if (cls == 2)
			nh->accepted++;
		if (nh->env_got >= nh->env_n) {
			if (nh->env_pipelined) {
				nh->step = ST_ENV_DATA;	/* DATA's reply is next */
				arm(nh);
				return;
			}
			env_done(nh);
			return;
		}
		if (!nh->env_pipelined)
			env_send_rcpt(nh);
		else
			arm(nh);
		return;
	}
	case ST_ENV_DATA:
		if (c == 354 && nh->lmtp && nh->accepted == 0) {
			fail(nh, NO_RCPT_354);
			return;
		}
		/* 354: the body follows; else nexthop_data sends DATA again */
		nh->env_354 = c == 354;
		env_done(nh);
		return;
	case ST_RSET:
		nh->accepted = 0;
		deliver(nh, &nh->r, true);
		return;
	case ST_QUIT:
		nexthop_destroy(nh);
		return;
	default:
		fail(nh, "reply without a command");
		return;
	}
}

/*
 * Reads every complete reply in the input.  false: nh is gone (a callback
 * freed it) and must not be touched.
 */
static bool
pump(struct nexthop *nh)
{
	struct evbuffer	*in;
	const char	*why = NULL;
	char		 line[LINE_MAX_NH + 1];
	size_t		 eol, len;
	struct evbuffer_ptr p;
	bool		 gone = false, *prev;
	int		 r;

	for (;;) {
		if (nh->step == ST_DEAD || nh->bev == NULL)
			return true;
		in = bufferevent_get_input(nh->bev);
		if (nh->step == ST_IDLE || nh->step == ST_STREAM || nh->step == ST_CONNECT ||
		    nh->step == ST_HANDSHAKE) {
			if (evbuffer_get_length(in) == 0 || nh->step == ST_HANDSHAKE)
				return true;
			if (nh->step == ST_STREAM && nh->lmtp)
				return true;	/* early replies wait for the dot */
			why = "spoke out of turn";
			goto broken;
		}
		p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) > LINE_MAX_NH) {
				why = "reply line too long";
				goto broken;
			}
			return true;
		}
		len = (size_t)p.pos;
		if (len > LINE_MAX_NH) {
			why = "reply line too long";
			goto broken;
		}
		evbuffer_remove(in, line, len);
		evbuffer_drain(in, eol);
		line[len] = '\0';
		if (memchr(line, '\0', len) != NULL) {
			why = "NUL in a reply";
			goto broken;
		}
		if (nh->lines == 0)
			reply_reset(nh);
		if ((r = reply_line(nh, line, len, &why)) == -1)
			goto broken;
		if (r == 1) {
			nh->lines = 0;
			prev = nh->gone;
			nh->gone = &gone;
			on_reply(nh);
			if (gone) {
				if (prev != NULL)
					*prev = true;
				return false;
			}
			nh->gone = prev;
		}
	}
broken:
	prev = nh->gone;
	nh->gone = &gone;
	fail(nh, why);
	if (gone) {
		if (prev != NULL)
			*prev = true;
		return false;
	}
	nh->gone = prev;
	return true;
}

static void
nh_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	pump(arg);
}

/* the output went out, all of it or what the socket took (left waits) */
static void
wrote(struct nexthop *nh, size_t left)
{
	if (nh->step == ST_STREAM) {
		if (left > 0)
			arm(nh);	/* progress: the next hop reads */
		else
			evtimer_del(nh->timer);
	}
	if (nh->drain_wait && left <= nh->low) {
		nh->drain_wait = false;
		if (nh->drained != NULL)
			nh->drained(nh->drained_arg);	/* may free nh */
	}
}

static void
nh_write(struct bufferevent *bev, void *arg)
{
	struct nexthop	*nh = arg;
	size_t		 left = evbuffer_get_length(bufferevent_get_output(bev));

	if (nh->wr_on && left == 0) {
		/* the rest of a partial write is out: direct writes again */
		nh->wr_on = false;
		bufferevent_disable(bev, EV_WRITE);
	}
	wrote(nh, left);
}

/* the socket failed with err */
static void
fail_errno(struct nexthop *nh, int err)
{
	char why[384];

	snprintf(why, sizeof(why), "%s", err != 0 ? evutil_socket_error_to_string(err) :
	    "connection lost");
	if (why[0] >= 'A' && why[0] <= 'Z')	/* "connection refused" */
		why[0] = (char)(why[0] - 'A' + 'a');
	fail(nh, why);
}

/*
 * Plain TCP, connected (nh->direct): what a loop turn queued goes out at
 * the turn's end in one writev, straight on the socket.  Through the
 * bufferevent each burst would enable its write event and, once flushed,
 * disable it again: two epoll_ctl a burst, four a forwarded message (the
 * envelope, the body with its dot).  Only a partial write (the socket is
 * full: the next hop reads slower than we send) enables EV_WRITE, until
 * the bufferevent has written the rest (nh_write).  TLS goes through the
 * bufferevent as before.
 */
static void
kick(struct nexthop *nh)
{
	if (nh->direct && !nh->wr_on)
		event_active(nh->flush, EV_WRITE, 0);	/* once a turn: active already is a no-op */
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct nexthop	*nh = arg;
	struct evbuffer	*out;
	size_t		 left;
	int		 n, err;

	(void)fd;
	if (!nh->direct || nh->wr_on || nh->bev == NULL)
		return;
	out = bufferevent_get_output(nh->bev);
	if ((left = evbuffer_get_length(out)) == 0)
		return;
	/*
	 * The body gathers up to BODY_BATCH: the client's octets come in reads
	 * of 4 KiB (libevent's), and a write for each would be a syscall and a
	 * wakeup of the next hop per 4 KiB.  The final dot sends what is held
	 * (its step is ST_END), and BODY_LINGER_MS without more does too (a
	 * client that trickles), so nothing is held for long.
	 */
	if (nh->step == ST_STREAM && left < BODY_BATCH && !(what & EV_TIMEOUT)) {
		if (!evtimer_pending(nh->flush, NULL)) {
			struct timeval tv = { 0, BODY_LINGER_MS * 1000 };

			evtimer_add(nh->flush, &tv);
		}
		return;
	}
	/* the bufferevent freezes its output's start: it alone drains it, as here */
	evbuffer_unfreeze(out, 1);
	n = evbuffer_write(out, bufferevent_getfd(nh->bev));
	err = EVUTIL_SOCKET_ERROR();
	evbuffer_freeze(out, 1);
	if (n == -1) {
		if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
			fail_errno(nh, err);
			return;
		}
	}
	if ((left = evbuffer_get_length(out)) > 0) {
		nh->wr_on = true;
		bufferevent_enable(nh->bev, EV_WRITE);
	}
	wrote(nh, left);
}

/* the socket is connected and plain: writes go direct from now on */
static void
direct_on(struct nexthop *nh)
{
	nh->direct = true;
	if (evbuffer_get_length(bufferevent_get_output(nh->bev)) > 0)
		nh->wr_on = true;	/* nothing is queued before the greeting, but */
	else
		bufferevent_disable(nh->bev, EV_WRITE);
}

static void
nh_event(struct bufferevent *bev, short what, void *arg)
{
	struct nexthop	*nh = arg;
	char		 why[384];
	int		 err = EVUTIL_SOCKET_ERROR(), dns;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		if (nh->step == ST_HANDSHAKE) {
			nh->tls_on = true;
			send_ehlo(nh, ST_EHLO2);
		} else if (nh->step == ST_CONNECT) {
			int one = 1;

			/* a command or the final dot goes out at once, not behind Nagle */
			setsockopt(bufferevent_getfd(nh->bev), IPPROTO_TCP, TCP_NODELAY, &one,
			    sizeof(one));
			direct_on(nh);
			nh->step = ST_GREETING;
			arm(nh);
		}
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		if (nh->step == ST_CONNECT &&
		    (dns = bufferevent_socket_get_dns_error(nh->bev)) != 0)
			snprintf(why, sizeof(why), "cannot resolve %s: %s", nh->host,
			    evutil_gai_strerror(dns));
		else if (!tlsclient_error(nh->bev, why, sizeof(why))) {
			fail_errno(nh, err);
			return;
		}
		fail(nh, why);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		if (!pump(nh))	/* a last reply before the close counts */
			return;
		if (nh->step != ST_DEAD)
			fail(nh, "closed the connection");
	}
}

/* ---- the interface ------------------------------------------------------------ */

static char *
dup_or_null(const char *s, bool *ok)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		*ok = false;
	return d;
}

struct nexthop *
nexthop_create(struct event_base *base, struct evdns_base *dns,
    const struct nexthop_target *t, int fd)
{
	struct nexthop	*nh;
	bool		 ok = true;

	if ((nh = calloc(1, sizeof(*nh))) == NULL)
		return NULL;
	nh->base = base;
	nh->dns = dns;
	nh->host = dup_or_null(t->host != NULL ? t->host : "localhost", &ok);
	nh->helo = dup_or_null(t->helo != NULL ? t->helo : "localhost", &ok);
	nh->user = dup_or_null(t->user, &ok);
	nh->password = dup_or_null(t->user != NULL ? (t->password ? t->password : "") : NULL, &ok);
	nh->cafile = dup_or_null(t->cafile, &ok);
	nh->servername = dup_or_null(t->servername, &ok);
	nh->port = t->port;
	nh->lmtp = t->lmtp;
	nh->tls = t->tls;
	nh->auth_plaintext = t->auth_plaintext;
	nh->no_verify = t->no_verify;
	nh->timeout_ms = t->timeout_ms > 0 ? t->timeout_ms : 30000;
	nh->low = OUT_HIGH / 2;
	snprintf(nh->name, sizeof(nh->name), "%s:%d", nh->host, nh->port);
	nh->timer = evtimer_new(base, on_timer, nh);
	nh->flush = event_new(base, -1, 0, on_flush, nh);
	nh->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!ok || nh->timer == NULL || nh->flush == NULL || nh->bev == NULL) {
		nexthop_destroy(nh);
		return NULL;
	}
	bufferevent_setcb(nh->bev, nh_read, nh_write, nh_event, nh);
	bufferevent_setwatermark(nh->bev, EV_READ, 0, 65536);
	nh->step = fd >= 0 ? ST_GREETING : ST_CONNECT;
	nh->cb = NULL;
	return nh;
}

void
nexthop_destroy(struct nexthop *nh)
{
	if (nh == NULL)
		return;
	if (nh->gone != NULL)
		*nh->gone = true;
	if (nh->bev != NULL)
		bufferevent_free(nh->bev);
	if (nh->timer != NULL)
		event_free(nh->timer);
	if (nh->flush != NULL)
		event_free(nh->flush);
	SSL_CTX_free(nh->ssl);
	env_free(nh);
	free(nh->env_res);
	free(nh->host);
	free(nh->helo);
	if (nh->password != NULL)
		OPENSSL_cleanse(nh->password, strlen(nh->password));
	free(nh->user);
	free(nh->password);
	free(nh->cafile);
	free(nh->servername);
	free(nh);
}

void
nexthop_quit(struct nexthop *nh)
{
	if (nh == NULL)
		return;
	nh->cb = NULL;
	nh->drained = NULL;
	if (nh->bev == NULL || (nh->step != ST_IDLE)) {
		nexthop_destroy(nh);
		return;
	}
	send_line(nh, ST_QUIT, "QUIT%s%s", "", NULL);
}

int
nexthop_open(struct nexthop *nh, nexthop_cb *cb, void *arg)
{
	if ((nh->step != ST_CONNECT && nh->step != ST_GREETING) || nh->cb != NULL)
		return -1;
	nh->cb = cb;
	nh->arg = arg;
	if (nh->step == ST_GREETING) {	/* a socket connected already */
		bufferevent_enable(nh->bev, EV_READ);
		direct_on(nh);
	} else
		bufferevent_enable(nh->bev, EV_READ | EV_WRITE);	/* the connect's */
	arm(nh);
	if (nh->step == ST_CONNECT &&
	    bufferevent_socket_connect_hostname(nh->bev, nh->dns, AF_UNSPEC, nh->host,
	    nh->port) == -1) {
		/* reported by nh_event's error, from the loop (deferred callbacks) */
		if (nh->step == ST_CONNECT) {
			char why[384];

			snprintf(why, sizeof(why), "cannot connect: %s",
			    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
			snprintf(nh->r.text, sizeof(nh->r.text), "Next hop %s: %s", nh->name, why);
			nh->step = ST_DEAD;
			nh->local_pending = true;
			nh->r.code = 451;
			nh->r.local = true;
			nh->r.count = 1;
			snprintf(nh->r.enhanced, sizeof(nh->r.enhanced), "4.4.1");
			evtimer_del(nh->timer);
			event_active(nh->timer, EV_TIMEOUT, 0);
		}
	}
	return 0;
}

int
nexthop_mail(struct nexthop *nh, const char *from, const char *params, uint64_t size,
    nexthop_cb *cb, void *arg)
{
	char	extra[64] = "";
	char	all[1100];

	if (start(nh, cb, arg) == -1)
		return -1;
	nh->accepted = 0;
	if (size > 0 && nh->size_limit > 0 && size > nh->size_limit) {
		char text[200];

		snprintf(text, sizeof(text), "Message size exceeds the next hop's limit of %llu octets",
		    (unsigned long long)nh->size_limit);
		local_reply(nh, 552, "5.3.4", text);
		return 0;
	}
	if (size > 0 && (nh->ext & NH_EXT_SIZE))
		snprintf(extra, sizeof(extra), " SIZE=%llu", (unsigned long long)size);
	snprintf(all, sizeof(all), "%s%s%s", params != NULL && params[0] ? " " : "",
	    params != NULL ? params : "", extra);
	send_line(nh, ST_MAIL, "MAIL FROM:<%s>%s", from, all);
	return 0;
}

int
nexthop_rcpt(struct nexthop *nh, const char *to, const char *params, nexthop_cb *cb, void *arg)
{
	char all[1024];

	if (start(nh, cb, arg) == -1)
		return -1;
	snprintf(all, sizeof(all), "%s%s", params != NULL && params[0] ? " " : "",
	    params != NULL ? params : "");
	send_line(nh, ST_RCPT, "RCPT TO:<%s>%s", to, all);
	return 0;
}

int
nexthop_envelope(struct nexthop *nh, const char *from, const char *params, uint64_t size,
    const char *const *rcpts, size_t n, nexthop_cb *cb, void *arg)
{
	char				 extra[64] = "", all[1100];
	struct nexthop_brief		*res;

	if (n == 0 || nh->step != ST_IDLE || nh->bev == NULL || nh->cb != NULL)
		return -1;
	if (n > nh->env_cap) {
		if ((res = calloc(n, sizeof(*res))) == NULL)
			return -1;
		free(nh->env_res);
		nh->env_res = res;
		nh->env_cap = n;
	} else
		memset(nh->env_res, 0, n * sizeof(*nh->env_res));	/* the last message's */
	env_free(nh);
	nh->env_n = n;
	nh->env_pipelined = (nh->ext & NH_EXT_PIPELINING) != 0;
	/* one RCPT at a time (no PIPELINING): the addresses are kept until sent */
	if (!nh->env_pipelined && (nh->env_rcpts = calloc(n, sizeof(*nh->env_rcpts))) == NULL) {
		nh->env_n = 0;
		return -1;
	}
	for (size_t i = 0; !nh->env_pipelined && i < n; i++)
		if ((nh->env_rcpts[i] = strdup(rcpts[i])) == NULL) {
			env_free(nh);
			return -1;
		}
	nh->env_got = 0;
	nh->cb = cb;
	nh->arg = arg;
	nh->accepted = 0;
	if (size > 0 && nh->size_limit > 0 && size > nh->size_limit) {
		char text[200];

		env_free(nh);
		snprintf(text, sizeof(text), "Message size exceeds the next hop's limit of %llu octets",
		    (unsigned long long)nh->size_limit);
		local_reply(nh, 552, "5.3.4", text);
		return 0;
	}
	if (size > 0 && (nh->ext & NH_EXT_SIZE))
		snprintf(extra, sizeof(extra), " SIZE=%llu", (unsigned long long)size);
	all[0] = '\0';
	if ((params != NULL && params[0] != '\0') || extra[0] != '\0')
		snprintf(all, sizeof(all), "%s%s%s", params != NULL && params[0] ? " " : "",
		    params != NULL ? params : "", extra);
	nh->env_354 = nh->data_open = false;
	add_parts(nh, "MAIL FROM:<", from, ">", all);
	if (nh->env_pipelined) {
		/* RFC 2920: DATA ends the group; its reply is read in order */
		for (size_t i = 0; i < n; i++)
			add_parts(nh, "RCPT TO:<", rcpts[i], ">", NULL);
		add_parts(nh, "DATA", NULL, NULL, NULL);
	}
	nh->step = ST_ENV_MAIL;
	arm(nh);
	kick(nh);
	return 0;
}

const struct nexthop_brief *
nexthop_rcpt_result(const struct nexthop *nh, size_t i)
{
	return nh->env_res != NULL && i < nh->env_n ? &nh->env_res[i] : NULL;
}

size_t
nexthop_rcpt_results(const struct nexthop *nh)
{
	return nh->env_res != NULL ? nh->env_n : 0;
}

int
nexthop_data(struct nexthop *nh, nexthop_cb *cb, void *arg)
{
	if (nh->data_open) {
		nh->data_open = false;
		if (nh->step == ST_STREAM && nh->bev != NULL && nh->cb == NULL)
			return 1;	/* the envelope's pipelined DATA got 354 */
	}
	if (start(nh, cb, arg) == -1)
		return -1;
	send_line(nh, ST_DATA, "DATA%s%s", "", NULL);
	return 0;
}

int
nexthop_rset(struct nexthop *nh, nexthop_cb *cb, void *arg)
{
	if ((nh->step != ST_IDLE && nh->step != ST_STREAM) || nh->bev == NULL || nh->cb != NULL)
		return -1;
	if (nh->step == ST_STREAM) {
		/*
		 * Mid-body there is no RSET the next hop would read as one:
		 * the connection ends without a final dot, which every SMTP
		 * server takes as an aborted transaction.
		 */
		fail(nh, "transaction aborted");
		return -1;
	}
	nh->cb = cb;
	nh->arg = arg;
	send_line(nh, ST_RSET, "RSET%s%s", "", NULL);
	return 0;
}

long
nexthop_write(struct nexthop *nh, const char *buf, size_t len)
{
	struct evbuffer	*out;
	const char	*p = buf, *end = buf + len, *nl, *span;
	size_t		 left;

	if (nh->step != ST_STREAM || nh->bev == NULL)
		return -1;
	out = bufferevent_get_output(nh->bev);
	/* whole spans between the dots to stuff: one copy each, not one per line */
	span = p;
	while (p < end) {
		if (nh->bol && *p == '.') {
			if (p > span)
				evbuffer_add(out, span, (size_t)(p - span));
			evbuffer_add(out, ".", 1);	/* the stuffed dot; the line's own follows */
			span = p;
		}
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL) {
			nh->bol = false;
			break;
		}
		nh->bol = true;
		p = nl + 1;
	}
	if (end > span)
		evbuffer_add(out, span, (size_t)(end - span));
	left = evbuffer_get_length(out);
	if (nh->direct) {
		/*
		 * The timer is armed only if the write leaves some.  Octets held
		 * (on_flush) go at BODY_LINGER_MS after the first of them: a
		 * kick meanwhile would cancel that deadline, so only a batch kicks.
		 */
		if (left >= BODY_BATCH || !evtimer_pending(nh->flush, NULL))
			kick(nh);
	} else if (left > 0)
		arm(nh);
	if (left > nh->low * 2)
		nh->drain_wait = true;
	return (long)left;
}

int
nexthop_end(struct nexthop *nh, nexthop_cb *cb, void *arg)
{
	struct evbuffer *out;

	if (nh->step != ST_STREAM || nh->bev == NULL || nh->cb != NULL)
		return -1;
	nh->cb = cb;
	nh->arg = arg;
	out = bufferevent_get_output(nh->bev);
	if (!nh->bol)
		evbuffer_add(out, "\r\n", 2);
	evbuffer_add(out, ".\r\n", 3);
	kick(nh);
	nh->end_left = nh->lmtp ? nh->accepted : 1;
	nh->step = ST_END;
	arm(nh);
	/* LMTP replies that came early (while streaming) are read now */
	if (evbuffer_get_length(bufferevent_get_input(nh->bev)) > 0)
		bufferevent_trigger(nh->bev, EV_READ, BEV_OPT_DEFER_CALLBACKS);
	return 0;
}

void
nexthop_set_drain(struct nexthop *nh, size_t low, void (*drained)(void *), void *arg)
{
	nh->low = low;
	nh->drained = drained;
	nh->drained_arg = arg;
	nh->drain_wait = false;
}

unsigned
nexthop_ext(const struct nexthop *nh)
{
	return nh->ext;
}

uint64_t
nexthop_size_limit(const struct nexthop *nh)
{
	return nh->size_limit;
}

bool
nexthop_alive(const struct nexthop *nh)
{
	return nh->step == ST_IDLE && nh->bev != NULL && nh->cb == NULL;
}

bool
nexthop_tls_on(const struct nexthop *nh)
{
	return nh->tls_on;
}

unsigned
nexthop_accepted(const struct nexthop *nh)
{
	return nh->accepted;
}

const char *
nexthop_why(const struct nexthop *nh)
{
	return nh->step == ST_DEAD && nh->why[0] != '\0' ? nh->why : NULL;
}

const char *
nexthop_name(const struct nexthop *nh)
{
	return nh->name;
}
