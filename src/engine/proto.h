/*
 * proto.h -- SMTP syntax: verbs, paths (RFC 5321 4.1.2) and ESMTP parameters.
 *
 * Pure functions over a command line that the caller owns; parsing is done
 * in place (NUL bytes are written into the line) so nothing is allocated.
 */
#ifndef LUASMTPD_PROTO_H
#define LUASMTPD_PROTO_H

#include <stdbool.h>
#include <stddef.h>

#define SMTP_LOCAL_MAX		64	/* RFC 5321 4.5.3.1.1 */
#define SMTP_DOMAIN_MAX		255	/* RFC 5321 4.5.3.1.2 */
#define SMTP_PATH_MAX		256	/* RFC 5321 4.5.3.1.3, incl. brackets */
#define SMTP_PARAMS_MAX		16	/* ESMTP parameters on one MAIL/RCPT */

struct smtp_param {
	const char	*key;		/* as sent; compare case-insensitively */
	const char	*value;		/* NULL when the keyword has no "=value" */
};

struct smtp_path {
	const char		*address;	/* Mailbox without brackets or source route; "" for <> */
	const char		*local;		/* local part as sent (quoted form kept) */
	const char		*domain;	/* domain or address literal; "" for <> */
	struct smtp_param	 params[SMTP_PARAMS_MAX];
	size_t			 nparams;
	bool			 utf8;		/* the address holds non-ASCII octets */
	/*
	 * Storage behind `local`: the line has no room for both "local@domain"
	 * and a separate "local" string.  Copying the struct does not copy it.
	 */
	char			 local_buf[SMTP_LOCAL_MAX + 1];
};

enum {
	PATH_ALLOW_NULL	= 1 << 0,	/* "<>" is valid (reverse-path) */
	PATH_ALLOW_UTF8	= 1 << 1,	/* RFC 6531 UTF-8 in local part and domain */
	PATH_POSTMASTER	= 1 << 2,	/* bare <Postmaster> is valid (forward-path) */
};

/*
 * Parses `<path> [SP params]` (what follows "FROM:" or "TO:", leading spaces
 * allowed).  Returns 0, or -1 with *why set to a short reason for a 501.
 * The strings in *out point into line, which is modified.
 */
int	proto_parse_path(char *line, int flags, struct smtp_path *out,
	    const char **why);

#define DSN_ENVID_MAX	100	/* RFC 3461 4.4: the xtext, in characters */
#define DSN_ORCPT_MAX	500	/* RFC 3461 4.2: the whole value */

/*
 * Decodes xtext (RFC 3461 4: "+" and two upper-case hex digits, else
 * "!".."~" but "+" and "=") in place.  The result must be printable ASCII:
 * 0x21..0x7E, and space too when allow_space.  Returns its length, or -1.
 */
long	proto_xtext_decode(char *s, bool allow_space);

/*
 * Checks and decodes the DSN parameters (RFC 3461) among p's, in place:
 * MAIL's RET (FULL or HDRS) and ENVID (xtext, decoded), RCPT's NOTIFY (NEVER,
 * or a list of SUCCESS, FAILURE, DELAY) and ORCPT (addr-type ";" xtext:
 * "rfc822;bob@example.org", the address decoded).  RET, NOTIFY and ORCPT's
 * type come out upper-cased.  Other parameters are left alone.  Returns 0,
 * or -1 with *why set for a 501.
 */
int	proto_dsn_params(struct smtp_path *p, bool rcpt, const char **why);

/* Finds a parameter by keyword (case-insensitive); NULL if absent. */
const struct smtp_param *proto_param(const struct smtp_path *p, const char *key);

/* A domain name or address literal as in HELO/EHLO (RFC 5321 4.1.1.1). */
bool	proto_valid_helo(const char *name, bool allow_utf8);

/* Case-insensitive ASCII prefix test: returns the rest, or NULL. */
const char *proto_skip_prefix(const char *s, const char *prefix);

#endif
