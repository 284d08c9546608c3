/*
 * session.c -- one SMTP connection: line framing, the command table, the
 * state machine, the DATA scanner and the only door replies leave through.
 * Never touches a socket (session_io does) and never decides policy
 * (session_hooks does); see session.h for the contract.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "reply.h"
#include "sasl.h"
#include "session.h"
#include "trace.h"
#include "xclient.h"
#include "summary.h"

enum state {
	S_CONNECT,	/* waiting for the connect verdict: nothing said yet */
	S_REFUSED,	/* greeted with 554: only QUIT and NOOP (RFC 5321 3.1) */
	S_GREETED,	/* waiting for HELO/EHLO */
	S_HELO,		/* ready for MAIL */
	S_MAIL,		/* sender accepted */
	S_RCPT,		/* at least one recipient accepted */
	S_DATA,		/* reading message data */
	S_BDAT,		/* reading a BDAT chunk (or dropping a refused one) */
	S_TLS,		/* STARTTLS said 220: input is discarded until the handshake */
	S_CLOSED,	/* close requested: nothing more is read or written */
};

static const char *const state_names[] = {
	"connect", "refused", "greeted", "helo", "mail", "rcpt", "data",
	"bdat", "starttls", "closed",
};

#define ST(s)		(1u << (s))
#define ST_READY	(ST(S_GREETED) | ST(S_HELO) | ST(S_MAIL) | ST(S_RCPT))
#define ST_ANY		(ST_READY | ST(S_REFUSED))
#define NO_EVENT	SEV_COUNT

/* Where an AUTH exchange stands (RFC 4954): the next line is a SASL response. */
enum sasl_step {
	SASL_NONE,
	SASL_PLAIN,		/* waiting for the PLAIN message */
	SASL_LOGIN_USER,	/* waiting for the LOGIN username */
	SASL_LOGIN_PASS,	/* waiting for the LOGIN password */
};

/* Where the DATA scanner is within the current line. */
enum data_scan {
	DS_BOL,		/* at the start of a line */
	DS_TEXT,	/* inside a line */
	DS_CR,		/* after a CR: only LF may follow */
	DS_DOT,		/* after a "." at the start of a line */
	DS_DOT_CR,	/* after "." CR at the start of a line */
};

struct session {
	const struct session_config	*cfg;
	const struct session_hooks	*hooks;
	void				*hook_ctx;
	const struct session_io		*io;
	void				*io_ctx;
	struct session_peer		 peer;
	uint64_t			 id;

	enum state			 state;
	enum session_event		 pending;	/* the outstanding ask, or NO_EVENT */
	bool				 paused;
	bool				 feeding;	/* inside session_feed() */
	bool				 esmtp;		/* the client said EHLO */
	unsigned			 bad_commands;
	unsigned			 answering;	/* what replies answer: metrics_reply() */

	/* TLS and authentication */
	struct session_tls		*tls;		/* NULL: plaintext */
	char				*user;		/* NULL: not authenticated */
	char				*sasl_user;	/* username of the AUTH in progress */
	enum sasl_step			 sasl;
	bool				 after_auth;	/* lines may be SASL responses: not logged */
	unsigned			 auth_failures;

	/* XCLIENT: allowed from the peer at connect time (cfg->xclient_from) */
	bool				 xclient_ok;
	unsigned			 xclients;	/* XCLIENT commands applied */
	char				*remote_name;	/* its NAME; NULL: none, unavailable */

	/* the envelope (session_helo, _sender, _recipient) and the transaction */
	char				*helo;		/* told 250 for */
	bool				 helo_ext;
	char				*asked_helo;	/* the HELO/EHLO being asked */
	struct stored_path		*asked;		/* the MAIL/RCPT path being asked */
	struct stored_path		*sender;
	struct stored_path		**rcpts;	/* rcpt_count of them */
	size_t				 rcpt_cap;
	unsigned			 serial;	/* of the last path asked */
	bool				 smtputf8;
	bool				 rcpt_tried;
	size_t				 rcpt_count;

	/* the DATA scanner */
	enum data_scan			 ds;
	bool				 after_bare_lf;	/* the line began after a bare LF */
	size_t				 text_line_len;
	uint64_t			 size;
	bool				 failed;
	enum session_abort		 fail_reason;

	/* trace fields (trace.c): prepended to the data, Received fields counted */
	char				*reverse;	/* the client's reverse name, if known */
	char				*added;		/* session_add_header()'s fields */
	size_t				 added_len;
	bool				 trace_sent;	/* the data began: nothing more is prepended */
	struct trace_hops		 hops;

	/* BDAT (RFC 3030) */
	bool				 chunking;	/* the message goes by BDAT: DATA is refused */
	bool				 binary;	/* MAIL said BODY=BINARYMIME: DATA is refused */
	bool				 bdat_asked;	/* the DATA ask is a first BDAT's */
	bool				 bdat_last;	/* the chunk ends the message */
	bool				 bdat_drop;	/* the chunk is read and dropped */
	enum state			 bdat_back;	/* the state after a dropped chunk */
	uint64_t			 chunk_size;
	uint64_t			 chunk_left;	/* octets of the chunk still to read */

	/* deadlines, in ms on io->now's clock (arm_timer) */
	uint64_t			 born;		/* session_create: max_session_ms */
	uint64_t			 cmd_due;	/* the next command line, or the one begun */
	uint64_t			 ask_due;	/* the outstanding ask */
	uint64_t			 pause_due;	/* the policy's pause */
	uint64_t			 paused_at;
	uint64_t			 data_due;	/* message data: credit from min_data_rate */
	uint64_t			 tls_due;	/* STARTTLS's handshake */
	unsigned			 rate_rem;	/* credit below one ms, in ms * rate units */
	bool				 line_open;	/* cmd_due is first octet + timeout */
	bool				 data_timed;	/* data_due is this message's */
	bool				 data_idle;	/* data_due is the idle bound, not the rate's */
	bool				 tls_timed;	/* tls_due is this STARTTLS's */

	/* the summary lines (summary.h): what is being answered, and the counts */
	struct summary			 sum;
	const char			*doing;		/* the command or event a reply answers */
	bool				 data_reply;	/* ... and it is DATA or the end of data */

	/* the command line being assembled */
	size_t				 line_len;
	bool				 line_cr;	/* the last octet was CR */
	bool				 line_too_long;
	bool				 line_bad;	/* bare CR, bare LF or NUL seen */
	char				 line[];	/* cfg->max_line octets */
};

/* A path the engine keeps: the parser's fields, its strings in buf. */
struct stored_path {
	unsigned		serial;
	bool			decided;	/* LMTP: this recipient's own verdict */
	bool			accept;
	int			code;
	char			*text;		/* NULL: the default */
	struct smtp_path	path;
	char			buf[];
};

struct command {
	const char	*verb;
	unsigned	 states;	/* where the verb is legal; else 503 */
	void		(*handler)(struct session *, char *arg);	/* NULL: 502 */
	const char	*out_of_sequence;
};

static void	cmd_helo(struct session *, char *);
static void	cmd_ehlo(struct session *, char *);
static void	cmd_mail(struct session *, char *);
static void	cmd_rcpt(struct session *, char *);
static void	cmd_data(struct session *, char *);
static void	cmd_rset(struct session *, char *);
static void	cmd_noop(struct session *, char *);
static void	cmd_quit(struct session *, char *);
static void	cmd_vrfy(struct session *, char *);
static void	cmd_expn(struct session *, char *);
static void	cmd_help(struct session *, char *);
static void	cmd_starttls(struct session *, char *);
static void	cmd_auth(struct session *, char *);
static void	cmd_lhlo(struct session *, char *);
static void	cmd_bdat(struct session *, char *);
static void	cmd_xclient(struct session *, char *);

static const struct command commands[] = {
	{ "HELO",	ST_READY,	cmd_helo,	"Send QUIT" },
	{ "EHLO",	ST_READY,	cmd_ehlo,	"Send QUIT" },
	{ "MAIL",	ST(S_HELO),	cmd_mail,	NULL },
	{ "RCPT",	ST(S_MAIL) | ST(S_RCPT), cmd_rcpt, "Need MAIL before RCPT" },
	{ "DATA",	ST(S_MAIL) | ST(S_RCPT), cmd_data, "Need MAIL and RCPT before DATA" },
	{ "RSET",	ST_READY,	cmd_rset,	"Send QUIT" },
	{ "NOOP",	ST_ANY,		cmd_noop,	NULL },
	{ "QUIT",	ST_ANY,		cmd_quit,	NULL },
	{ "VRFY",	ST_READY,	cmd_vrfy,	"Send QUIT" },
	{ "EXPN",	ST_READY,	cmd_expn,	"Send QUIT" },
	{ "HELP",	ST_READY,	cmd_help,	"Send QUIT" },
	{ "STARTTLS",	ST_READY,	cmd_starttls,	"Send QUIT" },
	{ "AUTH",	ST(S_HELO),	cmd_auth,	"AUTH not allowed during a mail transaction" },
	/* BDAT checks its state itself: a refused chunk is still read */
	{ "BDAT",	ST_ANY,		cmd_bdat,	NULL },
	{ "XCLIENT",	ST(S_GREETED) | ST(S_HELO), cmd_xclient, "MAIL transaction in progress" },
	/* LMTP's (RFC 2033), after the verbs every SMTP session looks up */
	{ "LHLO",	ST_READY,	cmd_lhlo,	"Send QUIT" },
	/* known verbs this server does not offer */
	{ "ETRN",	ST_ANY,		NULL,		NULL },
	{ "TURN",	ST_ANY,		NULL,		NULL },
	{ NULL,		0,		NULL,		NULL },
};

/* What the engine says when the policy leaves code or text to it. */
struct event_reply {
	int		 ok_code;
	const char	*ok_enhanced;
	const char	*ok_text;
	int		 no_code;
	const char	*no_enhanced;
	const char	*no_text;
};

static const struct event_reply event_replies[SEV_COUNT] = {
	[SEV_CONNECT]	= { 220, NULL, NULL, 554, "5.7.1", "Access denied" },
	[SEV_HELO]	= { 250, NULL, NULL, 550, "5.7.1", "HELO name rejected" },
	[SEV_EHLO]	= { 250, NULL, NULL, 550, "5.7.1", "EHLO name rejected" },
	[SEV_MAIL]	= { 250, "2.1.0", "Sender ok", 550, "5.7.1", "Sender address rejected" },
	[SEV_RCPT]	= { 250, "2.1.5", "Recipient ok", 550, "5.7.1", "Recipient address rejected" },
	[SEV_DATA]	= { 354, NULL, "End data with <CR><LF>.<CR><LF>", 554, "5.7.1", "Transaction rejected" },
	[SEV_DATA_END]	= { 250, "2.0.0", "Message accepted", 550, "5.7.1", "Message rejected" },
	[SEV_RSET]	= { 250, "2.0.0", "Ok", 250, "2.0.0", "Ok" },
	[SEV_QUIT]	= { 221, "2.0.0", "Bye", 221, "2.0.0", "Bye" },
	[SEV_VRFY]	= { 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery",
			    550, "5.1.1", "Mailbox unavailable" },
	[SEV_EXPN]	= { 252, "2.5.0", "Cannot EXPN list", 550, "5.1.1", "Mailbox unavailable" },
	[SEV_AUTH]	= { 235, "2.7.0", "Authentication successful",
			    535, "5.7.8", "Authentication credentials invalid" },
};

/* metrics.h's verb of each entry of commands[], plus one; 0: not looked up yet */
static unsigned char	command_verbs[sizeof(commands) / sizeof(commands[0])];

static const char *const event_names[SEV_COUNT] = {
	"CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "DATA_END", "RSET",
	"QUIT", "VRFY", "EXPN", "AUTH",
};

static void	reply(struct session *, int, const char *, const char *, ...)
		    __attribute__((format(printf, 4, 5)));
