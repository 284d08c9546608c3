/*
 * test_proto.c -- proto.c against RFC 5321 4.1.2: paths, address literals,
 * UTF-8, length bounds, ESMTP parameters, HELO names and prefixes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "tap.h"

#define N	PATH_ALLOW_NULL
#define U	PATH_ALLOW_UTF8
#define P	PATH_POSTMASTER

/* One path case: on success address/local/domain, on failure the reason. */
struct path_case {
	const char	*in;
	int		 flags;
	int		 rc;
	const char	*address;	/* or the expected *why when rc == -1 */
	const char	*local;
	const char	*domain;
	bool		 utf8;
};

#define GOOD(in, flags, address, local, domain, utf8) \
	{ (in), (flags), 0, (address), (local), (domain), (utf8) }
#define BAD(in, flags, why) \
	{ (in), (flags), -1, (why), NULL, NULL, false }

static const struct path_case path_cases[] = {
	/* plain mailboxes */
	GOOD("<user@example.org>", 0, "user@example.org", "user", "example.org", false),
	GOOD("<User.Name+tag@Sub.Example.ORG>", 0, "User.Name+tag@Sub.Example.ORG",
	    "User.Name+tag", "Sub.Example.ORG", false),
	GOOD("   <a@b>", 0, "a@b", "a", "b", false),
	GOOD("\t<a@b>", 0, "a@b", "a", "b", false),
	GOOD("<a@localhost>", 0, "a@localhost", "a", "localhost", false),
	GOOD("<!#$%&'*+-/=?^_`{|}~@x.example>", 0, "!#$%&'*+-/=?^_`{|}~@x.example",
	    "!#$%&'*+-/=?^_`{|}~", "x.example", false),
	GOOD("<a@x-y.example>", 0, "a@x-y.example", "a", "x-y.example", false),
	GOOD("<a@1.2.3.example>", 0, "a@1.2.3.example", "a", "1.2.3.example", false),
	GOOD("<a@x--y.example>", 0, "a@x--y.example", "a", "x--y.example", false),
	GOOD("<a@x> ", 0, "a@x", "a", "x", false),
	/* angle brackets */
	BAD("user@example.org", 0, "missing angle brackets"),
	BAD("<user@example.org", 0, "missing angle brackets"),
	BAD("user@example.org>", 0, "missing angle brackets"),
	BAD("", 0, "missing angle brackets"),
	BAD("   ", 0, "missing angle brackets"),
	BAD("<", 0, "bad local part"),
	BAD("<user", 0, "missing angle brackets"),
	BAD("<<a@b>>", 0, "bad local part"),
	/* null path */
	GOOD("<>", N, "", "", "", false),
	GOOD(" <>", N | U | P, "", "", "", false),
	BAD("<>", 0, "null path not allowed"),
	BAD("<>", P | U, "null path not allowed"),
	BAD("< >", N, "bad local part"),
	/* source routes: accepted, dropped */
	GOOD("<@a.example:user@c.example>", 0, "user@c.example", "user", "c.example", false),
	GOOD("<@a.example,@b.example:user@c.example>", 0, "user@c.example", "user",
	    "c.example", false),
	BAD("<@a.example,b.example:user@c.example>", 0, "bad source route"),
	BAD("<@a.example;user@c.example>", 0, "bad source route"),
	BAD("<@a.example:>", 0, "bad local part"),
	BAD("<@:user@c.example>", 0, "bad domain"),
	BAD("<@a..example:user@c.example>", 0, "bad domain"),
	BAD("<@example.org>", 0, "bad source route"),
	/* dot-string */
	BAD("<.a@b>", 0, "bad local part"),
	BAD("<a.@b>", 0, "bad local part"),
	BAD("<a..b@c>", 0, "bad local part"),
	BAD("<a b@c>", 0, "bad local part"),
	BAD("<a(b)@c>", 0, "bad local part"),
	BAD("<a,b@c>", 0, "bad local part"),
	BAD("<a\\b@c>", 0, "bad local part"),
	BAD("<a\tb@c>", 0, "bad local part"),
	BAD("<a\rb@c>", 0, "bad local part"),
	BAD("<a\nb@c>", 0, "bad local part"),
	BAD("<a\x7f@c>", 0, "bad local part"),
	BAD("<a@b@c>", 0, "bad domain"),
	/* quoted-string */
	GOOD("<\"john doe\"@example.org>", 0, "\"john doe\"@example.org", "\"john doe\"",
	    "example.org", false),
	GOOD("<\"a\\\"b\"@x>", 0, "\"a\\\"b\"@x", "\"a\\\"b\"", "x", false),
	GOOD("<\"a\\\\b\"@x>", 0, "\"a\\\\b\"@x", "\"a\\\\b\"", "x", false),
	GOOD("<\"\"@x>", 0, "\"\"@x", "\"\"", "x", false),
	GOOD("<\"a>b@c\"@x>", 0, "\"a>b@c\"@x", "\"a>b@c\"", "x", false),
	GOOD("<\"a..b.\"@x>", 0, "\"a..b.\"@x", "\"a..b.\"", "x", false),
	BAD("<\"unterminated@x>", 0, "bad local part"),
	BAD("<\"a\"b@x>", 0, "bad local part"),
	BAD("<\"a\"\"b\"@x>", 0, "bad local part"),
	BAD("<\"a\tb\"@x>", 0, "bad local part"),
	BAD("<\"a\\\tb\"@x>", 0, "bad local part"),
	BAD("<\"a\rb\"@x>", 0, "bad local part"),
	BAD("<\"a\\\"@x>", 0, "bad local part"),
	/* domains */
	BAD("<a@>", 0, "bad domain"),
	BAD("<a>", 0, "missing domain"),
	BAD("<a@-x.example>", 0, "bad domain"),
	BAD("<a@x-.example>", 0, "bad domain"),
	BAD("<a@.example>", 0, "bad domain"),
	BAD("<a@example.>", 0, "bad domain"),
	BAD("<a@x..example>", 0, "bad domain"),
	BAD("<a@x_y.example>", 0, "bad domain"),
	BAD("<a@x y>", 0, "bad domain"),
	/* address literals */
	GOOD("<a@[192.0.2.1]>", 0, "a@[192.0.2.1]", "a", "[192.0.2.1]", false),
	GOOD("<a@[255.255.255.255]>", 0, "a@[255.255.255.255]", "a", "[255.255.255.255]",
	    false),
	BAD("<a@[256.0.0.1]>", 0, "bad address literal"),
	BAD("<a@[1.2.3]>", 0, "bad address literal"),
	BAD("<a@[1.2.3.4.5]>", 0, "bad address literal"),
	BAD("<a@[192.0.2.1>", 0, "bad address literal"),
	BAD("<a@[]>", 0, "bad address literal"),
	BAD("<a@[example.org]>", 0, "bad address literal"),
	GOOD("<a@[IPv6:2001:db8::1]>", 0, "a@[IPv6:2001:db8::1]", "a", "[IPv6:2001:db8::1]",
	    false),
	GOOD("<a@[ipv6:::1]>", 0, "a@[ipv6:::1]", "a", "[ipv6:::1]", false),
	GOOD("<a@[IPv6:::ffff:192.0.2.1]>", 0, "a@[IPv6:::ffff:192.0.2.1]", "a",
	    "[IPv6:::ffff:192.0.2.1]", false),
	BAD("<a@[IPv6:2001:db8::g]>", 0, "bad address literal"),
	BAD("<a@[IPv6:1:2:3:4:5:6:7:8:9]>", 0, "bad address literal"),
	BAD("<a@[IPv6:192.0.2.1]>", 0, "bad address literal"),
	BAD("<a@[IPv6:]>", 0, "bad address literal"),
	GOOD("<a@[x-tag:any.thing/here]>", 0, "a@[x-tag:any.thing/here]", "a",
	    "[x-tag:any.thing/here]", false),
	BAD("<a@[tag:]>", 0, "bad address literal"),
	BAD("<a@[:content]>", 0, "bad address literal"),
	BAD("<a@[tag-:content]>", 0, "bad address literal"),
	BAD("<a@[t_g:content]>", 0, "bad address literal"),
	BAD("<a@[tag:con tent]>", 0, "bad address literal"),
	BAD("<a@[tag:con[tent]>", 0, "bad address literal"),
	BAD("<a@[tag:con\\tent]>", 0, "bad address literal"),
	BAD("<a@[192.0.2.1]x>", 0, "bad domain"),
	BAD("<a@x.[192.0.2.1]>", 0, "bad domain"),
	/* Postmaster */
	GOOD("<Postmaster>", P, "Postmaster", "Postmaster", "", false),
	GOOD("<postMASTER>", P, "Postmaster", "Postmaster", "", false),
	BAD("<Postmaster>", 0, "missing domain"),
	BAD("<Postmaster>", N | U, "missing domain"),
	GOOD("<Postmaster@example.org>", 0, "Postmaster@example.org", "Postmaster",
	    "example.org", false),
	BAD("<@a.example:Postmaster>", P, "missing domain"),
	BAD("<\"Postmaster\">", P, "missing domain"),
	BAD("<Postmasters>", P, "missing domain"),
	/* UTF-8 (RFC 6531) */
	GOOD("<j\xc3\xb6rg@example.org>", U, "j\xc3\xb6rg@example.org", "j\xc3\xb6rg",
	    "example.org", true),
	BAD("<j\xc3\xb6rg@example.org>", 0, "non-ASCII address needs SMTPUTF8"),
	GOOD("<a@b\xc3\xbc" "cher.example>", U, "a@b\xc3\xbc" "cher.example", "a",
	    "b\xc3\xbc" "cher.example", true),
	BAD("<a@b\xc3\xbc" "cher.example>", 0, "non-ASCII address needs SMTPUTF8"),
	GOOD("<\"\xe6\x97\xa5 \xe6\x9c\xac\"@x>", U, "\"\xe6\x97\xa5 \xe6\x9c\xac\"@x",
	    "\"\xe6\x97\xa5 \xe6\x9c\xac\"", "x", true),
	BAD("<\"\xe6\x97\xa5\"@x>", 0, "non-ASCII address needs SMTPUTF8"),
	GOOD("<\xf0\x9f\x98\x80@x>", U, "\xf0\x9f\x98\x80@x", "\xf0\x9f\x98\x80", "x", true),
	GOOD("<a@\xe2\x82\xac.example>", U, "a@\xe2\x82\xac.example", "a",
	    "\xe2\x82\xac.example", true),
	GOOD("<@\xc3\xa9.example:a@x>", U, "a@x", "a", "x", false),
	BAD("<@\xc3\xa9.example:a@x>", 0, "non-ASCII address needs SMTPUTF8"),
	BAD("<\xc3@x>", U, "malformed UTF-8"),			/* truncated */
	BAD("<\xc3\x28@x>", U, "malformed UTF-8"),		/* bad continuation */
	BAD("<\xc0\xaf@x>", U, "malformed UTF-8"),		/* overlong "/" */
	BAD("<\xe0\x80\xaf@x>", U, "malformed UTF-8"),		/* overlong, 3 octets */
	BAD("<\xf0\x80\x80\xaf@x>", U, "malformed UTF-8"),	/* overlong, 4 octets */
	BAD("<\xed\xa0\x80@x>", U, "malformed UTF-8"),		/* surrogate U+D800 */
	BAD("<\xf4\x90\x80\x80@x>", U, "malformed UTF-8"),	/* U+110000 */
	BAD("<\xf5\x80\x80\x80@x>", U, "malformed UTF-8"),
	BAD("<\xff@x>", U, "malformed UTF-8"),
	BAD("<\x80@x>", U, "malformed UTF-8"),			/* lone continuation */
	BAD("<a@\xc3.example>", U, "malformed UTF-8"),
	BAD("<\"\xc3\"@x>", U, "malformed UTF-8"),
	BAD("<a@[\xc3\xa9]>", U, "bad address literal"),
	/* junk after the path */
	BAD("<a@b>x", 0, "bad parameter"),
	BAD("<a@b>>", 0, "bad parameter"),
	BAD("<a@b>\t", 0, "bad parameter"),
};

