/*
 * session.h -- the SMTP protocol engine: bytes in, replies and events out.
 *
 * One struct session per SMTP connection. It knows nothing of sockets,
 * libevent or Lua: a transport (struct session_io) feeds it bytes and
 * receives replies; a policy (struct session_hooks) is asked for every
 * decision and may answer at once or later through session_decide().
 * The libevent server (conn.c), the Lua test harness (lua_session.c) and
 * the fuzzers all drive this same engine.
 */
#ifndef LUASMTPD_SESSION_H
#define LUASMTPD_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "proxy.h"

/* ESMTP extensions; each can be switched off in session_config.extensions. */
enum {
	EXT_PIPELINING		= 1 << 0,	/* RFC 2920 */
	EXT_SIZE		= 1 << 1,	/* RFC 1870 */
	EXT_8BITMIME		= 1 << 2,	/* RFC 6152 */
	EXT_ENHANCEDSTATUSCODES	= 1 << 3,	/* RFC 2034 */
	EXT_SMTPUTF8		= 1 << 4,	/* RFC 6531 */
	EXT_CHUNKING		= 1 << 5,	/* RFC 3030: BDAT */
	EXT_BINARYMIME		= 1 << 6,	/* RFC 3030: BODY=BINARYMIME (needs CHUNKING) */
	EXT_DSN			= 1 << 7,	/* RFC 3461: RET, ENVID, NOTIFY, ORCPT */
	EXT_ALL			= (1 << 8) - 1,
};

/* SASL mechanisms for AUTH (RFC 4954); none by default. */
enum {
	AUTH_PLAIN	= 1 << 0,	/* RFC 4616 */
	AUTH_LOGIN	= 1 << 1,	/* draft-murchison-sasl-login */
};

/* Limits and timeouts; session_config_init() sets the RFC 5321 4.5.3 defaults. */
struct session_config {
	const char	*hostname;		/* in the greeting and HELO/EHLO replies */
	unsigned	 extensions;		/* EXT_* bits: advertised and honoured */
	size_t		 max_line;		/* command line incl. CRLF (512) */
	size_t		 max_text_line;		/* DATA line incl. CRLF (1000); 0 = no limit */
	size_t		 max_recipients;	/* accepted RCPTs per message (100) */
	uint64_t	 max_size;		/* message octets after unstuffing; 0 = no limit */
	unsigned	 max_bad_commands;	/* errors before 421 and close (20) */
	unsigned	 timeout_command_ms;	/* idle, and a command line from its first octet (5 min) */
	unsigned	 timeout_data_ms;	/* waiting for the next DATA block (3 min) */
	unsigned	 timeout_decision_ms;	/* waiting for a policy verdict (10 min) */
	unsigned	 timeout_tls_ms;	/* a TLS handshake, start to end (30 s) */
	unsigned	 min_data_rate;		/* DATA octets/s past timeout_data_ms of credit (500); 0: none */
	unsigned	 max_session_ms;	/* a session's whole life (1 h); 0: no limit */
	bool		 starttls;		/* offer STARTTLS (io->starttls required) */
	unsigned	 auth_methods;		/* AUTH_* bits; 0: no AUTH */
	bool		 auth_without_tls;	/* allow AUTH on a plaintext session */
	unsigned	 max_auth_failures;	/* failed AUTHs before 421 and close (3) */
	bool		 accept_bare_lf;	/* DATA: a bare LF ends a line, read as CRLF */
	bool		 lmtp;			/* RFC 2033: LHLO, a reply per recipient */
	bool		 received_header;	/* prepend a Received field to the data (true) */
	unsigned	 max_hops;		/* Received fields a message may bring (100); 0: any */
	struct proxy_nets xclient_from;		/* peers that may send XCLIENT (none) */
	bool		 no_summary;		/* no summary lines (summary.h): a simulated client */
};

void	session_config_init(struct session_config *cfg);

/*
 * The reply text (enhanced code first) for any failure of the policy: an
 * invalid verdict here, a Lua error in lua_bridge.c and the library.
 */
#define SESSION_POLICY_ERROR	"4.3.0 Local error in policy, try again later"

/* What the policy is asked about.  Every one of them may be answered later. */
enum session_event {
	SEV_CONNECT,	/* before the greeting */
	SEV_HELO,	/* args.arg = the name */
	SEV_EHLO,	/* args.arg = the name (LMTP: the LHLO) */
	SEV_MAIL,	/* args.path = the reverse-path and its parameters */
	SEV_RCPT,	/* args.path = the forward-path and its parameters */
	SEV_DATA,	/* DATA, or a transaction's first BDAT: accept gives 354 (BDAT: nothing, the chunk is read) */
	SEV_DATA_END,	/* the final dot or BDAT LAST's chunk: args.size = octets; accept gives 250 */
	SEV_RSET,	/* only the reply text can be chosen */
	SEV_QUIT,	/* only the reply text can be chosen */
	SEV_VRFY,	/* args.arg = the argument */
	SEV_EXPN,	/* args.arg = the argument */
	SEV_AUTH,	/* args.auth = the credentials; accept gives 235 */
	SEV_COUNT
};

