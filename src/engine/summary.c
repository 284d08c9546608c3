/*
 * summary.c -- the transaction, connection and refusal lines (summary.h).
 * Reads the session through its accessors only; writes through log.c's
 * records, so the keys are the same in text and JSON.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "summary.h"

#define REFUSAL_TEXT_MAX	400	/* of a reply's text in its refusal line */

/* Who the client is: on every summary line. */
static void
rec_client(struct log_rec *r, const struct session *s)
{
	const struct session_peer	*p = session_peer(s);
	const struct session_tls	*t = session_tls(s);

	log_rec_str(r, "client", p->remote_addr);
	log_rec_str(r, "name", session_reverse_name(s));
	log_rec_uint(r, "port", p->remote_port);
	if (p->via[0] != '\0') {
		log_rec_str(r, "proxy", p->via);
		log_rec_uint(r, "proxy_port", p->via_port);
	}
	log_rec_str(r, "helo", session_helo(s, NULL));
	if (t != NULL) {
		log_rec_str(r, "tls", t->version);
		log_rec_str(r, "cipher", t->cipher);
	}
	log_rec_str(r, "user", session_user(s));
}

/* A path: "<a@b>" in text (the null path shows), "a@b" in JSON. */
static void
rec_path(struct log_rec *r, const char *key, const char *address)
{
	char	buf[REPLY_LINE_MAX + 2];
	size_t	n = strlen(address);

	if (r->json || n > sizeof(buf) - 2) {
		log_rec_strn(r, key, address, n);
		return;
	}
	buf[0] = '<';
	memcpy(buf + 1, address, n);
	buf[n + 1] = '>';
	log_rec_strn(r, key, buf, n + 2);
}

void
summary_reply(struct summary *sum, const struct session *s, const char *command,
    const char *address, int code, const char *enhanced, const char *text,
    bool in_data)
{
	struct log_rec	r;
	size_t		n;

	if (address == NULL)
		address = sum->lmtp_address;	/* an LMTP recipient's own reply */
	sum->lmtp_address = NULL;
	/*
	 * The message's result: the reply to DATA or to its end, unless it
	 * says DATA itself was out of sequence (503) or malformed (501): no
	 * message was offered, so none was rejected
	 */
	if (in_data && code != 354 && code != 501 && code != 503) {
		sum->data_code = code;
		n = enhanced != NULL ? strlen(enhanced) : 0;
		if (n >= sizeof(sum->data_enhanced))
			n = 0;
		memcpy(sum->data_enhanced, enhanced != NULL ? enhanced : "", n);
		sum->data_enhanced[n] = '\0';
	}
	if (code < 400)
		return;
	sum->refusals++;
	if (sum->quiet || log_get_level() < LOG_INFO)
		return;
	log_rec_begin(&r, "refusal");
	rec_client(&r, s);
	log_rec_str(&r, "command", command);
	if (address != NULL)
		rec_path(&r, "address", address);
	log_rec_uint(&r, "code", (uint64_t)code);
	if (enhanced != NULL && enhanced[0] != '\0')
		log_rec_str(&r, "enhanced", enhanced);
	n = strlen(text);
	log_rec_strn(&r, "text", text, n < REFUSAL_TEXT_MAX ? n : REFUSAL_TEXT_MAX);
	log_rec_emit(&r, LOG_INFO, session_id(s));
}

void
summary_mail(struct summary *sum, const struct session *s, const char *sender,
    uint64_t now)
{
	sum->transactions++;
	sum->tx_open = true;
	sum->tx_start = now;
	sum->sized = false;
	sum->data_code = 0;
	sum->lmtp_listed = false;
	if (sum->quiet || log_get_level() < LOG_INFO)
		return;
	/* one buffer for the session's transactions, made at its first */
	if (sum->tx == NULL && (sum->tx = malloc(sizeof(*sum->tx))) == NULL)
		return;
	if (sum->tx_head > 0 && sum->tx_json == (log_get_format() == LOG_JSON)) {
		/* the same client as the last transaction's: its fields are there */
		sum->tx->len = sum->tx_head;
		sum->tx->cut = false;
		sum->tx->in_list = false;
	} else {
		log_rec_begin(sum->tx, "transaction");
		rec_client(sum->tx, s);
		sum->tx_head = sum->tx->cut ? 0 : sum->tx->len;
		sum->tx_json = sum->tx->json;
	}
	rec_path(sum->tx, "from", sender);
}

void
summary_client_changed(struct summary *sum)
{
	sum->tx_head = 0;
}