static void
test_path_table(void)
{
	const struct path_case	*c;
	struct smtp_path	 p;
	const char		*why;
	char			 line[600];
	size_t			 i;
	int			 rc;

	for (i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++) {
		c = &path_cases[i];
		snprintf(line, sizeof(line), "%s", c->in);
		why = NULL;
		rc = proto_parse_path(line, c->flags, &p, &why);
		if (c->rc == 0) {
			if (!CHECK_MSG(rc == 0, "path case %zu accepted", i))
				tap_diag("input \"%s\" flags %d: %s", c->in, c->flags,
				    why ? why : "(no reason)");
			if (rc != 0)
				continue;
			CHECK_STR(p.address, c->address);
			CHECK_STR(p.local, c->local);
			CHECK_STR(p.domain, c->domain);
			CHECK_MSG(p.utf8 == c->utf8, "path case %zu utf8 flag", i);
			CHECK_INT(p.nparams, 0);
		} else {
			if (!CHECK_MSG(rc == -1, "path case %zu rejected", i))
				tap_diag("input \"%s\" flags %d gave address \"%s\"",
				    c->in, c->flags, p.address);
			CHECK_STR(why, c->address);
		}
	}
}

/* A run of n octets c; buf must hold n + 1. */
static char *
repeat(char *buf, int c, size_t n)
{
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

/* A valid domain of exactly n octets: 63-octet labels of "d" joined by dots. */
static char *
domain_of(char *buf, size_t n)
{
	size_t	rem = n, len, o = 0;

	while (rem > 0) {
		len = rem < 63 ? rem : 63;
		if (rem - len == 1)
			len--;		/* leave room for a dot and a label */
		memset(buf + o, 'd', len);
		o += len;
		rem -= len;
		if (rem > 0) {
			buf[o++] = '.';
			rem--;
		}
	}
	buf[o] = '\0';
	return buf;
}

static int
parse(char *line, size_t cap, int flags, struct smtp_path *p, const char **why,
    const char *fmt, const char *a, const char *b)
{
	snprintf(line, cap, fmt, a, b);
	*why = NULL;
	return proto_parse_path(line, flags, p, why);
}

static void
test_bounds(void)
{
	struct smtp_path	 p;
	const char		*why;
	char			 line[1200], local[300], dom[600], label[80];

	/* local part: 64 / 65 */
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", repeat(local, 'l', 64),
	    "x.example") == 0);
	CHECK_INT(strlen(p.local), 64);
	CHECK_INT(strlen(p.address), 64 + 1 + 9);
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", repeat(local, 'l', 65),
	    "x.example") == -1);
	CHECK_STR(why, "local part too long");
	/* quoted: 64 octets including the quotes */
	snprintf(local, sizeof(local), "\"%s\"", repeat(label, 'q', 62));
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", local, "x") == 0);
	snprintf(local, sizeof(local), "\"%s\"", repeat(label, 'q', 63));
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", local, "x") == -1);
	CHECK_STR(why, "local part too long");
	/* UTF-8 counts octets: 32 two-octet characters = 64 octets */
	local[0] = '\0';
	for (int i = 0; i < 32; i++)
		strcat(local, "\xc3\xa9");
	CHECK(parse(line, sizeof(line), U, &p, &why, "<%s@%s>", local, "x") == 0);
	strcat(local, "a");
	CHECK(parse(line, sizeof(line), U, &p, &why, "<%s@%s>", local, "x") == -1);
	CHECK_STR(why, "local part too long");

	/* label: 63 / 64 */
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<a@%s.%s>", repeat(label, 'd', 63),
	    "example") == 0);
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<a@%s.%s>", repeat(label, 'd', 64),
	    "example") == -1);
	CHECK_STR(why, "domain label too long");

	/*
	 * domain: 255 / 256.  "<a@" + 255 + ">" is 259 octets, so a 255-octet
	 * domain only fits a HELO name (test_helo); in a path it hits the
	 * path limit while 256 octets is a domain error of its own.
	 */
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", domain_of(dom, 252))
	    == 0);
	CHECK_INT(strlen(p.domain), 252);
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", domain_of(dom, 253))
	    == -1);
	CHECK_STR(why, "path too long");
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", domain_of(dom, 255))
	    == -1);
	CHECK_STR(why, "path too long");
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", domain_of(dom, 256))
	    == -1);
	CHECK_STR(why, "domain too long");
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", domain_of(dom, 400))
	    == -1);
	CHECK_STR(why, "domain too long");

	/* path: 256 / 257 octets including the brackets */
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", repeat(local, 'l', 64),
	    domain_of(dom, 256 - 64 - 3)) == 0);
	CHECK_INT(strlen(p.address), 254);
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", repeat(local, 'l', 64),
	    domain_of(dom, 257 - 64 - 3)) == -1);
	CHECK_STR(why, "path too long");
	/* a source route counts towards the path */
	snprintf(dom, sizeof(dom), "@%s:", domain_of(label, 60));
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%sa@%s>", dom, "x") == 0);
	CHECK_STR(p.address, "a@x");
	{
		char	route[300], d2[300];

		snprintf(route, sizeof(route), "@%s,@%s:", domain_of(d2, 100),
		    domain_of(label, 60));
		/* "<" 1 + route 164 + "a@" 2 + domain + ">" 1 <= 256 */
		CHECK(parse(line, sizeof(line), 0, &p, &why, "<%sa@%s>", route,
		    domain_of(dom, 89)) == -1);
		CHECK_STR(why, "path too long");
		CHECK(parse(line, sizeof(line), 0, &p, &why, "<%sa@%s>", route,
		    domain_of(dom, 88)) == 0);
		CHECK_INT(strlen(p.domain), 88);
	}

	/* address literal: 255 / 256 octets including the brackets */
	snprintf(dom, sizeof(dom), "[x:%s]", repeat(label, 'c', 60));
	CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", dom) == 0);
	{
		char	lit[400], body[300];

		snprintf(lit, sizeof(lit), "[x:%s]", repeat(body, 'c', 255 - 4));
		CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", lit) == -1);
		CHECK_STR(why, "path too long");	/* 255 + 4 > 256 */
		snprintf(lit, sizeof(lit), "[x:%s]", repeat(body, 'c', 256 - 4));
		CHECK(parse(line, sizeof(line), 0, &p, &why, "<%s@%s>", "a", lit) == -1);
		CHECK_STR(why, "domain too long");
	}
}