/* AUTH credentials, decoded; wiped by the engine once the verdict is in. */
struct session_auth {
	const char	*method;	/* "PLAIN" or "LOGIN" */
	const char	*username;	/* the authentication identity */
	const char	*password;
	const char	*authzid;	/* PLAIN's authorization identity; "" if none */
};

struct session_event_args {
	const char			*arg;	/* HELO/EHLO/VRFY/EXPN argument, NUL-terminated */
	const struct smtp_path		*path;	/* MAIL and RCPT */
	uint64_t			 size;	/* DATA_END: the message size in octets */
	const struct session_auth	*auth;	/* AUTH */
	unsigned			 serial;	/* MAIL and RCPT: the path's number, kept
						   when the envelope stores it */
};

/*
 * A policy's answer.  code 0 means the engine's default for the event and
 * outcome; text NULL means the default text.  A text may start with an
 * enhanced status code ("5.7.1 Relaying denied") and may hold several lines
 * separated by '\n'.  The engine validates it (a 2xx for a rejection, CR or
 * control characters, a wrong class: each becomes 451 4.3.0 and a log line)
 * and copies it before session_decide() returns.
 */
struct verdict {
	bool		 accept;
	int		 code;
	const char	*text;
};

/* Why a message in progress will not be delivered. */
enum session_abort {
	ABORT_DISCONNECT,	/* the client went away mid-DATA or before the verdict */
	ABORT_TOO_BIG,		/* over max_size: 552 after the final dot */
	ABORT_BARE_NEWLINE,	/* a bare CR or LF in the data: 550 after the final dot */
	ABORT_LINE_TOO_LONG,	/* a text line over max_text_line: 550 after the final dot */
	ABORT_TIMEOUT,		/* the client stopped sending data */
	ABORT_SHUTDOWN,		/* the server is stopping */
	ABORT_NUL,		/* a NUL octet in the data: 550 after the final dot */
	ABORT_RESET,		/* RSET, HELO/EHLO or STARTTLS between BDAT chunks */
	ABORT_TOO_MANY_HOPS,	/* over max_hops Received fields: 554 after the final dot */
};

enum hook_result {
	HOOK_DONE,	/* *v holds the verdict */
	HOOK_WAIT,	/* the policy will call session_decide() later */
};

struct session;

/* The policy side.  Every member may be NULL (then: accept, no-op). */
struct session_hooks {
	/* Asked once per event; at most one ask is outstanding per session. */
	enum hook_result (*ask)(void *ctx, struct session *s,
	    enum session_event ev, const struct session_event_args *args,
	    struct verdict *v);
	/* An outstanding ask was abandoned (timeout, disconnect): drop its verdict. */
	void	(*cancel)(void *ctx, struct session *s, enum session_event ev);
	/* What the client was told, after every ask: the engine's reply code. */
	void	(*outcome)(void *ctx, struct session *s, enum session_event ev,
	    int code);
	/*
	 * Message data, dot-unstuffed, CRLF kept, the final "." excluded; BDAT
	 * chunks as sent (a bare LF read as CRLF under accept_bare_lf, except
	 * for BODY=BINARYMIME, whose octets are never changed).
	 */
	void	(*data)(void *ctx, struct session *s, const char *buf, size_t len);
	/* The message in progress will not be delivered; no DATA_END ask follows. */
	void	(*abort)(void *ctx, struct session *s, enum session_abort why);
	/* Last call for this session, from session_destroy(). */
	void	(*closed)(void *ctx, struct session *s);
};

/* The transport side.  write and close are required. */
struct session_io {
	/* Append reply bytes; the transport flushes when its input is drained. */
	void	(*write)(void *io, const char *buf, size_t len);
	/* Flush what was written, then close; no more writes will follow. */
	void	(*close)(void *io);
	/* The engine can consume input again: feed what was held back. */
	void	(*wake)(void *io);
	/* (Re)arm the session's one timer to fire in ms; 0 disarms it. */
	void	(*timer)(void *io, unsigned ms);
	/*
	 * After "220 Ready to start TLS" is written: discard every byte the
	 * client sent after the STARTTLS line (the engine does the same with
	 * what it is fed until session_tls_started()), flush, then handshake.
	 */
	void	(*starttls)(void *io);
	/*
	 * Milliseconds on a monotonic clock, for the absolute deadlines (a
	 * command line from its first octet, DATA's minimum rate, the session's
	 * life).  NULL: time stands still, and every wait gets its full timeout.
	 */
	uint64_t (*now)(void *io);
};

/* What the transport knows of a TLS session, for the policy and logs. */
struct session_tls {
	char	version[16];		/* "TLSv1.3" */
	char	cipher[64];
	char	peer_subject[256];	/* "" without a client certificate */
};