static void	session_close(struct session *);
static void	message_abort(struct session *, enum session_abort);
static bool	in_message(const struct session *);
static void	recipient_verdicts_clear(struct session *);
static void	bdat_chunk_done(struct session *);
static void	sasl_forget(struct session *);
static void	arm_timer(struct session *);
static void	envelope_clear(struct session *);
static void	asked_forget(struct session *);
static void	added_clear(struct session *);
static void	trace_reset(struct session *);
static uint64_t	clock_now(const struct session *);
static void	ask(struct session *, enum session_event,
		    const struct session_event_args *);
static void	apply_verdict(struct session *, enum session_event,
		    const struct verdict *);

void
session_config_init(struct session_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->hostname = "localhost";
	cfg->extensions = EXT_ALL;
	cfg->max_line = 512;
	cfg->max_text_line = 1000;
	cfg->max_recipients = 100;
	cfg->max_size = 0;
	cfg->max_bad_commands = 20;
	cfg->timeout_command_ms = 5 * 60 * 1000;
	cfg->timeout_data_ms = 3 * 60 * 1000;
	cfg->timeout_decision_ms = 10 * 60 * 1000;
	cfg->timeout_tls_ms = 30 * 1000;
	cfg->min_data_rate = 500;
	cfg->received_header = true;
	cfg->max_hops = 100;
	cfg->max_session_ms = 60 * 60 * 1000;
	cfg->max_auth_failures = 3;
}

const char *
session_event_name(enum session_event ev)
{
	return ev < SEV_COUNT ? event_names[ev] : "NONE";
}

static uint64_t
next_session_id(void)
{
	static uint64_t	next;

	/* unique within a process, and unlikely to repeat across restarts */
	if (next == 0)
		next = ((uint64_t)time(NULL) << 24) ^ ((uint64_t)getpid() << 8);
	return ++next;
}

struct session *
session_create(const struct session_config *cfg,
    const struct session_hooks *hooks, void *hook_ctx,
    const struct session_io *io, void *io_ctx,
    const struct session_peer *peer)
{
	static const struct session_hooks	 no_hooks;
	struct session				*s;

	if ((s = calloc(1, sizeof(*s) + cfg->max_line)) == NULL)
		return NULL;
	s->cfg = cfg;
	s->hooks = hooks != NULL ? hooks : &no_hooks;
	s->hook_ctx = hook_ctx;
	s->answering = MR_CONNECT;
	s->io = io;
	s->io_ctx = io_ctx;
	if (peer != NULL)
		s->peer = *peer;
	s->id = next_session_id();
	s->born = clock_now(s);
	s->sum.quiet = cfg->no_summary;
	s->state = S_CONNECT;
	s->pending = NO_EVENT;
	s->xclient_ok = proxy_nets_match(&cfg->xclient_from, s->peer.remote_addr);
	if (peer != NULL && peer->tls != NULL) {
		if ((s->tls = malloc(sizeof(*s->tls))) == NULL) {
			free(s);
			return NULL;
		}
		*s->tls = *peer->tls;
		s->peer.tls = s->tls;
	}
	ask(s, SEV_CONNECT, &(struct session_event_args){ .arg = s->peer.remote_addr });
	arm_timer(s);
	return s;
}

void
session_destroy(struct session *s)
{
	if (s == NULL)
		return;
	if (s->pending != NO_EVENT && s->hooks->cancel != NULL)
		s->hooks->cancel(s->hook_ctx, s, s->pending);
	if (in_message(s))		/* also while DATA_END is pending */
		message_abort(s, ABORT_DISCONNECT);
	if (s->hooks->closed != NULL)
		s->hooks->closed(s->hook_ctx, s);
	sasl_forget(s);
	envelope_clear(s);
	asked_forget(s);
	summary_close(&s->sum, s, clock_now(s), s->born);
	free(s->added);
	free(s->reverse);
	free(s->helo);
	free(s->rcpts);
	free(s->user);
	free(s->remote_name);
	free(s->tls);
	free(s);
}

/* Is a message under way: DATA's text, a chunk, or between BDAT chunks? */
static bool
in_message(const struct session *s)
{
	return s->state == S_DATA || (s->state == S_BDAT && !s->bdat_drop) ||
	    s->chunking;
}

/* The message in progress will not be delivered: tell the policy, once. */
static void
message_abort(struct session *s, enum session_abort why)
{
	if (s->failed)
		return;
	s->failed = true;
	s->fail_reason = why;
	metrics_message(MM_FAILED, s->size);
	if (s->hooks->abort != NULL)
		s->hooks->abort(s->hook_ctx, s, why);
}

/* --- the session timer ---------------------------------------------------- */

/*
 * Every wait has an absolute deadline; the one timer is armed for the
 * nearest of the current wait's and the session's end.  A verdict or a pause
 * gets decisionTimeout from its start; a command line commandTimeout from its
 * first octet (between lines: from the last one); STARTTLS's handshake the
 * smaller of tlsHandshakeTimeout and commandTimeout from the 220; message data
 * starts with dataTimeout of credit that each octet refills by 1/min_data_rate
 * s, never beyond dataTimeout ahead (Postfix's smtpd_min_data_rate).  Octets
 * move a deadline only by that rule, so trickling them holds nothing open.
 */
enum due {
	DUE_NONE,	/* closed */
	DUE_ASK,	/* a verdict */
	DUE_PAUSE,	/* the policy paused the message */
	DUE_TLS,	/* the handshake after STARTTLS */
	DUE_DATA,	/* message data */
	DUE_COMMAND,	/* a command line */
};

static uint64_t
clock_now(const struct session *s)
{
	return s->io->now != NULL ? s->io->now(s->io_ctx) : 0;
}

/* "300", "0.5": a timeout in ms as seconds, for the log */
static const char *
secs(char *buf, size_t len, unsigned ms)
{
	if (ms % 1000 == 0)
		snprintf(buf, len, "%u", ms / 1000);
	else if (ms % 100 == 0)
		snprintf(buf, len, "%u.%u", ms / 1000, ms % 1000 / 100);
	else
		snprintf(buf, len, "%u.%03u", ms / 1000, ms % 1000);
	return buf;
}

/* The message's deadline starts with its 354 (called again: a no-op). */
static void
data_clock(struct session *s, uint64_t now)
{
	if (s->state != S_DATA && s->state != S_BDAT) {
		s->data_timed = false;
		return;
	}
	if (s->data_timed)
		return;
	s->data_timed = true;
	s->data_idle = true;
	s->data_due = now + s->cfg->timeout_data_ms;
	s->rate_rem = 0;
}

/* n octets of message data arrived: credit n / min_data_rate seconds. */
static void
data_progress(struct session *s, size_t n)
{
	uint64_t	now, cap, units, credit;

	if (n == 0 || !s->data_timed)
		return;
	now = clock_now(s);
	cap = now + s->cfg->timeout_data_ms;
	if (s->data_due <= now && s->cfg->min_data_rate > 0)
		return;		/* overdue already: the timer fires at once */
	if (s->cfg->min_data_rate == 0) {
		s->data_due = cap;
		s->data_idle = true;
		return;
	}
	units = (uint64_t)n * 1000 + s->rate_rem;
	credit = units / s->cfg->min_data_rate;
	s->rate_rem = (unsigned)(units % s->cfg->min_data_rate);
	if (s->data_due + credit >= cap) {
		s->data_due = cap;
		s->data_idle = true;
	} else {
		s->data_due += credit;
		s->data_idle = false;
	}
}

/* The wait the session is in and its deadline (without the session's end). */
static enum due
current_due(const struct session *s, uint64_t *due)
{
	if (s->state == S_CLOSED)
		return DUE_NONE;
	if (s->pending != NO_EVENT) {
		*due = s->ask_due;
		return DUE_ASK;
	}
	if (s->paused) {
		*due = s->pause_due;
		return DUE_PAUSE;
	}
	switch (s->state) {
	case S_TLS:
		*due = s->tls_due;
		return DUE_TLS;
	case S_DATA:
	case S_BDAT:
		*due = s->data_due;
		return DUE_DATA;
	default:
		*due = s->cmd_due;
		return DUE_COMMAND;
	}
}

static void
arm_timer(struct session *s)
{
	uint64_t	now, due, end;
	unsigned	ms;

	if (s->io->timer == NULL || s->state == S_CLOSED)
		return;
	now = clock_now(s);
	data_clock(s, now);
	if (s->state != S_TLS)
		s->tls_timed = false;
	if (s->state == S_TLS && !s->tls_timed) {
		s->tls_timed = true;
		s->tls_due = now + (s->cfg->timeout_tls_ms < s->cfg->timeout_command_ms ?
		    s->cfg->timeout_tls_ms : s->cfg->timeout_command_ms);
	} else if (s->state != S_DATA && s->state != S_BDAT && s->state != S_TLS) {
		if (s->line_len == 0 && !s->line_cr) {
			s->line_open = false;		/* between lines: idle */
			s->cmd_due = now + s->cfg->timeout_command_ms;
		} else if (!s->line_open) {
			s->line_open = true;		/* a line's first octets */
			s->cmd_due = now + s->cfg->timeout_command_ms;
		}
	}
	if (current_due(s, &due) == DUE_NONE)
		return;
	if (s->cfg->max_session_ms > 0 &&
	    (end = s->born + s->cfg->max_session_ms) < due)
		due = end;
	ms = due <= now ? 1 : due - now > UINT32_MAX ? UINT32_MAX : (unsigned)(due - now);
	s->io->timer(s->io_ctx, ms);
}

/* The session's life is over (max_session_ms): whatever it was doing. */
static void
session_expire(struct session *s)
{
	char	t[24];

	log_info(s->id, "timeout: connection open for %s s (maxSessionTime)",
	    secs(t, sizeof(t), s->cfg->max_session_ms));
	s->doing = "timeout";
	s->data_reply = false;
	if (s->pending != NO_EVENT) {
		if (s->hooks->cancel != NULL)
			s->hooks->cancel(s->hook_ctx, s, s->pending);
		s->pending = NO_EVENT;
	}
	if (in_message(s))
		message_abort(s, ABORT_TIMEOUT);
	if (s->state == S_TLS)
		session_close(s);	/* the client expects a handshake: no reply */
	else
		reply(s, 421, "4.4.2", "%s Error: connection time limit exceeded",
		    s->cfg->hostname);
}

void
session_timeout(struct session *s)
{
	const char	*text = "timeout exceeded";
	char		 t[24];
	uint64_t	 due;
	enum due	 kind;

	if ((kind = current_due(s, &due)) == DUE_NONE)
		return;
	s->answering = MV_OTHER;
	if (s->cfg->max_session_ms > 0 && s->born + s->cfg->max_session_ms <= due) {
		session_expire(s);
		return;
	}
	switch (kind) {
	case DUE_ASK: {
		enum session_event ev = s->pending;

		log_warn(s->id, "timeout: no verdict for %s within %s s (decisionTimeout)",
		    event_names[ev], secs(t, sizeof(t), s->cfg->timeout_decision_ms));
		s->pending = NO_EVENT;
		if (s->hooks->cancel != NULL)
			s->hooks->cancel(s->hook_ctx, s, ev);
		recipient_verdicts_clear(s);
		apply_verdict(s, ev, &(struct verdict){ false, 451,
		    "4.3.0 Timed out waiting for a policy decision" });
		arm_timer(s);
		if (!s->feeding && s->io->wake != NULL && s->state != S_CLOSED)
			s->io->wake(s->io_ctx);
		return;
	}
	case DUE_TLS: {
		bool by_tls = s->cfg->timeout_tls_ms < s->cfg->timeout_command_ms;

		log_info(s->id, "timeout: TLS handshake not done within %s s of STARTTLS (%s)",
		    secs(t, sizeof(t), by_tls ? s->cfg->timeout_tls_ms :
		    s->cfg->timeout_command_ms),
		    by_tls ? "tlsHandshakeTimeout" : "commandTimeout");
		session_close(s);	/* no channel for a reply */
		return;
	}
	case DUE_PAUSE:
		log_info(s->id, "timeout: message data paused by the policy for %s s (decisionTimeout)",
		    secs(t, sizeof(t), s->cfg->timeout_decision_ms));
		break;
	case DUE_DATA:
		if (s->data_idle) {
			log_info(s->id, "timeout: no message data for %s s (dataTimeout)",
			    secs(t, sizeof(t), s->cfg->timeout_data_ms));
		} else {
			log_info(s->id, "timeout: message data slower than %u octets/s (minDataRate)",
			    s->cfg->min_data_rate);
			text = "message data too slow";
		}
		break;
	case DUE_COMMAND:
		if (s->line_open) {
			log_info(s->id, "timeout: command line not complete %s s after its first octet (commandTimeout)",
			    secs(t, sizeof(t), s->cfg->timeout_command_ms));
			text = "command line not completed in time";
		} else {
			log_info(s->id, "timeout: no command within %s s (commandTimeout)",
			    secs(t, sizeof(t), s->cfg->timeout_command_ms));
		}
		break;
	case DUE_NONE:
		return;
	}
	if (in_message(s))
		message_abort(s, ABORT_TIMEOUT);
	s->doing = "timeout";
	s->data_reply = false;
	reply(s, 421, "4.4.2", "%s Error: %s", s->cfg->hostname, text);
}