static void
test_params(void)
{
	struct smtp_path	 p;
	const struct smtp_param	*sp;
	const char		*why;
	char			 line[1200], frag[32];
	int			 i;

	snprintf(line, sizeof(line), "<a@b>");
	CHECK(proto_parse_path(line, 0, &p, &why) == 0);
	CHECK_INT(p.nparams, 0);
	CHECK(proto_param(&p, "SIZE") == NULL);

	snprintf(line, sizeof(line), "<a@b> SIZE=1000 BODY=8BITMIME  SMTPUTF8 x-Ext-1=a+b/c ");
	CHECK(proto_parse_path(line, 0, &p, &why) == 0);
	CHECK_STR(p.address, "a@b");
	CHECK_STR(p.domain, "b");
	CHECK_INT(p.nparams, 4);
	CHECK_STR(p.params[0].key, "SIZE");
	CHECK_STR(p.params[0].value, "1000");
	CHECK_STR(p.params[1].key, "BODY");
	CHECK_STR(p.params[1].value, "8BITMIME");
	CHECK_STR(p.params[2].key, "SMTPUTF8");
	CHECK(p.params[2].value == NULL);
	CHECK_STR(p.params[3].key, "x-Ext-1");
	CHECK_STR(p.params[3].value, "a+b/c");
	sp = proto_param(&p, "size");
	CHECK(sp != NULL && strcmp(sp->value, "1000") == 0);
	sp = proto_param(&p, "X-EXT-1");
	CHECK(sp == &p.params[3]);
	CHECK(proto_param(&p, "SIZ") == NULL);
	CHECK(proto_param(&p, "SIZE=1000") == NULL);

	/* the null path takes parameters too */
	snprintf(line, sizeof(line), "<> SIZE=0");
	CHECK(proto_parse_path(line, N, &p, &why) == 0);
	CHECK_STR(p.address, "");
	CHECK_INT(p.nparams, 1);
	snprintf(line, sizeof(line), "<Postmaster> NOTIFY=NEVER");
	CHECK(proto_parse_path(line, P, &p, &why) == 0);
	CHECK_STR(proto_param(&p, "NOTIFY")->value, "NEVER");

	/* values: every esmtp-value octet except "=" */
	snprintf(line, sizeof(line), "<a@b> K=!\"#$%%&'()*+,-./09:;<>?@AZ[\\]^_`az{|}~");
	CHECK(proto_parse_path(line, 0, &p, &why) == 0);
	CHECK_STR(p.params[0].value, "!\"#$%&'()*+,-./09:;<>?@AZ[\\]^_`az{|}~");

	static const struct {
		const char	*in;
		int		 flags;
		const char	*why;
	} bad[] = {
		{ "<a@b> SIZE=", 0, "bad parameter" },
		{ "<a@b> =1", 0, "bad parameter" },
		{ "<a@b> -K", 0, "bad parameter" },
		{ "<a@b> K_1", 0, "bad parameter" },
		{ "<a@b> K=a=b", 0, "bad parameter" },
		{ "<a@b> K==", 0, "bad parameter" },
		{ "<a@b> K=\x7f", 0, "bad parameter" },
		{ "<a@b> K=a\tb", 0, "bad parameter" },
		{ "<a@b> K\t=1", 0, "bad parameter" },
		{ "<a@b> K=\xc3\xa9", 0, "bad parameter" },
		{ "<a@b> K=\xc3", U, "bad parameter" },
		{ "<a@b> K=\xc0\xaf", U, "bad parameter" },
		{ "<a@b> \xc3\xa9=1", U, "bad parameter" },
		{ "<a@b> K=\r\n", 0, "bad parameter" },
		{ "<a@b>SIZE=1", 0, "bad parameter" },
		{ "<a@b> SIZE=1 size=2", 0, "duplicate parameter" },
		{ "<a@b> BODY=7BIT X=1 Body", 0, "duplicate parameter" },
	};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		snprintf(line, sizeof(line), "%s", bad[k].in);
		why = NULL;
		CHECK_MSG(proto_parse_path(line, bad[k].flags, &p, &why) == -1,
		    "parameter case %zu rejected", k);
		CHECK_STR(why, bad[k].why);
	}

	/* UTF-8 values with the flag (RFC 6531 3.3); the address stays ASCII */
	snprintf(line, sizeof(line), "<a@b> ORCPT=rfc822;j\xc3\xb6rg@x");
	CHECK(proto_parse_path(line, U, &p, &why) == 0);
	CHECK_STR(p.params[0].value, "rfc822;j\xc3\xb6rg@x");
	CHECK(!p.utf8);

	/* SMTP_PARAMS_MAX parameters, then one more */
	snprintf(line, sizeof(line), "<a@b>");
	for (i = 0; i < SMTP_PARAMS_MAX; i++) {
		snprintf(frag, sizeof(frag), " P%d=%d", i, i);
		strcat(line, frag);
	}
	CHECK(proto_parse_path(line, 0, &p, &why) == 0);
	CHECK_INT(p.nparams, SMTP_PARAMS_MAX);
	CHECK_STR(p.params[SMTP_PARAMS_MAX - 1].key, "P15");
	CHECK_STR(p.params[SMTP_PARAMS_MAX - 1].value, "15");
	snprintf(line, sizeof(line), "<a@b>");
	for (i = 0; i <= SMTP_PARAMS_MAX; i++) {
		snprintf(frag, sizeof(frag), " P%d", i);
		strcat(line, frag);
	}
	CHECK(proto_parse_path(line, 0, &p, &why) == -1);
	CHECK_STR(why, "too many parameters");
}

