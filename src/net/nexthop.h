/*
 * nexthop.h -- an SMTP or LMTP client for one next hop, on an event base
 * (nexthop.c).  It hands a message on while the client is still sending it:
 * message:forward and connection:proxy (lua_nexthop.c, lua/smtp/forward.lua).
 */
#ifndef LUASMTPD_NEXTHOP_H
#define LUASMTPD_NEXTHOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "reply.h"

struct evdns_base;

enum nexthop_tls {
	NH_TLS_NONE,		/* plaintext, STARTTLS never sent */
	NH_TLS_OPPORTUNISTIC,	/* STARTTLS when offered, no certificate check */
	NH_TLS_REQUIRE,		/* STARTTLS or fail; the certificate verified */
};

/* Extensions the next hop offered in its EHLO/LHLO reply. */
enum {
	NH_EXT_SIZE		= 1 << 0,
	NH_EXT_8BITMIME		= 1 << 1,
	NH_EXT_SMTPUTF8		= 1 << 2,
	NH_EXT_STARTTLS		= 1 << 3,
	NH_EXT_PIPELINING	= 1 << 4,
	NH_EXT_AUTH_PLAIN	= 1 << 5,
	NH_EXT_AUTH_LOGIN	= 1 << 6,
	NH_EXT_ENHANCED		= 1 << 7,
};

struct nexthop_target {
	const char		*host;		/* a name or an address literal */
	int			 port;
	bool			 lmtp;		/* LHLO, one reply per recipient after DATA */
	enum nexthop_tls	 tls;
	const char		*helo;		/* our name in EHLO/LHLO */
	unsigned		 timeout_ms;	/* each step: connect, a reply, data progress */
	const char		*user;		/* AUTH when not NULL */
	const char		*password;
	bool			 auth_plaintext;	/* allow AUTH without TLS */
	const char		*cafile;	/* NULL: the system store */
	const char		*servername;	/* NULL: host */
	bool			 no_verify;	/* "require" without the certificate check */
};

#define NEXTHOP_TEXT_MAX	2048	/* a reply's text kept, lines joined by '\n' */

/*
 * A reply of the next hop, or one made here (local: the next hop failed, timed
 * out, closed, or broke the protocol; code 451 and why in text).  Text is the
 * reply's lines without code and enhanced code, each printable ASCII, joined
 * by '\n': ready for a verdict.
 */
struct nexthop_reply {
	int		 code;
	char		 enhanced[REPLY_ENHANCED_MAX];	/* "" when none */
	char		 text[NEXTHOP_TEXT_MAX];
	bool		 local;
	unsigned	 index, count;	/* LMTP after DATA: reply index of count */
};

struct nexthop;

/* The result of a step; for LMTP's end of data, once per accepted recipient. */
typedef void nexthop_cb(void *arg, struct nexthop *nh, const struct nexthop_reply *r);

/*
 * A client for target on base (copied; nothing connects yet).  fd >= 0: an
 * already connected socket (the tests' socketpair), else host:port is
 * connected by nexthop_open.  NULL on ENOMEM.
 */
struct nexthop	*nexthop_create(struct event_base *base, struct evdns_base *dns,
		    const struct nexthop_target *target, int fd);
/* Ends at once (no QUIT); NULL is a no-op.  No callback runs after it. */
void		 nexthop_destroy(struct nexthop *nh);
/* QUIT, then nexthop_destroy once answered or timed out (or at once if dead). */
void		 nexthop_quit(struct nexthop *nh);

/*
 * One step at a time, each answered through cb later (never from inside the
 * call).  Each returns -1 if a step is in flight or the connection is dead.
 *   open: connect, greeting, EHLO/LHLO (HELO if EHLO is refused), STARTTLS
 *         per target.tls and EHLO again, AUTH when target.user: cb gets the
 *         last reply (2xx: ready).
 *   mail: "MAIL FROM:<from>" params, SIZE=size added when offered; a size
 *         over the next hop's SIZE is refused here (552 5.3.4, local).
 *   rcpt, data (354 expected), rset.
 *   end:  the final dot after the streamed body (CRLF added when the body did
 *         not end with one): one reply (SMTP), or one per recipient that got
 *         2xx at RCPT (LMTP: r->index of r->count).
 */
int	nexthop_open(struct nexthop *nh, nexthop_cb *cb, void *arg);
int	nexthop_mail(struct nexthop *nh, const char *from, const char *params,
	    uint64_t size, nexthop_cb *cb, void *arg);
int	nexthop_rcpt(struct nexthop *nh, const char *to, const char *params,
	    nexthop_cb *cb, void *arg);
/*
 * MAIL and a RCPT for each of n recipients in one step: sent at once when
 * the next hop offers PIPELINING, else one after the other.  cb gets MAIL's
 * reply (a refused MAIL: no RCPT was sent, or their replies are ignored);
 * each recipient's reply is then nexthop_rcpt_result(nh, i).  Pipelined,
 * DATA goes with them: when it got 354, the next nexthop_data returns 1
 * at once (no callback) and the body may flow.
 */
int	nexthop_envelope(struct nexthop *nh, const char *from, const char *params,
	    uint64_t size, const char *const *rcpts, size_t n, nexthop_cb *cb, void *arg);
/* DATA: 0, cb gets 354 (or the refusal); 1, the pipelined DATA had 354: stream now */
int	nexthop_data(struct nexthop *nh, nexthop_cb *cb, void *arg);
int	nexthop_end(struct nexthop *nh, nexthop_cb *cb, void *arg);
int	nexthop_rset(struct nexthop *nh, nexthop_cb *cb, void *arg);

/*
 * Message text after 354 (unstuffed, as the engine's hooks->data gives it):
 * dot-stuffed on the way out, across calls.  Returns the octets waiting in
 * the output buffer (the caller pauses its client above its mark), or -1 if
 * the connection is dead.
 */
long	nexthop_write(struct nexthop *nh, const char *buf, size_t len);

/* drained(arg) once the output falls to low after nexthop_write passed it. */
void	nexthop_set_drain(struct nexthop *nh, size_t low,
	    void (*drained)(void *arg), void *arg);

/* A recipient's reply in the last envelope step: code 0 if it was never sent. */
struct nexthop_brief {
	int	code;
	char	enhanced[REPLY_ENHANCED_MAX];
	char	text[256];
};
const struct nexthop_brief *nexthop_rcpt_result(const struct nexthop *nh, size_t i);
size_t		 nexthop_rcpt_results(const struct nexthop *nh);

unsigned	 nexthop_ext(const struct nexthop *nh);	/* NH_EXT_* */
uint64_t	 nexthop_size_limit(const struct nexthop *nh);	/* 0: none */
bool		 nexthop_alive(const struct nexthop *nh);	/* usable for another step */
bool		 nexthop_tls_on(const struct nexthop *nh);
unsigned	 nexthop_accepted(const struct nexthop *nh);	/* RCPTs with 2xx */
const char	*nexthop_name(const struct nexthop *nh);	/* "host:port" for logs */
const char	*nexthop_why(const struct nexthop *nh);	/* why it died ("Next hop h:p: ..."), or NULL */

#endif
