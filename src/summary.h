/*
 * summary.h -- the lines an admin reads at 3 a.m.: one per transaction,
 * one per connection, one per refusal, at info, from what the engine knows.
 *
 * session.c feeds a struct summary (one per session, inside it) at a few
 * points: every reply, a sender told 250, each recipient's reply, the
 * message's size, the end of a transaction and of the session.  The
 * transaction line is built in place as the transaction goes (one buffer
 * per session, made at its first MAIL), so nothing is copied or allocated
 * per command.  docs/LOGGING.md lists the keys.
 */
#ifndef LUASMTPD_SUMMARY_H
#define LUASMTPD_SUMMARY_H

#include <stdbool.h>
#include <stdint.h>

#include "reply.h"

struct log_rec;
struct session;

struct summary {
	struct log_rec	*tx;		/* the transaction line; NULL: not made yet */
	size_t		 tx_head;	/* its event and client fields, kept for the next; 0: none */
	bool		 tx_json;	/* ... in this format */
	bool		 tx_open;	/* a sender was told 250; no end yet */
	uint64_t	 tx_start;	/* ms, the session's clock */
	uint64_t	 size;		/* the message's octets, once its data ended */
	bool		 sized;
	int		 data_code;	/* the reply to DATA (refused) or to the data's end; 0: none */
	char		 data_enhanced[REPLY_ENHANCED_MAX];
	unsigned	 transactions, accepted, rejected, deferred;
	unsigned	 rcpts, rcpts_accepted, refusals;
	uint64_t	 bytes_in, bytes_out;
	const char	*end;		/* why the connection ended (the transport's words) */
	bool		 quiet;		/* no lines at all (session_config.no_summary) */
};

/*
 * A reply left: code 400-599 logs a refusal line naming the command (or
 * event) it answers and the address asked about (MAIL, RCPT; NULL: none).
 * in_data: the reply to DATA or to the end of data.
 */
void	summary_reply(struct summary *sum, const struct session *s,
	    const char *command, const char *address, int code,
	    const char *enhanced, const char *text, bool in_data);
/* HELO, TLS or the user changed: the client fields are written anew. */
void	summary_client_changed(struct summary *sum);
/* A sender was told 250 at now: the transaction line starts. */
void	summary_mail(struct summary *sum, const struct session *s,
	    const char *sender, uint64_t now);
/* A recipient's reply (refused ones too). */
void	summary_rcpt(struct summary *sum, const char *address, int code,
	    const char *enhanced);
/* The message's size in octets, at the end of its data. */
void	summary_size(struct summary *sum, uint64_t size);
/* The transaction ends (its envelope is forgotten): logs its line. */
void	summary_tx_end(struct summary *sum, const struct session *s,
	    uint64_t now);
/* The session ends after born_ms: logs the connection line, frees. */
void	summary_close(struct summary *sum, const struct session *s,
	    uint64_t now, uint64_t born);

#endif