void
session_shutdown(struct session *s)
{
	if (s->state == S_CLOSED)
		return;
	if (s->pending != NO_EVENT) {
		if (s->hooks->cancel != NULL)
			s->hooks->cancel(s->hook_ctx, s, s->pending);
		s->pending = NO_EVENT;
	}
	if (in_message(s))
		message_abort(s, ABORT_SHUTDOWN);
	s->answering = MV_OTHER;
	s->doing = "shutdown";
	s->data_reply = false;
	reply(s, 421, "4.3.2", "%s Service shutting down", s->cfg->hostname);
}

void
session_eof(struct session *s)
{
	if (s->state == S_CLOSED)
		return;
	log_debug(s->id, "client closed the connection in state %s",
	    state_names[s->state]);
	/* session_destroy() cancels the ask and aborts the message */
	if (s->state != S_DATA && s->state != S_BDAT)
		s->state = S_CLOSED;
}

/* --- replies: the one door ------------------------------------------------ */

static void
session_close(struct session *s)
{
	if (s->state == S_CLOSED)
		return;
	log_debug(s->id, "%s -> closed", state_names[s->state]);
	s->state = S_CLOSED;
	s->io->close(s->io_ctx);
}

/*
 * Formats and writes one reply.  The enhanced code is dropped when the
 * extension is off; 421 always closes the connection after it is written.
 */
static void
reply_text(struct session *s, int code, const char *enhanced, const char *text)
{
	char	buf[REPLY_LINE_MAX * REPLY_LINES_MAX + 1];
	size_t	len;

	if (s->state == S_CLOSED)
		return;
	summary_reply(&s->sum, s, s->doing, s->asked != NULL ? s->asked->path.address :
	    NULL, code, enhanced, text, s->data_reply);
	if (!(s->cfg->extensions & EXT_ENHANCEDSTATUSCODES))
		enhanced = NULL;
	if ((len = reply_format(buf, sizeof(buf), code, enhanced, text)) == 0)
		len = reply_format(buf, sizeof(buf), 451, enhanced ? "4.3.0" : NULL,
		    "Reply too long");
	log_debug(s->id, "<<< %.*s", (int)(len - 2), buf);
	metrics_reply(s->answering, code);
	s->sum.bytes_out += len;
	s->io->write(s->io_ctx, buf, len);
	if (code == 421)
		session_close(s);
}

static void
reply_v(struct session *s, int code, const char *enhanced, const char *fmt,
    va_list ap)
{
	char	text[REPLY_LINE_MAX];

	vsnprintf(text, sizeof(text), fmt, ap);
	reply_text(s, code, enhanced, text);
}

static void
reply(struct session *s, int code, const char *enhanced, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	reply_v(s, code, enhanced, fmt, ap);
	va_end(ap);
}

/* A 5xx reply to a command the client got wrong; too many end the session. */
static void
reply_error(struct session *s, int code, const char *enhanced,
    const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	reply_v(s, code, enhanced, fmt, ap);
	va_end(ap);
	if (++s->bad_commands >= s->cfg->max_bad_commands) {
		log_info(s->id, "%u errors: closing", s->bad_commands);
		reply(s, 421, "4.7.0", "%s Error: too many errors",
		    s->cfg->hostname);
	}
}

/* --- verdicts ----------------------------------------------------------- */

static void
ask(struct session *s, enum session_event ev,
    const struct session_event_args *args)
{
	struct verdict	v = { .accept = true };

	s->doing = event_names[ev];
	if (s->hooks->ask != NULL) {
		s->pending = ev;
		if (s->hooks->ask(s->hook_ctx, s, ev, args, &v) == HOOK_WAIT) {
			s->ask_due = clock_now(s) + s->cfg->timeout_decision_ms;
			arm_timer(s);
			return;
		}
		s->pending = NO_EVENT;
	}
	apply_verdict(s, ev, &v);
}

int
session_decide(struct session *s, const struct verdict *v)
{
	enum session_event ev = s->pending;

	if (ev == NO_EVENT || s->state == S_CLOSED)
		return -1;
	s->pending = NO_EVENT;
	apply_verdict(s, ev, v);
	arm_timer(s);
	/* held input can now be read (inside a feed, the loop goes on by itself) */
	if (!s->feeding && s->io->wake != NULL && s->state != S_CLOSED)
		s->io->wake(s->io_ctx);
	return 0;
}

/* Is the code one the event can carry for this outcome? */
static bool
verdict_code_ok(enum session_event ev, bool accept, int code)
{
	if (!reply_valid_code(code))
		return false;
	if (!accept)
		return code / 100 == 4 || code / 100 == 5;
	switch (ev) {
	case SEV_CONNECT:	return code == 220;
	case SEV_DATA:		return code == 354;
	case SEV_QUIT:		return code == 221;
	case SEV_AUTH:		return code == 235;
	default:		return code / 100 == 2;
	}
}

static void	enter_state(struct session *, enum state);
static void	reset_transaction(struct session *);
static void	greet(struct session *, int, const char *, const char *);
static bool	text_fits(const struct session *, enum session_event, bool, int,
		    const char *);
static void	ehlo_reply(struct session *, const char *);
static void	data_begin(struct session *);
static void	auth_decided(struct session *, bool, int, const char *,
		    const char *);

/*
 * The reply a verdict gives: code, enhanced code and text, defaults filled
 * in.  An invalid verdict (a 2xx rejection, a bad text) becomes 451 4.3.0,
 * and the reason is logged.  Returns whether it accepts.
 */
static bool
verdict_reply(struct session *s, enum session_event ev, const struct verdict *v,
    int *codep, char enhanced[REPLY_ENHANCED_MAX], const char **textp)
{
	const struct event_reply	*d = &event_replies[ev];
	const char			*text, *bad_text = "";
	bool				 accept = v->accept;
	int				 code = v->code;

	if (code == 0)
		code = accept ? d->ok_code : d->no_code;
	text = v->text != NULL ? reply_split_enhanced(v->text, enhanced) : NULL;
	if (text == NULL) {
		strcpy(enhanced, "");
		text = accept ? d->ok_text : d->no_text;
	}
	if (v->text != NULL && !reply_valid_text(v->text))
		bad_text = " and a text with control characters or too long";
	else if (v->text != NULL && !text_fits(s, ev, accept, code, text))
		bad_text = " and a text too long for the host name or extensions";
	if (!verdict_code_ok(ev, accept, code) || bad_text[0] != '\0' ||
	    (enhanced[0] != '\0' && enhanced[0] - '0' != code / 100)) {
		log_error(s->id, "invalid verdict for %s: %s with code %d%s",
		    event_names[ev], accept ? "accept" : "reject", v->code,
		    bad_text);
		accept = false;
		code = ev == SEV_CONNECT ? 421 : 451;
		text = reply_split_enhanced(SESSION_POLICY_ERROR, enhanced);
	}
	if (enhanced[0] == '\0') {
		const char *def = accept ? d->ok_enhanced : d->no_enhanced;

		if (def != NULL) {
			size_t n = strnlen(def, REPLY_ENHANCED_MAX - 1);

			/* the default's subject and detail, in the reply's class
			 * (a copy by hand: snprintf cost ~570 instructions a reply) */
			memcpy(enhanced, def, n);
			enhanced[n] = '\0';
			enhanced[0] = (char)('0' + code / 100);
		}
	}
	/* RSET and QUIT cannot be refused: only their text is the policy's */
	if ((ev == SEV_RSET || ev == SEV_QUIT) && !accept) {
		accept = true;
		code = d->ok_code;
		strcpy(enhanced, d->ok_enhanced);
		text = d->ok_text;
	}
	*codep = code;
	*textp = text;
	return accept;
}

static void	lmtp_replies(struct session *, int, const char *, const char *);
static void	bdat_begin(struct session *, uint64_t);
static void	bdat_drop(struct session *, uint64_t);

/* Turns a verdict into the reply and the state change (verdict_reply). */
static void
apply_verdict(struct session *s, enum session_event ev, const struct verdict *v)
{
	char		 enhanced[REPLY_ENHANCED_MAX];
	const char	*text;
	int		 code;
	bool		 accept = verdict_reply(s, ev, v, &code, enhanced, &text);
	bool		 bdat = false;

	switch (ev) {
	case SEV_CONNECT:
		greet(s, accept ? code : code / 100 == 4 ? 421 : code,
		    accept ? NULL : enhanced, text);
		break;
	case SEV_HELO:
	case SEV_EHLO:
		if (accept) {
			free(s->helo);
			s->helo = s->asked_helo;
			summary_client_changed(&s->sum);
			s->asked_helo = NULL;
			s->helo_ext = ev == SEV_EHLO;
			s->esmtp = ev == SEV_EHLO;
			enter_state(s, S_HELO);
			if (ev == SEV_EHLO && code == 250)
				ehlo_reply(s, v->text != NULL ? text : NULL);
			else
				reply_text(s, code, NULL, v->text != NULL ?
				    text : s->cfg->hostname);
		} else {
			enter_state(s, S_GREETED);
			reply_text(s, code, enhanced, text);
		}
		break;
	case SEV_MAIL:
		if (accept) {
			envelope_clear(s);
			s->sender = s->asked;
			s->asked = NULL;
			summary_mail(&s->sum, s, s->sender->path.address, clock_now(s));
			enter_state(s, S_MAIL);
		} else
			reset_transaction(s);
		reply_text(s, code, enhanced, text);
		break;
	case SEV_RCPT:
		summary_rcpt(&s->sum, s->asked->path.address, code, enhanced);
		if (accept) {
			s->rcpts[s->rcpt_count++] = s->asked;
			s->asked = NULL;
			enter_state(s, S_RCPT);
		}
		reply_text(s, code, enhanced, text);
		break;
	case SEV_DATA:
		if (s->bdat_asked) {
			/* BDAT: no 354; the chunk is read (or dropped) after the outcome */
			s->bdat_asked = false;
			bdat = true;
			if (!accept)
				reply_text(s, code, enhanced, text);
			break;
		}
		if (accept)
			data_begin(s);
		reply_text(s, code, accept ? NULL : enhanced, text);
		break;
	case SEV_DATA_END:
		metrics_message(accept ? MM_ACCEPTED : MM_REJECTED, s->size);
		/* the envelope is forgotten after the outcome: its listeners see it */
		s->smtputf8 = false;
		s->rcpt_tried = false;
		s->chunking = s->binary = false;
		enter_state(s, S_HELO);
		if (s->cfg->lmtp)
			lmtp_replies(s, code, enhanced, text);
		else
			reply_text(s, code, enhanced, text);
		break;
	case SEV_RSET:
		reset_transaction(s);
		if (s->state != S_GREETED)
			enter_state(s, S_HELO);
		reply_text(s, code, enhanced, text);
		break;
	case SEV_QUIT:
		reply_text(s, code, enhanced, text);
		session_close(s);
		break;
	case SEV_VRFY:
	case SEV_EXPN:
		reply_text(s, code, enhanced, text);
		break;
	case SEV_AUTH:
		auth_decided(s, accept, code, enhanced, text);
		break;
	case SEV_COUNT:
		break;
	}
	asked_forget(s);
	if (s->hooks->outcome != NULL)
		s->hooks->outcome(s->hook_ctx, s, ev, code);
	if (ev == SEV_DATA_END)
		envelope_clear(s);
	if (bdat && s->state != S_CLOSED) {
		if (accept)
			bdat_begin(s, s->chunk_size);
		else
			bdat_drop(s, s->chunk_size);
	}
}