/* The parse happens in place: the strings point into the caller's line. */
static void
test_in_place(void)
{
	struct smtp_path	 p;
	const char		*why;
	char			 line[128];

	snprintf(line, sizeof(line), "<@r.example:u@d.example> K=v");
	CHECK(proto_parse_path(line, 0, &p, &why) == 0);
	CHECK(p.address >= line && p.address < line + sizeof(line));
	CHECK(p.domain >= line && p.domain < line + sizeof(line));
	CHECK(p.params[0].key >= line && p.params[0].key < line + sizeof(line));
	CHECK(p.local == p.local_buf);
	/* a second parse into another struct leaves the first intact */
	{
		struct smtp_path	q;
		char			line2[64];

		snprintf(line2, sizeof(line2), "<x@y>");
		CHECK(proto_parse_path(line2, 0, &q, &why) == 0);
		CHECK_STR(p.local, "u");
		CHECK_STR(q.local, "x");
	}
}

static void
test_helo(void)
{
	static const char *good[] = {
		"mail.example.org", "localhost", "EXAMPLE", "host_name.example",
		"a-b.example", "192.0.2.1", "[192.0.2.1]", "[IPv6:2001:db8::1]",
		"[ipv6:::1]", "[x-tag:stuff]", "xn--bcher-kva.example", "a",
		"0.example",
		/* bare IPv6, as real clients send it (Postfix takes it too) */
		"2001:db8::1", "::1", "fe80::1", "2001:DB8:0:0:8:800:200C:417A",
		"::ffff:192.0.2.1",
	};
	static const char *bad[] = {
		"", " ", "mail example", " mail.example", "mail.example ",
		"mail.example.", ".mail.example", "mail..example", "-mail.example",
		"mail-.example", "[192.0.2.1", "192.0.2.1]", "[192.0.2.1]x",
		"[300.0.2.1]", "[IPv6:zz]", "[]", "mail\texample", "mail\r",
		"mail\n", "a@b", "<mail.example>", "mail/example", "mail\x7f",
		"b\303\274cher.example",
		"2001:db8::zz", ":", "::1::2", "2001:db8::1]", "fe80::1%eth0",
		"IPv6:2001:db8::1", "2001:db8::1 x",
	};
	char	buf[600];
	size_t	i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK_MSG(proto_valid_helo(good[i], false), "HELO \"%s\" valid", good[i]);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_MSG(!proto_valid_helo(bad[i], false), "HELO \"%s\" invalid", bad[i]);
	CHECK(!proto_valid_helo(NULL, false));
	CHECK(proto_valid_helo("b\xc3\xbc" "cher.example", true));
	CHECK(proto_valid_helo("\xe4\xbe\x8b\xe3\x81\x88.\xe3\x83\x86\xe3\x82\xb9\xe3\x83\x88",
	    true));
	CHECK(!proto_valid_helo("b\xc3" "cher.example", true));
	CHECK(!proto_valid_helo("\xed\xa0\x80.example", true));
	CHECK(!proto_valid_helo("[\xc3\xa9]", true));
	/* lengths: label 63 / 64, name 255 / 256 */
	CHECK(proto_valid_helo(domain_of(buf, 255), false));
	CHECK(!proto_valid_helo(domain_of(buf, 256), false));
	CHECK(proto_valid_helo(repeat(buf, 'h', 63), false));
	CHECK(!proto_valid_helo(repeat(buf, 'h', 64), false));
}

