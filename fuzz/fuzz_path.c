/*
 * fuzz_path.c -- libFuzzer target for proto.c: proto_parse_path() on
 * arbitrary bytes with every flag combination, and proto_valid_helo().
 *
 * Input: one flag octet (PATH_* bits; 0x80: DSN's RCPT parameters, else
 * MAIL's), then the line.  On success the result must be within the RFC
 * 5321 bounds, free of controls, consistent with the flags, and parse again
 * to the same address when re-sent.  DSN parameters that pass
 * proto_dsn_params() are decoded to their documented shapes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto.h"
#include "fuzz.h"

static bool	clean(const char *s, bool allow_utf8);
static void	check_dsn(struct smtp_path *p, bool rcpt);
static void	check_path(const struct smtp_path *p, int flags,
		    const char *line, size_t len);

/* No NUL (implied), CR, LF or other controls; non-ASCII only if allowed. */
static bool
clean(const char *s, bool allow_utf8)
{
	const unsigned char	*u;

	for (u = (const unsigned char *)s; *u != '\0'; u++)
		if (*u < 0x20 || *u == 0x7f || (*u >= 0x80 && !allow_utf8))
			return false;
	return true;
}

static bool
inside(const char *p, const char *base, size_t len)
{
	return p >= base && p < base + len;
}

static void
check_path(const struct smtp_path *p, int flags, const char *line, size_t len)
{
	bool	utf8 = (flags & PATH_ALLOW_UTF8) != 0;
	size_t	alen, llen, dlen, i, j;
	const unsigned char *u;
	bool	high = false;

	REQUIRE(p->address != NULL && p->local != NULL && p->domain != NULL);
	alen = strlen(p->address);
	llen = strlen(p->local);
	dlen = strlen(p->domain);
	REQUIRE(llen <= SMTP_LOCAL_MAX);
	REQUIRE(dlen <= SMTP_DOMAIN_MAX);
	REQUIRE(alen + 2 <= SMTP_PATH_MAX);
	REQUIRE(clean(p->address, utf8) && clean(p->local, utf8) &&
	    clean(p->domain, utf8));
	for (u = (const unsigned char *)p->address; *u != '\0'; u++)
		if (*u >= 0x80)
			high = true;
	REQUIRE(p->utf8 == high);
	if (alen == 0) {
		REQUIRE(flags & PATH_ALLOW_NULL);
		REQUIRE(llen == 0 && dlen == 0);
	} else if (dlen == 0) {
		REQUIRE(flags & PATH_POSTMASTER);
		REQUIRE(strcmp(p->address, "Postmaster") == 0);
	} else {
		/* address = local "@" domain, all within the line or local_buf */
		REQUIRE(inside(p->address, line, len));
		REQUIRE(inside(p->domain, line, len));
		REQUIRE(p->local == p->local_buf);
		REQUIRE(alen == llen + 1 + dlen);
		REQUIRE(strncmp(p->address, p->local, llen) == 0);
		REQUIRE(p->address[llen] == '@');
		REQUIRE(strcmp(p->address + llen + 1, p->domain) == 0);
	}
	REQUIRE(p->nparams <= SMTP_PARAMS_MAX);
	for (i = 0; i < p->nparams; i++) {
		const struct smtp_param *sp = &p->params[i];

		REQUIRE(sp->key != NULL && sp->key[0] != '\0');
		REQUIRE(inside(sp->key, line, len));
		REQUIRE(clean(sp->key, false) && strchr(sp->key, ' ') == NULL &&
		    strchr(sp->key, '=') == NULL);
		if (sp->value != NULL) {
			REQUIRE(sp->value[0] != '\0');
			REQUIRE(inside(sp->value, line, len));
			REQUIRE(clean(sp->value, utf8));
			REQUIRE(strchr(sp->value, ' ') == NULL &&
			    strchr(sp->value, '=') == NULL);
		}
		for (j = 0; j < i; j++)
			REQUIRE(strcasecmp(p->params[j].key, sp->key) != 0);
		REQUIRE(proto_param(p, sp->key) == sp);
	}
}

/* After proto_dsn_params(): RET, NOTIFY, ENVID, ORCPT as documented. */
static void
check_dsn(struct smtp_path *p, bool rcpt)
{
	const struct smtp_param	*v;
	const char		*why = NULL;

	if (proto_dsn_params(p, rcpt, &why) == -1) {
		REQUIRE(why != NULL && why[0] != '\0');
		return;
	}
	if (!rcpt && (v = proto_param(p, "RET")) != NULL)
		REQUIRE(strcmp(v->value, "FULL") == 0 || strcmp(v->value, "HDRS") == 0);
	if (!rcpt && (v = proto_param(p, "ENVID")) != NULL) {
		REQUIRE(v->value[0] != '\0' && strlen(v->value) <= DSN_ENVID_MAX);
		for (const char *c = v->value; *c != '\0'; c++)
			REQUIRE(*c >= 0x21 && *c <= 0x7e);
	}
	if (rcpt && (v = proto_param(p, "NOTIFY")) != NULL)
		REQUIRE(strcmp(v->value, "NEVER") == 0 ||
		    strspn(v->value, "SUCCESFAILUREDY,") == strlen(v->value));
	if (rcpt && (v = proto_param(p, "ORCPT")) != NULL) {
		const char *semi = strchr(v->value, ';');

		REQUIRE(semi != NULL && semi != v->value && semi[1] != '\0');
		for (const char *c = semi + 1; *c != '\0'; c++)
			REQUIRE(*c >= 0x20 && *c <= 0x7e);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_path	 p, q;
	const char		*why = NULL;
	char			*line, *again, *helo;
	int			 flags, rc;
	size_t			 len;

	if (size < 1)
		return 0;
	flags = data[0] & (PATH_ALLOW_NULL | PATH_ALLOW_UTF8 | PATH_POSTMASTER);
	len = size - 1;
	/* exact-size heap copies so that ASan sees any overread */
	if ((line = malloc(len + 1)) == NULL || (helo = malloc(len + 1)) == NULL)
		abort();
	memcpy(line, data + 1, len);
	line[len] = '\0';
	memcpy(helo, line, len + 1);

	rc = proto_parse_path(line, flags, &p, &why);
	if (rc == 0) {
		check_path(&p, flags, line, len + 1);
		check_dsn(&p, (data[0] & 0x80) != 0);
		/* the path re-sent without route or parameters means the same */
		if ((again = malloc(strlen(p.address) + 3)) == NULL)
			abort();
		sprintf(again, "<%s>", p.address);
		REQUIRE(proto_parse_path(again, flags, &q, &why) == 0);
		REQUIRE(strcmp(q.address, p.address) == 0);
		REQUIRE(strcmp(q.local, p.local) == 0);
		REQUIRE(strcmp(q.domain, p.domain) == 0);
		REQUIRE(q.nparams == 0 && q.utf8 == p.utf8);
		free(again);
	} else {
		REQUIRE(rc == -1);
		REQUIRE(why != NULL && why[0] != '\0' && clean(why, false));
	}

	if (proto_valid_helo(helo, (flags & PATH_ALLOW_UTF8) != 0)) {
		REQUIRE(helo[0] != '\0');
		REQUIRE(clean(helo, (flags & PATH_ALLOW_UTF8) != 0));
		REQUIRE(strchr(helo, ' ') == NULL);
		REQUIRE(strlen(helo) <= SMTP_DOMAIN_MAX);
	}
	(void)proto_skip_prefix(helo, "MAIL FROM:");
	free(line);
	free(helo);
	return 0;
}