/*
 * LMTP (RFC 2033 4.2): a reply per recipient told 250, in RCPT order: its
 * own verdict (session_recipient_verdict), else the message's.
 */
static void
lmtp_replies(struct session *s, int code, const char *enhanced, const char *text)
{
	for (size_t i = 0; i < s->rcpt_count && s->state != S_CLOSED; i++) {
		struct stored_path	*r = s->rcpts[i];
		char			 e[REPLY_ENHANCED_MAX];
		const char		*t;
		int			 c;

		if (!r->decided) {
			reply_text(s, code, enhanced, text);
			continue;
		}
		verdict_reply(s, SEV_DATA_END, &(struct verdict){ r->accept, r->code,
		    r->text }, &c, e, &t);
		reply_text(s, c, e, t);
	}
}

int
session_recipient_verdict(struct session *s, size_t i, const struct verdict *v)
{
	struct stored_path	*r;
	char			*text = NULL;

	if (!s->cfg->lmtp || s->pending != SEV_DATA_END || i >= s->rcpt_count)
		return -1;
	if (v->text != NULL && (text = strndup(v->text,
	    REPLY_LINE_MAX * REPLY_LINES_MAX)) == NULL)
		return -1;
	r = s->rcpts[i];
	free(r->text);
	r->decided = true;
	r->accept = v->accept;
	r->code = v->code;
	r->text = text;
	return 0;
}

/* A verdict that is not the policy's (a timeout): for every recipient. */
static void
recipient_verdicts_clear(struct session *s)
{
	for (size_t i = 0; i < s->rcpt_count; i++) {
		free(s->rcpts[i]->text);
		s->rcpts[i]->text = NULL;
		s->rcpts[i]->decided = false;
	}
}

bool
session_lmtp(const struct session *s)
{
	return s->cfg->lmtp;
}

/* --- state ------------------------------------------------------------- */

/* The one writer of s->state outside close: logs old -> new. */
static void
enter_state(struct session *s, enum state next)
{
	if (s->state == next || s->state == S_CLOSED)
		return;
	log_debug(s->id, "%s -> %s", state_names[s->state], state_names[next]);
	s->state = next;
}

/* --- the envelope ------------------------------------------------------ */

static char *
stash(char **p, const char *src)
{
	size_t	 n = strlen(src) + 1;
	char	*dst = *p;

	memcpy(dst, src, n);
	*p += n;
	return dst;
}

/* A copy of path with its own strings; NULL on ENOMEM. */
static struct stored_path *
path_store(const struct smtp_path *path, unsigned serial)
{
	struct stored_path	*sp;
	size_t			 len, n = path->nparams < SMTP_PARAMS_MAX ?
				    path->nparams : SMTP_PARAMS_MAX;
	char			*p;

	len = strlen(path->address) + strlen(path->local) + strlen(path->domain) + 3;
	for (size_t i = 0; i < n; i++)
		len += strlen(path->params[i].key) + 1 + (path->params[i].value != NULL ?
		    strlen(path->params[i].value) + 1 : 0);
	if ((sp = malloc(sizeof(*sp) + len)) == NULL)
		return NULL;
	sp->serial = serial;
	sp->decided = false;
	sp->text = NULL;
	memset(&sp->path, 0, sizeof(sp->path));
	p = sp->buf;
	sp->path.address = stash(&p, path->address);
	sp->path.local = stash(&p, path->local);
	sp->path.domain = stash(&p, path->domain);
	for (size_t i = 0; i < n; i++) {
		sp->path.params[i].key = stash(&p, path->params[i].key);
		if (path->params[i].value != NULL)
			sp->path.params[i].value = stash(&p, path->params[i].value);
	}
	sp->path.nparams = n;
	sp->path.utf8 = path->utf8;
	return sp;
}

/* Forgets sender and recipients. */
static void
envelope_clear(struct session *s)
{
	if (s->sum.tx_open)
		summary_tx_end(&s->sum, s, clock_now(s));	/* its line, once */
	free(s->sender);
	s->sender = NULL;
	for (size_t i = 0; i < s->rcpt_count; i++) {
		free(s->rcpts[i]->text);
		free(s->rcpts[i]);
	}
	s->rcpt_count = 0;
}

/* Drops what the last ask was about (stored, if it was told 250). */
static void
asked_forget(struct session *s)
{
	free(s->asked);
	s->asked = NULL;
	free(s->asked_helo);
	s->asked_helo = NULL;
}

/*
 * Keeps the path of a MAIL or RCPT until its verdict; false (and a 451)
 * on ENOMEM.
 */
static bool
path_ask(struct session *s, const struct smtp_path *path)
{
	asked_forget(s);
	if (s->rcpt_count == s->rcpt_cap) {
		size_t			 cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
		struct stored_path	**r = realloc(s->rcpts, cap * sizeof(*r));

		if (r == NULL)
			goto nomem;
		s->rcpts = r;
		s->rcpt_cap = cap;
	}
	if ((s->asked = path_store(path, ++s->serial)) == NULL)
		goto nomem;
	return true;
nomem:
	reply(s, 451, "4.3.0", "Out of memory, try again later");
	return false;
}

static void
reset_transaction(struct session *s)
{
	if (s->chunking)	/* between BDAT chunks: that message is over */
		message_abort(s, ABORT_RESET);
	s->smtputf8 = false;
	s->rcpt_tried = false;
	s->chunking = s->binary = false;
	envelope_clear(s);
	if (s->state == S_MAIL || s->state == S_RCPT || s->state == S_DATA ||
	    s->state == S_BDAT)
		enter_state(s, S_HELO);
}

/*
 * A reply text built in pieces.  It never passes its buffer: a piece that
 * does not fit is left out whole and the text is marked cut (a sum of
 * snprintf() results would run past the end instead).
 */
struct text {
	char	buf[REPLY_LINE_MAX * REPLY_LINES_MAX];
	size_t	len;
	bool	cut;
};

static void	text_add(struct text *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));

static void
text_add(struct text *t, const char *fmt, ...)
{
	va_list	ap;
	int	n;

	if (t->cut)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(t->buf) - t->len) {
		t->buf[t->len] = '\0';
		t->cut = true;
		return;
	}
	t->len += (size_t)n;
}

static void
greet(struct session *s, int code, const char *enhanced, const char *text)
{
	struct text t = { .len = 0 };

	/* text_fits() made sure the host name and the text fit */
	if (code == 220) {
		enter_state(s, S_GREETED);
		text_add(&t, "%s %s", s->cfg->hostname, text != NULL ? text :
		    s->cfg->lmtp ? "LMTP" : "ESMTP");
		reply_text(s, 220, NULL, t.buf);
		return;
	}
	/* 554: stay to answer 503 until QUIT; 421 closes in reply_text() */
	enter_state(s, S_REFUSED);
	text_add(&t, "%s %s", s->cfg->hostname, text);
	reply_text(s, code, enhanced, t.buf);
}

/* AUTH is advertised once the session may use it (RFC 4954 4, RFC 3207). */
static bool
auth_offered(const struct session *s)
{
	return s->cfg->auth_methods != 0 &&
	    (s->tls != NULL || s->cfg->auth_without_tls);
}

#define EHLO_KEYWORDS_MAX	11
#define EHLO_KEYWORD_LEN	64	/* XCLIENT_KEYWORD; "SIZE 18446744073709551615" */

/* The extension lines of this session's EHLO reply; returns how many. */
static size_t
ehlo_keywords(const struct session *s, char kw[EHLO_KEYWORDS_MAX][EHLO_KEYWORD_LEN])
{
	unsigned	ext = s->cfg->extensions;
	size_t		n = 0;

	if (ext & EXT_PIPELINING)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "PIPELINING");
	if ((ext & EXT_SIZE) && s->cfg->max_size > 0)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "SIZE %" PRIu64, s->cfg->max_size);
	else if (ext & EXT_SIZE)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "SIZE");
	if (ext & EXT_8BITMIME)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "8BITMIME");
	/* constant keywords: strcpy, not snprintf (~500 instructions each) */
	if ((ext & EXT_CHUNKING) && (ext & EXT_BINARYMIME))
		strcpy(kw[n++], "BINARYMIME");
	if (ext & EXT_CHUNKING)
		strcpy(kw[n++], "CHUNKING");
	if (ext & EXT_DSN)
		strcpy(kw[n++], "DSN");
	if (ext & EXT_ENHANCEDSTATUSCODES)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "ENHANCEDSTATUSCODES");
	if (ext & EXT_SMTPUTF8)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "SMTPUTF8");
	if (s->cfg->starttls && s->tls == NULL)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "STARTTLS");
	if (auth_offered(s))
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "AUTH%s%s",
		    s->cfg->auth_methods & AUTH_PLAIN ? " PLAIN" : "",
		    s->cfg->auth_methods & AUTH_LOGIN ? " LOGIN" : "");
	if (s->xclient_ok)
		snprintf(kw[n++], EHLO_KEYWORD_LEN, "%s", XCLIENT_KEYWORD);
	return n;
}

/*
 * Does a policy's (valid) text fit in the reply the engine builds around it?
 * The greeting and the EHLO reply put the host name before its first line,
 * and the EHLO reply adds a line per extension.
 */
static bool
text_fits(const struct session *s, enum session_event ev, bool accept,
    int code, const char *text)
{
	char	kw[EHLO_KEYWORDS_MAX][EHLO_KEYWORD_LEN];
	size_t	lines, first;

	if (ev != SEV_CONNECT && !(ev == SEV_EHLO && accept && code == 250))
		return true;
	lines = reply_lines(text, &first);
	if (ev == SEV_EHLO)
		lines += ehlo_keywords(s, kw);
	return strlen(s->cfg->hostname) + 1 + first <= REPLY_TEXT_MAX &&
	    lines <= REPLY_LINES_MAX;
}

static void
ehlo_reply(struct session *s, const char *text)
{
	char		kw[EHLO_KEYWORDS_MAX][EHLO_KEYWORD_LEN];
	struct text	t = { .len = 0 };
	size_t		n = ehlo_keywords(s, kw);

	text_add(&t, "%s%s%s", s->cfg->hostname, text != NULL ? " " : "",
	    text != NULL ? text : "");
	for (size_t i = 0; i < n; i++)
		text_add(&t, "\n%s", kw[i]);
	reply_text(s, 250, NULL, t.buf);
}

/* --- commands ----------------------------------------------------------- */

static bool
blank(const char *arg)
{
	return arg == NULL || *arg == '\0';
}

static void
helo_or_ehlo(struct session *s, char *arg, enum session_event ev)
{
	if (blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: %s hostname",
		    s->cfg->lmtp ? "LHLO" : ev == SEV_EHLO ? "EHLO" : "HELO");
		return;
	}
	if (!proto_valid_helo(arg, (s->cfg->extensions & EXT_SMTPUTF8) != 0)) {
		reply_error(s, 501, "5.5.4", "Invalid domain name");
		return;
	}
	/* a new HELO/EHLO resets the transaction (RFC 5321 4.1.4) */
	reset_transaction(s);
	asked_forget(s);
	if ((s->asked_helo = strdup(arg)) == NULL) {
		reply(s, 451, "4.3.0", "Out of memory, try again later");
		return;
	}
	ask(s, ev, &(struct session_event_args){ .arg = arg });
}

static void
cmd_helo(struct session *s, char *arg)
{
	helo_or_ehlo(s, arg, SEV_HELO);
}

static void
cmd_ehlo(struct session *s, char *arg)
{
	helo_or_ehlo(s, arg, SEV_EHLO);
}