static void
test_skip_prefix(void)
{
	const char	*line = "MAIL FROM:<a@b>";

	CHECK_STR(proto_skip_prefix(line, "MAIL FROM:"), "<a@b>");
	CHECK_STR(proto_skip_prefix("mail from:<a@b>", "MAIL FROM:"), "<a@b>");
	CHECK_STR(proto_skip_prefix("Rcpt To: <a@b>", "RCPT TO:"), " <a@b>");
	CHECK_STR(proto_skip_prefix("DATA", "DATA"), "");
	CHECK_STR(proto_skip_prefix("DATA", ""), "DATA");
	CHECK(proto_skip_prefix("MAIL FRO", "MAIL FROM:") == NULL);
	CHECK(proto_skip_prefix("MAIL TO:", "MAIL FROM:") == NULL);
	CHECK(proto_skip_prefix("", "QUIT") == NULL);
	CHECK(proto_skip_prefix(NULL, "QUIT") == NULL);
}

/* DSN parameters (RFC 3461): parsed by proto_parse_path, then checked and decoded. */
static int
dsn(const char *in, bool rcpt, struct smtp_path *p, char *line, size_t cap)
{
	const char *why;

	snprintf(line, cap, "%s", in);
	if (proto_parse_path(line, 0, p, &why) == -1)
		return -2;
	return proto_dsn_params(p, rcpt, &why);
}

