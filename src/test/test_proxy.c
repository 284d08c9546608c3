/*
 * test_proxy.c -- the PROXY protocol parser (versions 1 and 2, every
 * family, each bound, input split anywhere) and trusted network lists.
 */
#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy.h"
#include "tap.h"

static int
parse(const char *s, size_t len, struct proxy_header *h, const char **why)
{
	return proxy_parse((const uint8_t *)s, len, h, why);
}

/* Every proper prefix of a good header asks for more; the whole is done. */
static void
check_prefixes(const uint8_t *buf, size_t len)
{
	struct proxy_header	 h;
	const char		*why;
	bool			 ok = true;

	for (size_t i = 0; i < len; i++)
		if (proxy_parse(buf, i, &h, &why) != 0)
			ok = false;
	CHECK(ok);
	CHECK_INT(proxy_parse(buf, len, &h, &why), (int)len);
}

static void
test_v1(void)
{
	struct proxy_header	 h;
	const char		*why;
	const char		*l4 = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n";
	const char		*l6 = "PROXY TCP6 2001:db8::0:1 ::1 65535 0\r\n";
	char			 longest[200];
	int			 n;

	n = parse(l4, strlen(l4), &h, &why);
	CHECK_INT(n, (int)(strchr(l4, '\n') - l4 + 1));
	CHECK(h.known && h.version == 1 && h.family == AF_INET);
	CHECK_STR(h.src_addr, "192.0.2.1");
	CHECK_STR(h.dst_addr, "198.51.100.2");
	CHECK_INT(h.src_port, 56324);
	CHECK_INT(h.dst_port, 25);
	check_prefixes((const uint8_t *)l4, (size_t)n);

	CHECK_INT(parse(l6, strlen(l6), &h, &why), (int)strlen(l6));
	CHECK(h.known && h.family == AF_INET6);
	CHECK_STR(h.src_addr, "2001:db8::1");	/* one spelling */
	CHECK_INT(h.src_port, 65535);
	CHECK_INT(h.dst_port, 0);

	CHECK_INT(parse("PROXY UNKNOWN\r\n", 15, &h, &why), 15);
	CHECK(!h.known && h.version == 1);
	CHECK_INT(parse("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", 31, &h, &why), 31);
	CHECK(!h.known);

	/* the longest line the spec allows is 107 octets; one more is refused */
	snprintf(longest, sizeof(longest), "PROXY TCP6 %s %s 65535 65535\r\n",
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	CHECK_INT((int)strlen(longest), 104);
	snprintf(longest, sizeof(longest), "PROXY UNKNOWN %092d\r\n", 0);
	CHECK_INT((int)strlen(longest), 108);
	CHECK_INT(parse(longest, strlen(longest), &h, &why), -1);
	CHECK_STR(why, "PROXY v1 line longer than 107 octets");
	CHECK_INT(parse(longest, 106, &h, &why), 0);	/* not known to be too long yet */
	CHECK_INT(parse(longest, 107, &h, &why), -1);
	snprintf(longest, sizeof(longest), "PROXY UNKNOWN %091d\r\n", 0);
	CHECK_INT(parse(longest, strlen(longest), &h, &why), 107);

	/* refused at the first octet that cannot belong to a header */
	CHECK_INT(parse("EHLO x\r\n", 8, &h, &why), -1);
	CHECK_STR(why, "not a PROXY protocol header");
	CHECK_INT(parse("P", 1, &h, &why), 0);
	CHECK_INT(parse("PROXX", 5, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 1.2.3.4\n", 19, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 1.2.3.4\rx", 20, &h, &why), -1);
	CHECK_STR(why, "bare CR in a PROXY v1 line");

	/* bad fields */
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n", 41, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 ::1 198.51.100.2 1 25\r\n", 34, &h, &why), -1);
	CHECK_STR(why, "bad address in a PROXY v1 line");
	CHECK_INT(parse("PROXY TCP6 192.0.2.1 ::1 1 25\r\n", 31, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 192.0.2.2 65536 25\r\n", 41, &h, &why), -1);
	CHECK_STR(why, "bad port in a PROXY v1 line");
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 192.0.2.2 025 25\r\n", 39, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 192.0.2.2 -1 25\r\n", 38, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4  192.0.2.1 192.0.2.2 1 25\r\n", 38, &h, &why), -1);
	CHECK_INT(parse("PROXY UDP4 192.0.2.1 192.0.2.2 1 25\r\n", 37, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 192.0.2.2 1 25 \r\n", 38, &h, &why), -1);
	CHECK_INT(parse("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\x01\r\n", 37, &h, &why), -1);
	CHECK_INT(parse("PROXY \r\n", 8, &h, &why), -1);
}

static size_t
v2(uint8_t *b, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t blen)
{
	static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
	    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

	memcpy(b, sig, 12);
	b[12] = ver_cmd;
	b[13] = fam;
	b[14] = (uint8_t)(blen >> 8);
	b[15] = (uint8_t)blen;
	memcpy(b + 16, body, blen);
	return 16 + blen;
}

static void
test_v2(void)
{
	struct proxy_header	 h;
	const char		*why;
	uint8_t			 b[PROXY_HEADER_MAX + 64], body[PROXY_V2_LEN_MAX + 64];
	size_t			 n;

	/* TCP4 192.0.2.1:56324 -> 198.51.100.2:25, and a TLV (PP2_TYPE_AUTHORITY) */
	memcpy(body, "\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19"
	    "\x02\x00\x03" "mx1", 18);
	n = v2(b, 0x21, 0x11, body, 18);
	CHECK_INT(proxy_parse(b, n, &h, &why), (int)n);
	CHECK(h.known && h.version == 2 && h.family == AF_INET);
	CHECK_STR(h.src_addr, "192.0.2.1");
	CHECK_STR(h.dst_addr, "198.51.100.2");
	CHECK_INT(h.src_port, 56324);
	CHECK_INT(h.dst_port, 25);
	check_prefixes(b, n);
	/* octets after the header are the client's */
	memcpy(b + n, "EHLO", 4);
	CHECK_INT(proxy_parse(b, n + 4, &h, &why), (int)n);

	/* every width of an IPv4 octet, formatted as inet_ntop does */
	memcpy(body, "\x00\x0a\x64\xff\x09\x63\xc8\x01\x00\x00\x00\x00", 12);
	n = v2(b, 0x21, 0x11, body, 12);
	CHECK_INT(proxy_parse(b, n, &h, &why), (int)n);
	CHECK_STR(h.src_addr, "0.10.100.255");
	CHECK_STR(h.dst_addr, "9.99.200.1");

	/* TCP6 */
	memset(body, 0, 36);
	inet_pton(AF_INET6, "2001:db8::7", body);
	inet_pton(AF_INET6, "::1", body + 16);
	body[32] = 0x12, body[33] = 0x34, body[34] = 0, body[35] = 25;
	n = v2(b, 0x21, 0x21, body, 36);
	CHECK_INT(proxy_parse(b, n, &h, &why), (int)n);
	CHECK(h.known && h.family == AF_INET6);
	CHECK_STR(h.src_addr, "2001:db8::7");
	CHECK_STR(h.dst_addr, "::1");
	CHECK_INT(h.src_port, 0x1234);

	/* LOCAL (health checks): the real peer stays, whatever the family says */
	n = v2(b, 0x20, 0x00, body, 0);
	CHECK_INT(proxy_parse(b, n, &h, &why), 16);
	CHECK(!h.known && h.version == 2);
	n = v2(b, 0x20, 0x11, body, 3);
	CHECK_INT(proxy_parse(b, n, &h, &why), 19);
	CHECK(!h.known);

	/* UNSPEC and UNIX: not known */
	n = v2(b, 0x21, 0x00, body, 0);
	CHECK_INT(proxy_parse(b, n, &h, &why), 16);
	CHECK(!h.known);
	memset(body, 0, 216);
	n = v2(b, 0x21, 0x31, body, 216);
	CHECK_INT(proxy_parse(b, n, &h, &why), (int)n);
	CHECK(!h.known);

	/* refused */
	n = v2(b, 0x21, 0x11, body, 11);
	CHECK_INT(proxy_parse(b, n, &h, &why), -1);
	CHECK_STR(why, "PROXY v2 TCP4 address block too short");
	n = v2(b, 0x21, 0x12, body, 12);
	CHECK_INT(proxy_parse(b, n, &h, &why), -1);
	CHECK_STR(why, "PROXY v2 transport is a datagram, not a stream");
	n = v2(b, 0x31, 0x11, body, 12);
	CHECK_INT(proxy_parse(b, 13, &h, &why), -1);	/* known at octet 13 */
	CHECK_STR(why, "PROXY v2 header of an unknown version");
	n = v2(b, 0x22, 0x11, body, 12);
	CHECK_INT(proxy_parse(b, n, &h, &why), -1);
	n = v2(b, 0x21, 0x41, body, 12);
	CHECK_INT(proxy_parse(b, 14, &h, &why), -1);
	/* TLVs must tile the rest */
	memset(body, 0, 20);
	body[12] = 0x04, body[13] = 0x00, body[14] = 0x06;	/* 6 > 5 left */
	n = v2(b, 0x21, 0x11, body, 20);
	CHECK_INT(proxy_parse(b, n, &h, &why), -1);
	CHECK_STR(why, "PROXY v2 TLV longer than the header");
	n = v2(b, 0x21, 0x11, body, 14);
	CHECK_INT(proxy_parse(b, n, &h, &why), -1);
	CHECK_STR(why, "PROXY v2 TLV truncated");
	/* the bound: 2048 octets of addresses and TLVs, no more */
	memset(body, 0, sizeof(body));
	body[12] = 0xee;
	body[13] = (uint8_t)((PROXY_V2_LEN_MAX - 15) >> 8);
	body[14] = (uint8_t)(PROXY_V2_LEN_MAX - 15);
	n = v2(b, 0x21, 0x11, body, PROXY_V2_LEN_MAX);
	CHECK_INT(proxy_parse(b, n, &h, &why), PROXY_HEADER_MAX);
	n = v2(b, 0x21, 0x11, body, PROXY_V2_LEN_MAX + 1);
	CHECK_INT(proxy_parse(b, 16, &h, &why), -1);	/* known from the length */
	CHECK_STR(why, "PROXY v2 header longer than 2064 octets");
	/* a damaged signature */
	n = v2(b, 0x21, 0x11, body, 12);
	b[5] = 0x0c;
	CHECK_INT(proxy_parse(b, 6, &h, &why), -1);
	CHECK_INT(proxy_parse(b, 5, &h, &why), 0);
}

static void
test_nets(void)
{
	struct proxy_nets	nets;

	memset(&nets, 0, sizeof(nets));
	CHECK(!proxy_nets_match(&nets, "127.0.0.1"));
	CHECK_INT(proxy_nets_add(&nets, "10.0.0.0/8"), 0);
	CHECK_INT(proxy_nets_add(&nets, "127.0.0.1"), 0);
	CHECK_INT(proxy_nets_add(&nets, "2001:db8::/33"), 0);
	CHECK_INT(proxy_nets_add(&nets, "192.0.2.128/25"), 0);
	CHECK(proxy_nets_match(&nets, "10.255.1.2"));
	CHECK(!proxy_nets_match(&nets, "11.0.0.1"));
	CHECK(proxy_nets_match(&nets, "127.0.0.1"));
	CHECK(!proxy_nets_match(&nets, "127.0.0.2"));
	CHECK(proxy_nets_match(&nets, "::ffff:10.1.1.1"));
	CHECK(proxy_nets_match(&nets, "2001:db8:7fff::1"));
	CHECK(!proxy_nets_match(&nets, "2001:db8:8000::1"));
	CHECK(proxy_nets_match(&nets, "192.0.2.200"));
	CHECK(!proxy_nets_match(&nets, "192.0.2.127"));
	CHECK(!proxy_nets_match(&nets, "unknown"));
	CHECK(!proxy_nets_match(NULL, "10.0.0.1"));
	CHECK(proxy_nets_match_bin(&nets, 4, (const uint8_t *)"\x0a\x01\x02\x03"));
	CHECK(!proxy_nets_match_bin(&nets, 4, (const uint8_t *)"\x0b\x01\x02\x03"));
	CHECK(proxy_nets_match_bin(&nets, 6, (const uint8_t *)
	    "\0\0\0\0\0\0\0\0\0\0\xff\xff\x0a\x01\x02\x03"));	/* mapped */
	CHECK(!proxy_nets_match_bin(&nets, 5, (const uint8_t *)"\x0a\x01\x02\x03"));
	CHECK_INT(proxy_nets_add(&nets, "10.0.0.0/33"), -1);
	CHECK_INT(proxy_nets_add(&nets, "::/129"), -1);
	CHECK_INT(proxy_nets_add(&nets, "10.0.0.0/"), -1);
	CHECK_INT(proxy_nets_add(&nets, "10.0.0.0/8x"), -1);
	CHECK_INT(proxy_nets_add(&nets, "example.org"), -1);
	CHECK_INT(proxy_nets_add(&nets, "/8"), -1);
	CHECK_INT(proxy_nets_add(&nets, "0.0.0.0/0"), 0);
	CHECK(proxy_nets_match(&nets, "11.0.0.1"));
	while (nets.n < PROXY_NETS_MAX)
		CHECK_INT(proxy_nets_add(&nets, "::1"), 0);
	CHECK_INT(proxy_nets_add(&nets, "::1"), -1);
}

int
main(void)
{
	test_v1();
	test_v2();
	test_nets();
	return tap_done();
}