/* LMTP's EHLO (RFC 2033 4.1): the policy hears an EHLO (connection.lmtp). */
static void
cmd_lhlo(struct session *s, char *arg)
{
	helo_or_ehlo(s, arg, SEV_EHLO);
}

/* Checks MAIL parameters against the extensions on; replies on failure. */
static bool
mail_params_ok(struct session *s, const struct smtp_path *path)
{
	unsigned ext = s->cfg->extensions;

	for (size_t i = 0; i < path->nparams; i++) {
		const struct smtp_param *p = &path->params[i];

		if (!s->esmtp) {
			reply_error(s, 555, "5.5.4",
			    "Parameters need EHLO, not HELO");
			return false;
		}
		if (strcasecmp(p->key, "SIZE") == 0 && (ext & EXT_SIZE)) {
			char		*end;
			uint64_t	 size;

			if (p->value == NULL || p->value[0] < '0' ||
			    p->value[0] > '9' || strlen(p->value) > 20) {
				reply_error(s, 501, "5.5.4", "Bad SIZE value");
				return false;
			}
			size = strtoull(p->value, &end, 10);
			if (*end != '\0') {
				reply_error(s, 501, "5.5.4", "Bad SIZE value");
				return false;
			}
			if (s->cfg->max_size > 0 && size > s->cfg->max_size) {
				reply(s, 552, "5.3.4",
				    "Message size exceeds fixed limit");
				return false;
			}
		} else if (strcasecmp(p->key, "BODY") == 0 &&
		    (ext & (EXT_8BITMIME | EXT_BINARYMIME))) {
			bool binary = (ext & EXT_BINARYMIME) && (ext & EXT_CHUNKING) &&
			    p->value != NULL && strcasecmp(p->value, "BINARYMIME") == 0;

			if (p->value == NULL || (strcasecmp(p->value, "7BIT") != 0 &&
			    !((ext & EXT_8BITMIME) &&
			    strcasecmp(p->value, "8BITMIME") == 0) && !binary)) {
				reply_error(s, 501, "5.5.4", "Bad BODY value");
				return false;
			}
			s->binary = binary;
		} else if (strcasecmp(p->key, "AUTH") == 0 &&
		    s->cfg->auth_methods != 0) {
			/* RFC 4954 5: accepted; the identity is not trusted */
			if (p->value == NULL) {
				reply_error(s, 501, "5.5.4", "Bad AUTH value");
				return false;
			}
		} else if ((strcasecmp(p->key, "RET") == 0 ||
		    strcasecmp(p->key, "ENVID") == 0) && (ext & EXT_DSN)) {
			continue;	/* proto_dsn_params() checked it */
		} else if (strcasecmp(p->key, "SMTPUTF8") == 0 &&
		    (ext & EXT_SMTPUTF8)) {
			if (p->value != NULL) {
				reply_error(s, 501, "5.5.4",
				    "SMTPUTF8 takes no value");
				return false;
			}
			s->smtputf8 = true;
		} else {
			reply_error(s, 555, "5.5.4", "Unsupported parameter %.64s",
			    p->key);
			return false;
		}
	}
	return true;
}