static void
test_dsn(void)
{
	static const struct { const char *in; bool rcpt; int rc; const char *key, *value; } cases[] = {
		{ "<a@b.example> RET=full", false, 0, "RET", "FULL" },
		{ "<a@b.example> RET=HDRS", false, 0, "RET", "HDRS" },
		{ "<a@b.example> RET=BODY", false, -1, NULL, NULL },
		{ "<a@b.example> RET", false, -1, NULL, NULL },
		{ "<a@b.example> ENVID=QQ+2B314+3D+20x", false, -1, NULL, NULL },	/* space */
		{ "<a@b.example> ENVID=QQ+2B314+3Dx", false, 0, "ENVID", "QQ+314=x" },
		{ "<a@b.example> ENVID=+2b", false, -1, NULL, NULL },	/* lower-case hex */
		{ "<a@b.example> ENVID=+2", false, -1, NULL, NULL },
		{ "<a@b.example> ENVID=+00", false, -1, NULL, NULL },	/* NUL */
		{ "<a@b.example> ENVID=+0A", false, -1, NULL, NULL },
		{ "<a@b.example> ENVID=+7F", false, -1, NULL, NULL },
		{ "<a@b.example> ENVID=+C3+A9", false, -1, NULL, NULL },	/* non-ASCII */
		{ "<a@b.example> NOTIFY=NEVER", false, 0, "NOTIFY", "NEVER" },	/* not MAIL's: left */
		{ "<a@b.example> NOTIFY=never", true, 0, "NOTIFY", "NEVER" },
		{ "<a@b.example> NOTIFY=success,Failure,DELAY", true, 0, "NOTIFY", "SUCCESS,FAILURE,DELAY" },
		{ "<a@b.example> NOTIFY=DELAY", true, 0, "NOTIFY", "DELAY" },
		{ "<a@b.example> NOTIFY=NEVER,SUCCESS", true, -1, NULL, NULL },
		{ "<a@b.example> NOTIFY=SUCCESS,SUCCESS", true, -1, NULL, NULL },
		{ "<a@b.example> NOTIFY=SUCCESS,", true, -1, NULL, NULL },
		{ "<a@b.example> NOTIFY=,SUCCESS", true, -1, NULL, NULL },
		{ "<a@b.example> NOTIFY=SOMETIMES", true, -1, NULL, NULL },
		{ "<a@b.example> ORCPT=rfc822;bob+2Bx@b.example", true, 0, "ORCPT", "RFC822;bob+x@b.example" },
		{ "<a@b.example> ORCPT=rfc822;+22a+20b+22@b.example", true, 0, "ORCPT", "RFC822;\"a b\"@b.example" },
		{ "<a@b.example> ORCPT=rfc822;", true, -1, NULL, NULL },
		{ "<a@b.example> ORCPT=;a@b.example", true, -1, NULL, NULL },
		{ "<a@b.example> ORCPT=a@b.example", true, -1, NULL, NULL },
		{ "<a@b.example> ORCPT=rf(c;a@b.example", true, -1, NULL, NULL },
		{ "<a@b.example> ORCPT=rfc822;a+0D+0A@b.example", true, -1, NULL, NULL },
	};
	char			line[1200], big[1200], in[1200];
	struct smtp_path	p;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = dsn(cases[i].in, cases[i].rcpt, &p, line, sizeof(line));

		if (!CHECK(rc == cases[i].rc))
			printf("# case %zu: %s -> %d\n", i, cases[i].in, rc);
		if (rc == 0 && cases[i].key != NULL) {
			const struct smtp_param *sp = proto_param(&p, cases[i].key);

			CHECK(sp != NULL && sp->value != NULL &&
			    strcmp(sp->value, cases[i].value) == 0);
		}
	}
	/* bounds: ENVID 100 characters of xtext, ORCPT 500 */
	memset(big, 'e', 100);
	snprintf(in, sizeof(in), "<a@b.example> ENVID=%.100s", big);
	CHECK(dsn(in, false, &p, line, sizeof(line)) == 0);
	snprintf(in, sizeof(in), "<a@b.example> ENVID=%.100sf", big);
	CHECK(dsn(in, false, &p, line, sizeof(line)) == -1);
	memset(big, 'o', 493);
	snprintf(in, sizeof(in), "<a@b.example> ORCPT=rfc822;%.493s", big);
	CHECK(dsn(in, true, &p, line, sizeof(line)) == 0);
	snprintf(in, sizeof(in), "<a@b.example> ORCPT=rfc822;%.493so", big);
	CHECK(dsn(in, true, &p, line, sizeof(line)) == -1);
	/* xtext on its own */
	snprintf(line, sizeof(line), "%s", "a+2Bb");
	CHECK(proto_xtext_decode(line, false) == 3 && strcmp(line, "a+b") == 0);
	snprintf(line, sizeof(line), "%s", "a=b");
	CHECK(proto_xtext_decode(line, false) == -1);
	snprintf(line, sizeof(line), "%s", "+20");
	CHECK(proto_xtext_decode(line, false) == -1);
	snprintf(line, sizeof(line), "%s", "+20");
	CHECK(proto_xtext_decode(line, true) == 1);
}

int
main(void)
{
	test_path_table();
	test_bounds();
	test_params();
	test_in_place();
	test_helo();
	test_skip_prefix();
	test_dsn();
	return tap_done();
}
