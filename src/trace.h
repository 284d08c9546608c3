/*
 * trace.h -- trace header fields of a message (RFC 5321 4.4): the Received
 * field the engine prepends, header fields a policy adds (checked and
 * folded), and the count of Received fields a message arrives with (loop
 * protection, RFC 5321 6.3).  Pure functions over buffers: no session, no I/O.
 */
#ifndef LUASMTPD_TRACE_H
#define LUASMTPD_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define TRACE_RECEIVED_MAX	2048	/* a Received field, folded, with CRLF */
#define TRACE_ADDED_MAX		16384	/* the header fields a policy adds to one message */
#define TRACE_FOLD		78	/* RFC 5322 2.1.1: SHOULD */
#define TRACE_LINE_MAX		998	/* RFC 5322 2.1.1: MUST */

/* What a Received field says; NULL or "" leaves a part out. */
struct trace_received {
	const char	*helo;		/* the HELO/EHLO/LHLO name */
	const char	*reverse;	/* the client's reverse name, if known */
	const char	*addr;		/* the client's address: "192.0.2.1", "2001:db8::1" */
	const char	*by;		/* the server's host name */
	const char	*protocol;	/* RFC 3848: "ESMTPS", ... */
	uint64_t	 id;		/* the session id */
	const char	*rcpt;		/* the only recipient, else NULL */
	time_t		 when;
};

/* RFC 3848's protocol name: SMTP, ESMTP[S][A], LMTP[S][A]. */
const char	*trace_protocol(bool lmtp, bool esmtp, bool tls, bool auth);

/*
 * Writes the Received field, folded at TRACE_FOLD where the parts allow,
 * with its CRLF, into buf (NUL-terminated).  Returns its length, 0 if it
 * does not fit in size.
 */
size_t	trace_received(char *buf, size_t size, const struct trace_received *r);

/* A field name: 1 to 76 printable ASCII octets but ':' (RFC 5322 ftext). */
bool	trace_name_ok(const char *name, size_t len);

/*
 * Appends "name: value" CRLF to buf at *len, folding the value at its white
 * space to keep lines within TRACE_FOLD octets where it can.  The value may
 * hold no CR, LF, NUL or other control octet but HTAB.  Returns 0, -1 for a
 * bad name or value (*why says which), -2 when it would pass size or a line
 * would pass TRACE_LINE_MAX octets.
 */
int	trace_header_add(char *buf, size_t *len, size_t size, const char *name,
	    size_t namelen, const char *value, size_t valuelen, const char **why);

/*
 * Counts the Received fields of a header section that arrives in pieces:
 * a field name "Received" (any case, optional WSP) then ':' at the start of
 * a line, up to the empty line that ends the section.  Continuation lines
 * are part of their field.  Constant state, any split.
 */
struct trace_hops {
	unsigned char	state;
	unsigned char	matched;	/* octets of "received" seen */
	unsigned	count;		/* saturates at UINT_MAX */
};

void	trace_hops_init(struct trace_hops *h);
void	trace_hops_feed(struct trace_hops *h, const char *buf, size_t len);
bool	trace_hops_done(const struct trace_hops *h);	/* the header section ended */

#endif