static void
cmd_mail(struct session *s, char *arg)
{
	struct smtp_path	 path;
	const char		*rest, *why;
	int			 flags = PATH_ALLOW_NULL;

	if (arg == NULL || (rest = proto_skip_prefix(arg, "FROM:")) == NULL) {
		reply_error(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
		return;
	}
	if (s->cfg->extensions & EXT_SMTPUTF8)
		flags |= PATH_ALLOW_UTF8;
	if (proto_parse_path((char *)rest, flags, &path, &why) == -1) {
		reply_error(s, 501, "5.1.7", "Bad sender address syntax: %s", why);
		return;
	}
	if ((s->cfg->extensions & EXT_DSN) && s->esmtp &&
	    proto_dsn_params(&path, false, &why) == -1) {
		reply_error(s, 501, "5.5.4", "Syntax: %s", why);
		return;
	}
	s->smtputf8 = s->binary = false;
	if (!mail_params_ok(s, &path)) {
		s->smtputf8 = s->binary = false;
		return;
	}
	if (path.utf8 && !s->smtputf8) {
		reply(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
		return;
	}
	if (!path_ask(s, &path))
		return;
	ask(s, SEV_MAIL, &(struct session_event_args){ .path = &path,
	    .serial = s->serial });
}

static void
cmd_rcpt(struct session *s, char *arg)
{
	struct smtp_path	 path;
	const char		*rest, *why;
	int			 flags = PATH_POSTMASTER;

	if (arg == NULL || (rest = proto_skip_prefix(arg, "TO:")) == NULL) {
		reply_error(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
		return;
	}
	if (s->smtputf8)
		flags |= PATH_ALLOW_UTF8;
	if (proto_parse_path((char *)rest, flags, &path, &why) == -1) {
		reply_error(s, 501, "5.1.3", "Bad recipient address syntax: %s", why);
		return;
	}
	for (size_t i = 0; i < path.nparams; i++) {
		const char *key = path.params[i].key;

		if (!s->esmtp || !(s->cfg->extensions & EXT_DSN) ||
		    (strcasecmp(key, "NOTIFY") != 0 && strcasecmp(key, "ORCPT") != 0)) {
			reply_error(s, 555, "5.5.4", "Unsupported parameter %.64s", key);
			return;
		}
	}
	if (path.nparams > 0 && proto_dsn_params(&path, true, &why) == -1) {
		reply_error(s, 501, "5.5.4", "Syntax: %s", why);
		return;
	}
	if (s->chunking) {	/* the message's recipients were fixed at its first chunk */
		reply_error(s, 503, "5.5.1", "RCPT not allowed after BDAT");
		return;
	}
	if (s->rcpt_count >= s->cfg->max_recipients) {
		summary_rcpt(&s->sum, path.address, 452, "4.5.3");
		reply(s, 452, "4.5.3", "Too many recipients");
		return;
	}
	s->rcpt_tried = true;
	if (!path_ask(s, &path))
		return;
	ask(s, SEV_RCPT, &(struct session_event_args){ .path = &path,
	    .serial = s->serial });
}

static void
cmd_data(struct session *s, char *arg)
{
	s->data_reply = true;
	if (!blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: DATA");
		return;
	}
	if (s->state == S_MAIL) {
		/* RFC 2920 3.1: a pipelined DATA after refused recipients */
		if (s->rcpt_tried && !s->cfg->lmtp)
			reply(s, 554, "5.5.1", "No valid recipients");
		else if (s->rcpt_tried)		/* RFC 2033 4.2 */
			reply_error(s, 503, "5.5.1", "No valid recipients");
		else
			reply_error(s, 503, "5.5.1", "Need RCPT before DATA");
		return;
	}
	if (s->chunking) {		/* RFC 3030 2 */
		reply_error(s, 503, "5.5.1", "DATA not allowed after BDAT");
		return;
	}
	if (s->binary) {		/* RFC 3030 3 */
		reply_error(s, 503, "5.5.1", "BODY=BINARYMIME requires BDAT");
		return;
	}
	trace_reset(s);
	ask(s, SEV_DATA, &(struct session_event_args){ 0 });
}

static void
cmd_rset(struct session *s, char *arg)
{
	if (!blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: RSET");
		return;
	}
	ask(s, SEV_RSET, &(struct session_event_args){ 0 });
}

static void
cmd_noop(struct session *s, char *arg)
{
	(void)arg;	/* NOOP [SP String] */
	reply(s, 250, "2.0.0", "Ok");
}

static void
cmd_quit(struct session *s, char *arg)
{
	if (!blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: QUIT");
		return;
	}
	if (s->state == S_REFUSED) {
		reply(s, 221, "2.0.0", "Bye");
		session_close(s);
		return;
	}
	ask(s, SEV_QUIT, &(struct session_event_args){ 0 });
}

static void
cmd_vrfy(struct session *s, char *arg)
{
	if (blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: VRFY address");
		return;
	}
	ask(s, SEV_VRFY, &(struct session_event_args){ .arg = arg });
}

static void
cmd_expn(struct session *s, char *arg)
{
	if (blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: EXPN list");
		return;
	}
	ask(s, SEV_EXPN, &(struct session_event_args){ .arg = arg });
}

static void
cmd_help(struct session *s, char *arg)
{
	(void)arg;
	reply(s, 214, "2.0.0",
	    "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY EXPN HELP");
}

/* --- STARTTLS and AUTH ------------------------------------------------- */

static void
cmd_starttls(struct session *s, char *arg)
{
	if (!blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: STARTTLS");
		return;
	}
	if (s->tls != NULL) {
		reply_error(s, 503, "5.5.1", "TLS already active");
		return;
	}
	if (s->io->starttls == NULL) {
		reply(s, 454, "4.7.0", "TLS not available due to temporary reason");
		return;
	}
	reply(s, 220, "2.0.0", "Ready to start TLS");
	/* from here on, plaintext input is dropped (CVE-2011-0411) */
	enter_state(s, S_TLS);
	s->io->starttls(s->io_ctx);
}

void
session_tls_started(struct session *s, const struct session_tls *tls)
{
	if (s->state != S_TLS)
		return;
	if (s->tls == NULL && (s->tls = malloc(sizeof(*s->tls))) == NULL) {
		reply(s, 421, "4.3.0", "%s Error: out of memory", s->cfg->hostname);
		return;
	}
	*s->tls = *tls;
	summary_client_changed(&s->sum);	/* and HELO and user are forgotten */
	s->peer.tls = s->tls;
	log_info(s->id, "TLS started: %s %s", tls->version, tls->cipher);
	/* RFC 3207 4.2: forget everything learnt from the client before TLS */
	reset_transaction(s);
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	free(s->user);
	s->user = NULL;
	sasl_forget(s);
	enter_state(s, S_GREETED);
	arm_timer(s);	/* commandTimeout for the first command over TLS */
	if (s->io->wake != NULL)
		s->io->wake(s->io_ctx);
}

/*
 * XCLIENT (Postfix): a trusted proxy names the client it relays.  The
 * whole argument is checked first, then applied; the session starts over
 * as if the client had just connected (envelope, HELO and AUTH forgotten,
 * HELO= and LOGIN= taken as told) and is greeted with 220 again.  The
 * policy's 'connection' listeners do not run again: the outcome hook of
 * SEV_CONNECT tells it the peer changed.
 */
static void
cmd_xclient(struct session *s, char *arg)
{
	struct xclient	 x;
	const char	*why;
	char		*name = NULL, *helo = NULL, *login = NULL;

	if (!s->xclient_ok) {
		reply_error(s, 550, "5.7.0", "Error: insufficient authorization");
		return;
	}
	if (xclient_parse(arg, &x, &why) == -1) {
		reply_error(s, 501, "5.5.4", "%s", why);
		return;
	}
	if (((x.given & ~x.unavailable & XC_NAME) && (name = strdup(x.name)) == NULL) ||
	    ((x.given & ~x.unavailable & XC_HELO) && (helo = strdup(x.helo)) == NULL) ||
	    ((x.given & ~x.unavailable & XC_LOGIN) && (login = strdup(x.login)) == NULL)) {
		free(name);
		free(helo);
		reply(s, 451, "4.3.0", "Out of memory, try again later");
		return;
	}
	if (x.given & XC_ADDR)
		snprintf(s->peer.remote_addr, sizeof(s->peer.remote_addr), "%s",
		    x.unavailable & XC_ADDR ? "unknown" : x.addr);
	if (x.given & XC_PORT)
		s->peer.remote_port = x.unavailable & XC_PORT ? 0 : x.port;
	if (x.given & XC_DESTADDR)
		snprintf(s->peer.local_addr, sizeof(s->peer.local_addr), "%s",
		    x.unavailable & XC_DESTADDR ? "unknown" : x.destaddr);
	if (x.given & XC_DESTPORT)
		s->peer.local_port = x.unavailable & XC_DESTPORT ? 0 : x.destport;
	if (x.given & XC_NAME) {
		free(s->remote_name);
		s->remote_name = name;
	}
	reset_transaction(s);
	asked_forget(s);
	sasl_forget(s);
	s->auth_failures = 0;
	if (x.given & XC_HELO) {
		free(s->helo);
		s->helo = helo;
		s->helo_ext = (x.given & XC_PROTO) && x.esmtp;
	}
	if (x.given & XC_LOGIN) {
		free(s->user);
		s->user = login;
	}
	s->xclients++;
	log_info(s->id, "XCLIENT: client %s port %u%s%s%s%s%s%s", s->peer.remote_addr,
	    s->peer.remote_port, s->remote_name ? " name " : "",
	    s->remote_name ? s->remote_name : "", s->helo ? " helo " : "",
	    s->helo ? s->helo : "", s->user ? " login " : "", s->user ? s->user : "");
	s->esmtp = false;
	greet(s, 220, NULL, NULL);	/* the session starts over: S_GREETED */
	if (s->hooks->outcome != NULL)
		s->hooks->outcome(s->hook_ctx, s, SEV_CONNECT, 220);
}

/* Drops the credentials of an AUTH exchange, wiping them first. */
static void
sasl_forget(struct session *s)
{
	s->sasl = SASL_NONE;
	if (s->sasl_user != NULL) {
		explicit_bzero(s->sasl_user, strlen(s->sasl_user));
		free(s->sasl_user);
		s->sasl_user = NULL;
	}
}

/* Decodes one base64 SASL field ("=" is the empty one); replies 501 on error. */
static long
sasl_decode(struct session *s, const char *in, char *out, size_t outsize)
{
	long n;

	if (strcmp(in, "=") == 0)
		return 0;
	n = sasl_base64_decode(in, strlen(in), out, outsize - 1);
	if (n < 0 || memchr(out, '\0', (size_t)n) != NULL ||
	    (size_t)n >= SASL_FIELD_MAX) {
		sasl_forget(s);
		reply_error(s, 501, "5.5.2", "Invalid base64 data");
		return -1;
	}
	out[n] = '\0';
	return n;
}

/* Asks the policy about complete credentials, then wipes them. */
static void
auth_ask(struct session *s, const char *method, const char *username,
    const char *password, const char *authzid)
{
	struct session_auth auth = { method, username, password, authzid };

	/* the username outlives the ask: the verdict may come later */
	if (username != s->sasl_user) {
		free(s->sasl_user);
		if ((s->sasl_user = strdup(username)) == NULL) {
			reply(s, 454, "4.7.0", "Temporary authentication failure");
			return;
		}
		auth.username = s->sasl_user;
	}
	ask(s, SEV_AUTH, &(struct session_event_args){ .auth = &auth });
}

static void
sasl_plain(struct session *s, const char *response)
{
	char		 msg[REPLY_LINE_MAX];
	const char	*authzid, *authcid, *passwd;
	long		 n;

	n = strcmp(response, "=") == 0 ? 0 :
	    sasl_base64_decode(response, strlen(response), msg, sizeof(msg) - 1);
	if (n < 0 || sasl_plain_split(msg, (size_t)n, &authzid, &authcid,
	    &passwd) == -1) {
		explicit_bzero(msg, sizeof(msg));
		sasl_forget(s);
		reply_error(s, 501, "5.5.2", "Invalid PLAIN response");
		return;
	}
	auth_ask(s, "PLAIN", authcid, passwd, authzid);
	explicit_bzero(msg, sizeof(msg));
}

static void
cmd_auth(struct session *s, char *arg)
{
	char	*initial = NULL;
	char	 username[REPLY_LINE_MAX];

	if (s->user != NULL) {
		reply_error(s, 503, "5.5.1", "Already authenticated");
		return;
	}
	if (!s->esmtp) {
		reply_error(s, 503, "5.5.1", "Send EHLO first");
		return;
	}
	if (!auth_offered(s)) {
		reply(s, 538, "5.7.11",
		    "Encryption required for requested authentication mechanism");
		return;
	}
	if (blank(arg)) {
		reply_error(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
		return;
	}
	if ((initial = strchr(arg, ' ')) != NULL)
		*initial++ = '\0';
	if (strcasecmp(arg, "PLAIN") == 0 && (s->cfg->auth_methods & AUTH_PLAIN)) {
		if (initial != NULL) {
			sasl_plain(s, initial);
			return;
		}
		s->sasl = SASL_PLAIN;
		reply(s, 334, NULL, "%s", "");
	} else if (strcasecmp(arg, "LOGIN") == 0 &&
	    (s->cfg->auth_methods & AUTH_LOGIN)) {
		if (initial == NULL) {
			s->sasl = SASL_LOGIN_USER;
			reply(s, 334, NULL, "VXNlcm5hbWU6");	/* "Username:" */
			return;
		}
		if (sasl_decode(s, initial, username, sizeof(username)) < 0)
			return;
		s->sasl_user = strdup(username);
		explicit_bzero(username, sizeof(username));
		if (s->sasl_user == NULL) {
			reply(s, 454, "4.7.0", "Temporary authentication failure");
			return;
		}
		s->sasl = SASL_LOGIN_PASS;
		reply(s, 334, NULL, "UGFzc3dvcmQ6");	/* "Password:" */
	} else
		reply_error(s, 504, "5.5.4", "Unrecognized authentication type");
}

/* A line of an AUTH exchange: "*" cancels (RFC 4954 4). */
static void
sasl_response(struct session *s, char *line, size_t len)
{
	enum sasl_step	 step = s->sasl;
	char		 field[REPLY_LINE_MAX];

	(void)len;
	s->sasl = SASL_NONE;
	if (strcmp(line, "*") == 0) {
		sasl_forget(s);
		reply_error(s, 501, "5.0.0", "Authentication cancelled");
		return;
	}
	switch (step) {
	case SASL_PLAIN:
		sasl_plain(s, line);
		break;
	case SASL_LOGIN_USER:
		if (sasl_decode(s, line, field, sizeof(field)) < 0)
			break;
		if ((s->sasl_user = strdup(field)) == NULL) {
			reply(s, 454, "4.7.0", "Temporary authentication failure");
			break;
		}
		s->sasl = SASL_LOGIN_PASS;
		reply(s, 334, NULL, "UGFzc3dvcmQ6");
		break;
	case SASL_LOGIN_PASS:
		if (sasl_decode(s, line, field, sizeof(field)) < 0)
			break;
		auth_ask(s, "LOGIN", s->sasl_user, field, "");
		break;
	case SASL_NONE:
		break;
	}
	explicit_bzero(field, sizeof(field));
	explicit_bzero(line, strlen(line));
}

static void
auth_decided(struct session *s, bool accept, int code, const char *enhanced,
    const char *text)
{
	metrics_count(accept ? M_AUTH_OK : M_AUTH_FAILED);
	if (accept) {
		s->user = s->sasl_user;
		summary_client_changed(&s->sum);
		s->sasl_user = NULL;
		log_info(s->id, "authenticated as %s", s->user);
	} else {
		s->auth_failures++;
		log_info(s->id, "authentication failed (%u)", s->auth_failures);
	}
	sasl_forget(s);
	reply_text(s, code, enhanced, text);
	if (!accept && s->auth_failures >= s->cfg->max_auth_failures)
		reply(s, 421, "4.7.0", "%s Error: too many failed authentications",
		    s->cfg->hostname);
}

/* The command whose verb starts line (up to the first space), or NULL. */
static const struct command *
command_find(const char *line)
{
	const struct command	*c;
	size_t			 n = strcspn(line, " ");

	/*
	 * (x & ~0x20) is the upper case of a letter: a cheap first test before
	 * the call (RCPT came after four strncasecmp calls a line)
	 */
	for (c = commands; c->verb != NULL; c++)
		if (c->verb[0] == (line[0] & ~0x20) && strlen(c->verb) == n &&
		    strncasecmp(c->verb, line, n) == 0)
			return c;
	return NULL;
}

/*
 * Is the verb AUTH, however it is spelt: after spaces, tabs or other
 * separators, run into its argument ("AUTHPLAIN x"), in any case?
 */
static bool
auth_like(const char *line)
{
	while (*line != '\0' && !isalnum((unsigned char)*line))
		line++;
	return (*line & ~0x20) == 'A' && strncasecmp(line, "AUTH", 4) == 0;
}

/*
 * Logs a command line, never credentials.  An AUTH line shows as "AUTH ...".
 * The lines after one may be SASL responses the client pipelined before it
 * saw the reply (even to a refused AUTH), so they are not shown either,
 * until a line is a known command.
 */
static void
log_command(struct session *s, const char *line, const struct command *c)
{
	if (auth_like(line)) {
		s->after_auth = true;
		log_debug(s->id, ">>> AUTH ...");
	} else if (s->after_auth && c == NULL)
		log_debug(s->id, ">>> (line after AUTH, not logged)");
	else {
		s->after_auth = false;
		log_debug(s->id, ">>> %s", line);
	}
}

/* Counts a command line (metrics.h) and makes its verb what the replies answer. */
static void
command_count(struct session *s, const struct command *c)
{
	if (c != NULL && command_verbs[c - commands] == 0)
		command_verbs[c - commands] = (unsigned char)(metrics_verb(c->verb) + 1);
	s->answering = c != NULL ? command_verbs[c - commands] - 1u : MV_OTHER;
	metrics_command((enum metrics_verb)s->answering);
}

/* Splits "VERB[ SP arg]" and checks the verb's state; c is its command. */
static void
dispatch(struct session *s, char *line, const struct command *c)
{
	char *arg;

	if ((arg = strchr(line, ' ')) != NULL) {
		*arg++ = '\0';
		while (*arg == ' ')
			arg++;
	}
	command_count(s, c);
	if (c == NULL || (c->handler == cmd_lhlo && !s->cfg->lmtp)) {
		reply_error(s, 500, "5.5.2", "Command unrecognized");
		return;
	}
	if (s->cfg->lmtp && (c->handler == cmd_helo || c->handler == cmd_ehlo)) {
		reply_error(s, 500, "5.5.1", "This is LMTP: send LHLO");
		return;
	}
	if (c->handler == NULL ||
	    (c->handler == cmd_starttls && !s->cfg->starttls) ||
	    (c->handler == cmd_auth && s->cfg->auth_methods == 0)) {
		reply_error(s, 502, "5.5.1", "Command not implemented");
		return;
	}
	if ((c->states & ST(s->state)) == 0) {
		if (s->state == S_REFUSED)
			reply_error(s, 503, "5.5.1", "Bad sequence of commands: send QUIT");
		else if (s->state == S_GREETED && c->handler == cmd_auth)
			reply_error(s, 503, "5.5.1", "Send EHLO first");
		else if (s->state == S_GREETED && c->out_of_sequence == NULL)
			reply_error(s, 503, "5.5.1", "Send %s first",
			    s->cfg->lmtp ? "LHLO" : "HELO/EHLO");
		else if (c->handler == cmd_mail)
			reply_error(s, 503, "5.5.1", "Nested MAIL command");
		else
			reply_error(s, 503, "5.5.1", "Bad sequence of commands: %s",
			    c->out_of_sequence);
		return;
	}
	c->handler(s, arg);
}

static void	sasl_response(struct session *, char *, size_t);

/* A complete command line (CRLF seen) or a rejected one. */
static void
line_done(struct session *s)
{
	const struct command	*c;
	size_t			 len = s->line_len;

	s->line_len = 0;
	s->line_open = false;	/* the next octet starts the next line's deadline */
	s->doing = "line";
	s->data_reply = false;
	if (s->line_too_long || s->line_bad) {
		sasl_forget(s);		/* a broken SASL response ends the exchange */
		command_count(s, NULL);
	}
	if (s->line_too_long) {
		s->line_too_long = s->line_bad = false;
		reply_error(s, 500, "5.5.2", "Line too long");
		return;
	}
	if (s->line_bad) {
		s->line_bad = false;
		reply_error(s, 500, "5.5.2", "Bare CR, LF or NUL in command line");
		return;
	}
	s->line[len] = '\0';
	if (s->sasl != SASL_NONE) {
		s->doing = "AUTH";
		log_debug(s->id, ">>> (SASL response)");	/* credentials: never logged */
		sasl_response(s, s->line, len);
		return;
	}
	/* trailing spaces are common and harmless */
	while (len > 0 && (s->line[len - 1] == ' ' || s->line[len - 1] == '\t'))
		s->line[--len] = '\0';
	c = command_find(s->line);
	s->doing = c != NULL ? c->verb : "unknown";
	log_command(s, s->line, c);
	dispatch(s, s->line, c);
}

/*
 * Assembles command lines: only CRLF ends one; a bare CR, bare LF or NUL
 * poisons the line (500) and an over-long one is discarded up to its CRLF.
 * Works on runs between LFs (memchr), not octet by octet.
 */
static size_t
command_feed(struct session *s, const char *buf, size_t len)
{
	size_t	cap = s->cfg->max_line - 2;	/* room for CRLF within max_line */
	size_t	i = 0;

	while (i < len && s->pending == NO_EVENT && s->state != S_CLOSED &&
	    s->state != S_DATA && s->state != S_BDAT && s->state != S_TLS) {
		const char	*lf;
		size_t		 end, n;
		bool		 complete = false;

		if (s->line_cr) {		/* the previous run ended in CR */
			s->line_cr = false;
			if (buf[i] == '\n') {
				i++;
				line_done(s);
				continue;
			}
			s->line_bad = true;	/* bare CR */
		}
		lf = memchr(buf + i, '\n', len - i);
		end = lf != NULL ? (size_t)(lf - buf) : len;
		n = end - i;
		if (n > 0 && buf[end - 1] == '\r') {
			n--;			/* CRLF, or a CR that may be one */
			if (lf != NULL)
				complete = true;
			else
				s->line_cr = true;
		} else if (lf != NULL) {
			n++;			/* a bare LF is text, and poison */
			s->line_bad = true;
		}
		if (memchr(buf + i, '\r', n) != NULL || memchr(buf + i, '\0', n) != NULL)
			s->line_bad = true;
		if (n > cap - s->line_len) {
			s->line_too_long = true;
			n = cap - s->line_len;
		}
		memcpy(s->line + s->line_len, buf + i, n);
		s->line_len += n;
		i = lf != NULL ? end + 1 : len;
		if (complete)
			line_done(s);
	}
	return i;
}

/* --- DATA -------------------------------------------------------------- */

static void
data_begin(struct session *s)
{
	enter_state(s, S_DATA);
	s->ds = DS_BOL;
	s->after_bare_lf = false;	/* the DATA line ended in CRLF */
	s->text_line_len = 0;
	s->size = 0;
	s->failed = false;
	s->trace_sent = false;
	trace_hops_init(&s->hops);
}

/* The message will not be delivered: tell the policy once, keep reading. */
static void
data_fail(struct session *s, enum session_abort why)
{
	if (s->failed)
		return;
	log_info(s->id, "message refused while receiving: %s",
	    why == ABORT_TOO_BIG ? "too big" : why == ABORT_BARE_NEWLINE ?
	    "bare CR or LF" : why == ABORT_NUL ? "NUL octet" :
	    why == ABORT_TOO_MANY_HOPS ? "too many hops" : "line too long");
	message_abort(s, why);
}

static void
added_clear(struct session *s)
{
	free(s->added);
	s->added = NULL;
	s->added_len = 0;
}

/* A new message is asked for: session_add_header() works again, from nothing. */
static void
trace_reset(struct session *s)
{
	added_clear(s);
	s->trace_sent = false;
}

/*
 * Before the message's first octet: the Received field (cfg->received_header)
 * and the policy's added fields, in that order, and the first span p (NULL
 * for none) with them in one call when all fit TRACE_JOIN: one call less into
 * the policy per message.  Not counted in the size: that is what the client
 * sent (SIZE, maxSize).
 */
#define TRACE_JOIN	8192

static void
trace_emit(struct session *s, const char *p, size_t n)
{
	char	buf[TRACE_JOIN];
	size_t	len = 0;

	s->trace_sent = true;
	if (s->hooks->data == NULL) {
		added_clear(s);
		return;
	}
	if (s->cfg->received_header) {
		struct trace_received r = {
			.helo = s->helo, .reverse = s->reverse,
			.addr = s->peer.remote_addr, .by = s->cfg->hostname,
			.protocol = trace_protocol(s->cfg->lmtp, s->esmtp,
			    s->tls != NULL, s->user != NULL),
			.id = s->id,
			.rcpt = s->rcpt_count == 1 ? s->rcpts[0]->path.address : NULL,
			.when = time(NULL),
		};

		len = trace_received(buf, TRACE_RECEIVED_MAX, &r);
	}
	if (len + s->added_len + n <= sizeof(buf)) {
		if (s->added_len > 0)
			memcpy(buf + len, s->added, s->added_len);
		len += s->added_len;
		if (n > 0)
			memcpy(buf + len, p, n);
		len += n;
		if (len > 0)
			s->hooks->data(s->hook_ctx, s, buf, len);
	} else {
		if (len > 0)
			s->hooks->data(s->hook_ctx, s, buf, len);
		if (s->added_len > 0)
			s->hooks->data(s->hook_ctx, s, s->added, s->added_len);
		if (n > 0)
			s->hooks->data(s->hook_ctx, s, p, n);
	}
	added_clear(s);
}

/*
 * Hands a span of unstuffed data to the policy, counting its size and, in
 * the header section, the Received fields (cfg->max_hops).
 */
static void
data_emit(struct session *s, const char *p, size_t n)
{
	if (n == 0 || s->failed)
		return;
	if (s->cfg->max_hops > 0 && !trace_hops_done(&s->hops)) {
		trace_hops_feed(&s->hops, p, n);
		if (s->hops.count > s->cfg->max_hops) {
			data_fail(s, ABORT_TOO_MANY_HOPS);
			return;
		}
	}
	s->size += n;
	if (s->cfg->max_size > 0 && s->size > s->cfg->max_size) {
		data_fail(s, ABORT_TOO_BIG);
		return;
	}
	if (!s->trace_sent)
		trace_emit(s, p, n);	/* the trace fields, and this span */
	else if (s->hooks->data != NULL)
		s->hooks->data(s->hook_ctx, s, p, n);
}

static void	data_failed_reply(struct session *);

static void
data_end(struct session *s)
{
	/* LMTP: as many replies as recipients (RFC 2033 4.2) */
	size_t n = s->cfg->lmtp && s->rcpt_count > 0 ? s->rcpt_count : 1;

	log_debug(s->id, "end of data, %" PRIu64 " octets", s->size);
	s->answering = MR_DATA_END;
	summary_size(&s->sum, s->size);
	s->data_reply = true;
	if (!s->failed && !s->trace_sent)
		trace_emit(s, NULL, 0);	/* an empty message */
	if (!s->failed) {
		ask(s, SEV_DATA_END, &(struct session_event_args){ .size = s->size });
		return;
	}
	s->doing = event_names[SEV_DATA_END];
	while (n-- > 0 && s->state != S_CLOSED)
		data_failed_reply(s);
	reset_transaction(s);	/* after the replies: the transaction's line has them */
}

/* The reply to a message that failed while it was received. */
static void
data_failed_reply(struct session *s)
{
	switch (s->fail_reason) {
	case ABORT_TOO_BIG:
		reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		break;
	case ABORT_LINE_TOO_LONG:
		reply(s, 550, "5.6.0", "Message has a line longer than %zu octets",
		    s->cfg->max_text_line);
		break;
	case ABORT_NUL:
		reply(s, 550, "5.6.0", "Message contains a NUL octet (RFC 6152)");
		break;
	case ABORT_TOO_MANY_HOPS:	/* RFC 5321 6.3, RFC 3463 */
		reply(s, 554, "5.4.6", "Too many hops");
		break;
	default:
		reply(s, 550, "5.6.0",
		    "Message contains a bare CR or LF (RFC 5321 2.3.8)");
		break;
	}
}

static void
text_line_grow(struct session *s, size_t n)
{
	s->text_line_len += n;
	if (s->cfg->max_text_line > 0 && s->text_line_len + 2 > s->cfg->max_text_line)
		data_fail(s, ABORT_LINE_TOO_LONG);
}

/*
 * A bare LF where cfg->accept_bare_lf takes it as a line end: the line so far
 * goes out with CRLF, and the next one starts (and is unstuffed) as usual.
 * It never ends the data: that takes a line "." after a real CRLF.
 */
static void
data_bare_lf(struct session *s)
{
	data_emit(s, "\r\n", 2);
	s->after_bare_lf = true;
	s->ds = DS_BOL;
}

/*
 * Scans message data: removes the stuffed dot at the start of a line (it
 * does not count in the line length), ends only at CRLF "." CRLF, and fails
 * the message on a NUL, on a bare CR and on a bare LF unless accept_bare_lf
 * (a bare CR or LF never ends the data: SMTP smuggling).  Returns the
 * octets consumed.
 */
static size_t
data_feed(struct session *s, const char *buf, size_t len)
{
	const char	*p = buf, *end = buf + len, *span = buf;

	while (p < end && !s->paused) {
		switch (s->ds) {
		case DS_BOL:
			s->text_line_len = 0;
			if (*p == '.') {
				data_emit(s, span, (size_t)(p - span));
				span = ++p;	/* the dot is never data */
				s->ds = DS_DOT;
				break;
			}
			s->ds = DS_TEXT;
			/* FALLTHROUGH */
		case DS_TEXT: {
			const char *lf = memchr(p, '\n', (size_t)(end - p));
			const char *stop = lf != NULL ? lf : end;
			const char *cr = memchr(p, '\r', (size_t)(stop - p));
			const char *q = cr != NULL ? cr : stop;

			if (memchr(p, '\0', (size_t)(q - p)) != NULL)
				data_fail(s, ABORT_NUL);
			text_line_grow(s, (size_t)(q - p));
			p = q;
			if (p == end)
				break;
			if (*p == '\n' && s->cfg->accept_bare_lf) {
				data_emit(s, span, (size_t)(p - span));
				span = ++p;
				data_bare_lf(s);
				break;
			}
			if (*p == '\n') {
				/* not a line end: what follows is no line start */
				data_fail(s, ABORT_BARE_NEWLINE);
				p++;
				break;
			}
			p++;
			s->ds = DS_CR;
			break;
		}
		case DS_CR:
			if (*p == '\n') {
				p++;
				s->after_bare_lf = false;
				s->ds = DS_BOL;
			} else {
				data_fail(s, ABORT_BARE_NEWLINE);
				s->ds = DS_TEXT;
			}
			break;
		case DS_DOT:
			if (*p == '\r') {
				data_emit(s, span, (size_t)(p - span));
				span = ++p;	/* held back: ".\r\n" is the end */
				s->ds = DS_DOT_CR;
			} else if (*p == '\n' && s->cfg->accept_bare_lf) {
				span = ++p;	/* "." LF: an empty line */
				data_bare_lf(s);
			} else if (*p == '\n') {
				data_fail(s, ABORT_BARE_NEWLINE);
				p++;
				s->ds = DS_TEXT;
			} else {
				s->ds = DS_TEXT;
			}
			break;
		case DS_DOT_CR:
			if (*p == '\n' && s->after_bare_lf) {
				/* "." CRLF after a bare LF: an empty line, not the end */
				span = ++p;
				data_emit(s, "\r\n", 2);
				s->after_bare_lf = false;
				s->ds = DS_BOL;
				break;
			}
			if (*p == '\n') {
				p++;
				data_end(s);
				return (size_t)(p - buf);
			}
			/* "." CR without LF: a bare CR, the held CR is moot */
			data_fail(s, ABORT_BARE_NEWLINE);
			span = p;
			s->ds = DS_TEXT;
			break;
		}
	}
	data_emit(s, span, (size_t)(p - span));
	return (size_t)(p - buf);
}

/* --- BDAT (RFC 3030) ---------------------------------------------------- */

/*
 * "size [LAST]": size has 1 to 20 digits and fits in 64 bits.  Returns -1
 * for anything else.
 */
static int
bdat_parse(const char *arg, uint64_t *size, bool *last)
{
	const char	*p = arg;
	uint64_t	 v = 0;
	size_t		 n = 0;

	if (arg == NULL)
		return -1;
	for (; *p >= '0' && *p <= '9'; p++, n++) {
		unsigned d = (unsigned)(*p - '0');

		if (n == 20 || v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	if (n == 0 || (*p != '\0' && *p != ' '))
		return -1;
	while (*p == ' ')
		p++;
	*last = false;
	if (strcasecmp(p, "LAST") == 0)
		*last = true;
	else if (*p != '\0')
		return -1;
	*size = v;
	return 0;
}

/*
 * A refused BDAT: its chunk is still read, and dropped, so the next command
 * is found (RFC 3030 2: refused chunks already pipelined are discarded).
 */
static void
bdat_drop(struct session *s, uint64_t size)
{
	if (s->state == S_CLOSED || size == 0)
		return;
	s->bdat_drop = true;
	s->bdat_back = s->state;
	s->chunk_left = size;
	enter_state(s, S_BDAT);
}

/* A chunk of the message (the first one's DATA ask said yes). */
static void
bdat_begin(struct session *s, uint64_t size)
{
	if (!s->chunking) {		/* the message's first chunk */
		s->chunking = true;
		s->ds = DS_TEXT;
		s->text_line_len = 0;
		s->size = 0;
		s->failed = false;
		s->trace_sent = false;
		trace_hops_init(&s->hops);
	}
	s->bdat_drop = false;
	s->chunk_left = size;
	/* the running total over maxSize: no octet of it reaches the policy */
	if (s->cfg->max_size > 0 && !s->failed &&
	    (s->size > s->cfg->max_size || size > s->cfg->max_size - s->size))
		data_fail(s, ABORT_TOO_BIG);
	enter_state(s, S_BDAT);
	if (size == 0)
		bdat_chunk_done(s);
}

/*
 * BDAT size [LAST].  The chunk's octets follow the line and are always read,
 * byte-exact, whatever the reply.  A size that cannot be read leaves no way
 * to find the next command: 501, then 421.
 */
static void
cmd_bdat(struct session *s, char *arg)
{
	uint64_t	size;
	bool		last;

	if (bdat_parse(arg, &size, &last) == -1) {
		reply(s, 501, "5.5.4", "Syntax: BDAT size [LAST]");
		reply(s, 421, "4.5.4", "%s Error: cannot find the end of the chunk",
		    s->cfg->hostname);
		return;
	}
	if (!(s->cfg->extensions & EXT_CHUNKING))
		reply_error(s, 502, "5.5.1", "Command not implemented");
	else if (s->state == S_REFUSED)
		reply_error(s, 503, "5.5.1", "Bad sequence of commands: send QUIT");
	else if (s->state == S_GREETED)
		reply_error(s, 503, "5.5.1", "Send %s first",
		    s->cfg->lmtp ? "LHLO" : "HELO/EHLO");
	else if (s->state == S_MAIL && s->rcpt_tried && !s->cfg->lmtp)
		reply(s, 554, "5.5.1", "No valid recipients");
	else if (s->state != S_RCPT)
		reply_error(s, 503, "5.5.1", "Need MAIL and RCPT before BDAT");
	else {
		s->chunk_size = size;
		s->bdat_last = last;
		if (s->chunking) {
			bdat_begin(s, size);
			return;
		}
		s->bdat_asked = true;	/* the message starts: the policy's 'DATA' */
		trace_reset(s);
		ask(s, SEV_DATA, &(struct session_event_args){ 0 });
		return;
	}
	bdat_drop(s, size);
}

/*
 * A chunk of a 7BIT or 8BITMIME message gets the rules DATA's text gets
 * (RFC 3030 changes the framing, not the content): no NUL, no bare CR or LF
 * (under accept_bare_lf a bare LF ends a line and is passed on as CRLF), lines
 * within max_text_line; a CRLF may straddle two chunks.  BINARYMIME octets
 * pass as they are.  Nothing marks an end: the chunk's size does.
 */
static void
bdat_scan(struct session *s, const char *buf, size_t len)
{
	const char *p = buf, *end = buf + len, *span = buf;

	if (s->binary) {
		data_emit(s, buf, len);
		return;
	}
	while (p < end) {
		const char *lf, *stop, *cr, *q;

		if (s->ds == DS_CR) {
			s->ds = DS_TEXT;
			if (*p == '\n') {
				p++;
				s->text_line_len = 0;
				continue;
			}
			data_fail(s, ABORT_BARE_NEWLINE);
		}
		lf = memchr(p, '\n', (size_t)(end - p));
		stop = lf != NULL ? lf : end;
		cr = memchr(p, '\r', (size_t)(stop - p));
		q = cr != NULL ? cr : stop;
		if (memchr(p, '\0', (size_t)(q - p)) != NULL)
			data_fail(s, ABORT_NUL);
		text_line_grow(s, (size_t)(q - p));
		p = q;
		if (p == end)
			break;
		if (*p == '\r') {
			p++;
			s->ds = DS_CR;
		} else if (s->cfg->accept_bare_lf) {
			data_emit(s, span, (size_t)(p - span));
			data_emit(s, "\r\n", 2);
			span = ++p;
			s->text_line_len = 0;
		} else {
			data_fail(s, ABORT_BARE_NEWLINE);
			p++;
		}
	}
	data_emit(s, span, (size_t)(p - span));
}

/* Reads (or drops) what is left of the chunk; returns the octets taken. */
static size_t
bdat_feed(struct session *s, const char *buf, size_t len)
{
	size_t n = (uint64_t)len < s->chunk_left ? len : (size_t)s->chunk_left;

	if (!s->bdat_drop)
		bdat_scan(s, buf, n);
	s->chunk_left -= n;
	if (s->chunk_left == 0 && !s->paused)
		bdat_chunk_done(s);
	return n;
}

/* All of a chunk is in: 250 for one, the message's verdict for the LAST. */
static void
bdat_chunk_done(struct session *s)
{
	if (s->bdat_drop) {
		s->bdat_drop = false;
		enter_state(s, s->bdat_back);
		return;
	}
	if (s->bdat_last && s->ds == DS_CR && !s->binary)
		data_fail(s, ABORT_BARE_NEWLINE);	/* a CR ends the message */
	if (s->bdat_last || s->failed) {
		/* a failed chunk ends the transaction (RFC 3030 2) */
		data_end(s);
		return;
	}
	enter_state(s, S_RCPT);
	reply(s, 250, "2.0.0", "%" PRIu64 " octets received", s->chunk_size);
}

/* --- input -------------------------------------------------------------- */

size_t
session_feed(struct session *s, const char *buf, size_t len)
{
	size_t	used = 0;

	if (s->state == S_CLOSED || s->state == S_TLS)
		return len;	/* discarded: closing, or plaintext after STARTTLS */
	s->feeding = true;
	while (used < len && s->pending == NO_EVENT && !s->paused &&
	    s->state != S_CLOSED && s->state != S_TLS) {
		if (s->state == S_DATA || s->state == S_BDAT) {
			size_t n;

			data_clock(s, clock_now(s));
			if (s->state == S_DATA)
				n = data_feed(s, buf + used, len - used);
			else if (s->chunk_left == 0)	/* a pause held the chunk's end */
				n = 0, bdat_chunk_done(s);
			else
				n = bdat_feed(s, buf + used, len - used);
			data_progress(s, n);
			used += n;
		} else {
			s->data_timed = false;	/* a message's deadline ended with it */
			used += command_feed(s, buf + used, len - used);
		}
	}
	s->feeding = false;
	s->sum.bytes_in += used;	/* what the engine read, discarded input not */
	if (s->state == S_CLOSED)
		return len;
	if (s->state == S_TLS) {
		if (used < len)
			log_info(s->id, "discarded %zu octets sent after STARTTLS",
			    len - used);
		arm_timer(s);	/* the handshake's deadline */
		return len;
	}
	arm_timer(s);
	return used;
}

void
session_pause(struct session *s)
{
	if (s->paused || s->state == S_CLOSED)
		return;
	s->paused = true;
	s->paused_at = clock_now(s);
	s->pause_due = s->paused_at + s->cfg->timeout_decision_ms;
	arm_timer(s);
}

void
session_resume(struct session *s)
{
	if (!s->paused)
		return;
	s->paused = false;
	if (s->state == S_CLOSED)
		return;
	if (s->data_timed) {
		/* the client is not to blame for the pause: its deadline moves on */
		uint64_t now = clock_now(s), cap = now + s->cfg->timeout_data_ms;

		s->data_due += now - s->paused_at;
		if (s->data_due >= cap) {
			s->data_due = cap;
			s->data_idle = true;
		}
	}
	if (!s->feeding && s->state == S_BDAT && s->chunk_left == 0)
		bdat_chunk_done(s);	/* the chunk ended during the pause */
	arm_timer(s);
	if (!s->feeding && s->io->wake != NULL && s->state != S_CLOSED)
		s->io->wake(s->io_ctx);
}

/* --- accessors ---------------------------------------------------------- */

void
session_set_end(struct session *s, const char *why)
{
	s->sum.end = why;
}

uint64_t
session_id(const struct session *s)
{
	return s->id;
}

const struct session_peer *
session_peer(const struct session *s)
{
	return &s->peer;
}

const char *
session_state_name(const struct session *s)
{
	return state_names[s->state];
}

bool
session_idle(const struct session *s)
{
	return s->pending == NO_EVENT && (s->state == S_GREETED ||
	    s->state == S_HELO || s->state == S_REFUSED);
}

bool
session_closing(const struct session *s)
{
	return s->state == S_CLOSED;
}

const struct session_tls *
session_tls(const struct session *s)
{
	return s->tls;
}

const char *
session_user(const struct session *s)
{
	return s->user;
}

const char *
session_remote_name(const struct session *s)
{
	return s->remote_name;
}

unsigned
session_xclients(const struct session *s)
{
	return s->xclients;
}

const char *
session_helo(const struct session *s, bool *extended)
{
	if (extended != NULL)
		*extended = s->helo_ext;
	return s->helo;
}

const struct smtp_path *
session_sender(const struct session *s, unsigned *serial)
{
	if (s->sender == NULL)
		return NULL;
	if (serial != NULL)
		*serial = s->sender->serial;
	return &s->sender->path;
}

size_t
session_recipient_count(const struct session *s)
{
	return s->rcpt_count;
}

const struct smtp_path *
session_recipient(const struct session *s, size_t i, unsigned *serial)
{
	if (i >= s->rcpt_count)
		return NULL;
	if (serial != NULL)
		*serial = s->rcpts[i]->serial;
	return &s->rcpts[i]->path;
}

int
session_add_header(struct session *s, const char *name, size_t namelen,
    const char *value, size_t valuelen, const char **why)
{
	int rc;

	if ((s->pending != SEV_DATA && !in_message(s)) || s->trace_sent ||
	    s->state == S_CLOSED) {
		*why = "no message, or its data began";
		return -1;
	}
	if (s->added == NULL && (s->added = malloc(TRACE_ADDED_MAX)) == NULL) {
		*why = "out of memory";
		return -2;
	}
	rc = trace_header_add(s->added, &s->added_len, TRACE_ADDED_MAX, name,
	    namelen, value, valuelen, why);
	return rc;
}

int
session_set_reverse_name(struct session *s, const char *name)
{
	char	*copy = NULL;
	size_t	 len = name != NULL ? strlen(name) : 0;

	if (name != NULL) {
		if (len == 0 || len > 253)
			return -1;
		for (size_t i = 0; i < len; i++)
			if (!isalnum((unsigned char)name[i]) && name[i] != '-' &&
			    name[i] != '.' && name[i] != '_')
				return -1;
		if ((copy = strdup(name)) == NULL)
			return -1;
	}
	free(s->reverse);
	s->reverse = copy;
	return 0;
}

const char *
session_reverse_name(const struct session *s)
{
	return s->reverse;
}