void
summary_rcpt(struct summary *sum, const char *address, int code,
    const char *enhanced)
{
	sum->rcpts++;
	if (code / 100 == 2)
		sum->rcpts_accepted++;
	if (sum->tx_open && sum->tx != NULL)
		log_rec_rcpt(sum->tx, address, code, enhanced);
}

void
summary_lmtp(struct summary *sum, const char *address, int code,
    const char *enhanced)
{
	struct log_rec	*r = sum->tx;
	int		 best = sum->lmtp_code / 100, class = code / 100;
	size_t		 n = enhanced != NULL ? strlen(enhanced) : 0;

	/* 2xx over 4xx (tried again) over 5xx: what the message came to */
	if (best == 0 || (best != 2 && class == 2) || (best == 5 && class == 4)) {
		sum->lmtp_code = code;
		if (n >= sizeof(sum->lmtp_enhanced))
			n = 0;
		memcpy(sum->lmtp_enhanced, enhanced != NULL ? enhanced : "", n);
		sum->lmtp_enhanced[n] = '\0';
	}
	sum->lmtp_address = address;	/* for its refusal line, if it is one */
	if (!sum->tx_open || r == NULL)
		return;
	/* JSON: one "lmtp" array after "rcpts" (again only if a cut closed it) */
	log_rec_reply_item(r, "lmtp", sum->lmtp_listed && r->in_list ? NULL : "lmtp",
	    address, code, enhanced);
	sum->lmtp_listed = true;
}

void
summary_lmtp_end(struct summary *sum, int code, const char *enhanced)
{
	size_t	n;

	if (sum->lmtp_code != 0 && sum->lmtp_code / 100 != code / 100) {
		code = sum->lmtp_code;
		enhanced = sum->lmtp_enhanced;
	}
	sum->lmtp_code = 0;
	sum->lmtp_address = NULL;
	n = enhanced != NULL ? strlen(enhanced) : 0;
	sum->data_code = code;
	if (n >= sizeof(sum->data_enhanced))
		n = 0;
	memcpy(sum->data_enhanced, enhanced != NULL ? enhanced : "", n);
	sum->data_enhanced[n] = '\0';
}

void
summary_size(struct summary *sum, uint64_t size)
{
	sum->size = size;
	sum->sized = true;
}

void
summary_tx_end(struct summary *sum, const struct session *s, uint64_t now)
{
	struct log_rec	*r = sum->tx;
	const char	*result = "abandoned";

	if (!sum->tx_open)
		return;
	sum->tx_open = false;
	switch (sum->data_code / 100) {
	case 2: result = "accepted", sum->accepted++; break;
	case 4: result = "deferred", sum->deferred++; break;
	case 5: result = "rejected", sum->rejected++; break;
	}
	if (r == NULL || log_get_level() < LOG_INFO)
		return;
	if (sum->sized)
		log_rec_uint(r, "size", sum->size);
	if (sum->data_code != 0) {
		log_rec_uint(r, "code", (uint64_t)sum->data_code);
		if (sum->data_enhanced[0] != '\0')
			log_rec_word(r, "enhanced", sum->data_enhanced);	/* checked by reply.c */
	}
	log_rec_word(r, "result", result);
	log_rec_ms(r, "duration", now - sum->tx_start);
	log_rec_emit(r, LOG_INFO, session_id(s));
}

void
summary_close(struct summary *sum, const struct session *s, uint64_t now,
    uint64_t born)
{
	struct log_rec	r;

	summary_tx_end(sum, s, now);
	free(sum->tx);
	sum->tx = NULL;
	if (sum->quiet || log_get_level() < LOG_INFO)
		return;
	log_rec_begin(&r, "connection");
	rec_client(&r, s);
	log_rec_uint(&r, "transactions", sum->transactions);
	log_rec_uint(&r, "accepted", sum->accepted);
	log_rec_uint(&r, "rejected", sum->rejected);
	log_rec_uint(&r, "deferred", sum->deferred);
	log_rec_uint(&r, "rcpts", sum->rcpts);
	log_rec_uint(&r, "rcpts_accepted", sum->rcpts_accepted);
	log_rec_uint(&r, "refusals", sum->refusals);
	log_rec_uint(&r, "bytes_in", sum->bytes_in);
	log_rec_uint(&r, "bytes_out", sum->bytes_out);
	if (session_xclients(s) > 0)
		log_rec_uint(&r, "xclients", session_xclients(s));
	log_rec_str(&r, "end", sum->end != NULL ? sum->end : "closed");
	log_rec_ms(&r, "duration", now - born);
	log_rec_emit(&r, LOG_INFO, session_id(s));
}