/* Where the client is, as the transport knows it (for the policy and logs). */
struct session_peer {
	char		remote_addr[46];	/* INET6_ADDRSTRLEN */
	uint16_t	remote_port;
	char		local_addr[46];
	uint16_t	local_port;
	const struct session_tls *tls;	/* implicit TLS: secure from the start */
};

/*
 * Creates a session and asks SEV_CONNECT (the greeting follows the verdict).
 * cfg, hooks and io must outlive the session.  Returns NULL on ENOMEM.
 */
struct session	*session_create(const struct session_config *cfg,
		    const struct session_hooks *hooks, void *hook_ctx,
		    const struct session_io *io, void *io_ctx,
		    const struct session_peer *peer);
void		 session_destroy(struct session *s);	/* NULL is a no-op */

/*
 * Consumes client bytes and returns how many were taken.  Fewer than len
 * means the engine waits (a verdict, a pause, or it is closing): the
 * transport keeps the rest and feeds it again after io->wake.
 */
size_t	session_feed(struct session *s, const char *buf, size_t len);

/* The client closed its side: no reply, aborts a message in progress. */
void	session_eof(struct session *s);

/*
 * The session timer fired: the deadline it was armed for is over (the
 * engine trusts the transport's clock for that).  451 for an overdue
 * verdict; else a log line naming the deadline, 421 4.4.2 and close (no
 * reply while STARTTLS's handshake runs: there is no channel for one).
 */
void	session_timeout(struct session *s);

/* The server is stopping: 421 4.3.2 and close. */
void	session_shutdown(struct session *s);

/* Answers the outstanding ask.  Returns -1 (and ignores v) if there is none. */
int	session_decide(struct session *s, const struct verdict *v);

/*
 * The TLS handshake after STARTTLS succeeded: the session starts over
 * (RFC 3207 4.2: HELO, transaction and authentication are forgotten).
 */
void	session_tls_started(struct session *s, const struct session_tls *tls);

/*
 * LMTP (cfg->lmtp): the verdict for recipient i (in RCPT order) of the
 * message whose end is being asked (SEV_DATA_END outstanding or being
 * asked).  The DATA_END verdict answers the recipients without one.  The
 * engine copies v.  Returns -1 outside LMTP, with no such recipient or no
 * end of message asked.
 */
int	session_recipient_verdict(struct session *s, size_t i,
	    const struct verdict *v);
bool	session_lmtp(const struct session *s);

/*
 * Why the transport ends the session (a string that outlives it), for the
 * connection's summary line; call before session_destroy().
 */
void	session_set_end(struct session *s, const char *why);

/* Flow control for message data (the policy reads slower than the client sends). */
void	session_pause(struct session *s);
void	session_resume(struct session *s);

uint64_t		 session_id(const struct session *s);
const struct session_peer *session_peer(const struct session *s);
const char		*session_state_name(const struct session *s);
bool			 session_idle(const struct session *s);	/* no transaction, no ask */
bool			 session_closing(const struct session *s);
const struct session_tls *session_tls(const struct session *s);	/* NULL: plaintext */
const char		*session_user(const struct session *s);	/* NULL: not authenticated */
const char		*session_event_name(enum session_event ev);
/*
 * XCLIENT (offered to peers in cfg->xclient_from): how many were applied,
 * and the NAME the last one gave (NULL: none, or unavailable).  The peer
 * (session_peer) and the user are the ones XCLIENT named; after each one
 * hooks->outcome(SEV_CONNECT, 220) runs again.
 */
unsigned		 session_xclients(const struct session *s);
const char		*session_remote_name(const struct session *s);

/*
 * The envelope: what the client was told 250 for, stored by the engine.
 * HELO/EHLO replaces the name; RSET, a new HELO/EHLO, STARTTLS, a refused
 * MAIL and the end of a transaction (after its outcome) forget sender and
 * recipients, STARTTLS the name too.  Each stored path keeps the serial its
 * ask carried (session_event_args.serial), so the policy can tell an
 * argument it saw from another.  NULL / 0: none.
 */
const char		*session_helo(const struct session *s, bool *extended);
const struct smtp_path	*session_sender(const struct session *s, unsigned *serial);
size_t			 session_recipient_count(const struct session *s);
const struct smtp_path	*session_recipient(const struct session *s, size_t i,
			    unsigned *serial);

/*
 * Trace fields (trace.c).  The data hook's first octets are the Received
 * field (cfg->received_header) and then the fields added here, in call
 * order.  session_add_header() works while SEV_DATA is asked or the message
 * is under way and no octet of it went to the hook: -1 otherwise or for a
 * bad name or value (any CR, LF or control octet but HTAB), -2 past
 * TRACE_ADDED_MAX octets; *why says which.  The value is folded.
 */
int	session_add_header(struct session *s, const char *name, size_t namelen,
	    const char *value, size_t valuelen, const char **why);
/* The client's reverse name for the Received field (a checked domain; NULL: none); -1 if bad. */
int	session_set_reverse_name(struct session *s, const char *name);
const char	*session_reverse_name(const struct session *s);

#endif
