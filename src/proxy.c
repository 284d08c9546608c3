/*
 * proxy.c -- the PROXY protocol header, versions 1 and 2, and trusted
 * network lists (proxy.h).
 *
 * Owns nothing but its arguments: no sockets, no allocation, every loop
 * bounded by PROXY_V1_MAX or PROXY_HEADER_MAX.  Follows HAProxy's
 * doc/proxy-protocol.txt: a version 1 line is "PROXY" SP ("TCP4" | "TCP6")
 * SP src SP dst SP sport SP dport CRLF (or "PROXY UNKNOWN" ... CRLF); a
 * version 2 header is the 12-octet signature, version/command, family and
 * a 16-bit length of addresses and TLVs.
 */
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy.h"

static const uint8_t v2_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};
static const char v1_sig[] = "PROXY ";

static int	parse_v1(const uint8_t *, size_t, struct proxy_header *, const char **);
static int	parse_v2(const uint8_t *, size_t, struct proxy_header *, const char **);
static int	v1_port(const char *, uint16_t *);
static void	ntop4(const uint8_t *, char *);

static int
fail(const char **why, const char *reason)
{
	*why = reason;
	return -1;
}

int
proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *h,
    const char **why)
{
	size_t	n;

	memset(h, 0, sizeof(*h));
	*why = NULL;
	if (len == 0)
		return 0;
	if (buf[0] == v2_sig[0]) {
		n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
		if (memcmp(buf, v2_sig, n) != 0)
			return fail(why, "not a PROXY protocol header");
		return parse_v2(buf, len, h, why);
	}
	n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
	if (memcmp(buf, v1_sig, n) != 0)
		return fail(why, "not a PROXY protocol header");
	return parse_v1(buf, len, h, why);
}

/* "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n" */
static int
parse_v1(const uint8_t *buf, size_t len, struct proxy_header *h, const char **why)
{
	char		 line[PROXY_V1_MAX + 1], *f[6], *p;
	uint8_t		 a[16];
	size_t		 i, end, nf;
	int		 af;

	if (len > PROXY_V1_MAX)
		len = PROXY_V1_MAX;
	for (end = 0; end < len; end++) {
		if (buf[end] == '\r')
			break;
		if (buf[end] < 0x20 || buf[end] > 0x7e)
			return fail(why, "control or non-ASCII octet in a PROXY v1 line");
	}
	if (end == len)
		return len == PROXY_V1_MAX ?
		    fail(why, "PROXY v1 line longer than 107 octets") : 0;
	if (end + 1 == len)
		return end + 2 > PROXY_V1_MAX ?
		    fail(why, "PROXY v1 line longer than 107 octets") : 0;
	if (buf[end + 1] != '\n')
		return fail(why, "bare CR in a PROXY v1 line");
	memcpy(line, buf, end);
	line[end] = '\0';
	h->version = 1;
	/* fields split on single spaces: "PROXY" proto [src dst sport dport] */
	for (nf = 0, p = line; nf < 6; nf++) {
		f[nf] = p;
		if ((p = strchr(p, ' ')) == NULL) {
			nf++;
			break;
		}
		*p++ = '\0';
	}
	if (nf >= 2 && strcmp(f[1], "UNKNOWN") == 0)
		return (int)end + 2;	/* whatever follows: keep the real peer */
	if (p != NULL || nf != 6)
		return fail(why, "PROXY v1 line without 6 fields");
	for (i = 0; i < nf; i++)
		if (f[i][0] == '\0')
			return fail(why, "empty field in a PROXY v1 line");
	if (strcmp(f[1], "TCP4") == 0)
		af = AF_INET;
	else if (strcmp(f[1], "TCP6") == 0)
		af = AF_INET6;
	else
		return fail(why, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
	if (inet_pton(af, f[2], a) != 1 || inet_pton(af, f[3], a) != 1)
		return fail(why, "bad address in a PROXY v1 line");
	if (v1_port(f[4], &h->src_port) == -1 || v1_port(f[5], &h->dst_port) == -1)
		return fail(why, "bad port in a PROXY v1 line");
	/* the addresses as inet_ntop writes them: one spelling per address */
	(void)inet_pton(af, f[2], a);
	if (af == AF_INET)
		ntop4(a, h->src_addr);
	else
		inet_ntop(af, a, h->src_addr, sizeof(h->src_addr));
	(void)inet_pton(af, f[3], a);
	if (af == AF_INET)
		ntop4(a, h->dst_addr);
	else
		inet_ntop(af, a, h->dst_addr, sizeof(h->dst_addr));
	h->family = af;
	h->known = true;
	return (int)end + 2;
}

/* inet_ntop for IPv4 without printf: a header is parsed per connection */
static void
ntop4(const uint8_t *a, char *out)
{
	for (int i = 0; i < 4; i++) {
		unsigned v = a[i];

		if (v >= 100)
			*out++ = (char)('0' + v / 100);
		if (v >= 10)
			*out++ = (char)('0' + v / 10 % 10);
		*out++ = (char)('0' + v % 10);
		*out++ = i < 3 ? '.' : '\0';
	}
}

/* 0 to 65535, no sign, no leading zero */
static int
v1_port(const char *s, uint16_t *port)
{
	unsigned long	v = 0;
	size_t		n = strlen(s);

	if (n == 0 || n > 5 || (s[0] == '0' && n > 1))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static int
parse_v2(const uint8_t *buf, size_t len, struct proxy_header *h, const char **why)
{
	size_t		 body, need, off, alen;
	uint8_t		 ver_cmd, fam;

	if (len >= 13) {
		ver_cmd = buf[12];
		if ((ver_cmd >> 4) != 2)
			return fail(why, "PROXY v2 header of an unknown version");
		if ((ver_cmd & 0x0f) > 1)
			return fail(why, "PROXY v2 command is not LOCAL or PROXY");
	}
	if (len >= 14) {
		fam = buf[13];
		if ((fam >> 4) > 3 || (fam & 0x0f) > 2)
			return fail(why, "PROXY v2 family or transport unknown");
	}
	if (len < PROXY_V2_FIXED)
		return 0;
	body = (size_t)buf[14] << 8 | buf[15];
	if (body > PROXY_V2_LEN_MAX)
		return fail(why, "PROXY v2 header longer than 2064 octets");
	need = PROXY_V2_FIXED + body;
	if (len < need)
		return 0;
	h->version = 2;
	ver_cmd = buf[12];
	fam = buf[13];
	if ((ver_cmd & 0x0f) == 0)	/* LOCAL: the proxy's own connection */
		return (int)need;
	if ((fam & 0x0f) == 2)
		return fail(why, "PROXY v2 transport is a datagram, not a stream");
	switch (fam >> 4) {
	case 1:		/* AF_INET: 4 + 4 + 2 + 2 */
		if ((fam & 0x0f) != 1 || body < (alen = 12))
			return fail(why, "PROXY v2 TCP4 address block too short");
		h->family = AF_INET;
		ntop4(buf + 16, h->src_addr);
		ntop4(buf + 20, h->dst_addr);
		h->src_port = (uint16_t)(buf[24] << 8 | buf[25]);
		h->dst_port = (uint16_t)(buf[26] << 8 | buf[27]);
		h->known = true;
		break;
	case 2:		/* AF_INET6: 16 + 16 + 2 + 2 */
		if ((fam & 0x0f) != 1 || body < (alen = 36))
			return fail(why, "PROXY v2 TCP6 address block too short");
		h->family = AF_INET6;
		inet_ntop(AF_INET6, buf + 16, h->src_addr, sizeof(h->src_addr));
		inet_ntop(AF_INET6, buf + 32, h->dst_addr, sizeof(h->dst_addr));
		h->src_port = (uint16_t)(buf[48] << 8 | buf[49]);
		h->dst_port = (uint16_t)(buf[50] << 8 | buf[51]);
		h->known = true;
		break;
	case 3:		/* AF_UNIX: 108 + 108, no address for the policy */
		if (body < (alen = 216))
			return fail(why, "PROXY v2 UNIX address block too short");
		break;
	default:	/* UNSPEC: no addresses, TLVs may follow */
		alen = 0;
		break;
	}
	/* the TLVs must tile the rest exactly; their contents are not used */
	for (off = PROXY_V2_FIXED + alen; off < need;) {
		size_t	vlen;

		if (need - off < 3)
			return fail(why, "PROXY v2 TLV truncated");
		vlen = (size_t)buf[off + 1] << 8 | buf[off + 2];
		if (vlen > need - off - 3)
			return fail(why, "PROXY v2 TLV longer than the header");
		off += 3 + vlen;
	}
	return (int)need;
}

/* --- trusted networks ------------------------------------------------------ */

int
proxy_nets_add(struct proxy_nets *nets, const char *cidr)
{
	struct proxy_net	 net;
	char			 addr[PROXY_ADDR_MAX];
	const char		*slash = strchr(cidr, '/');
	size_t			 alen = slash != NULL ? (size_t)(slash - cidr) : strlen(cidr);
	unsigned		 bits = 0, max;

	if (nets->n == PROXY_NETS_MAX || alen == 0 || alen >= sizeof(addr))
		return -1;
	memcpy(addr, cidr, alen);
	addr[alen] = '\0';
	memset(&net, 0, sizeof(net));
	if (inet_pton(AF_INET, addr, net.addr) == 1)
		net.family = 4;
	else if (inet_pton(AF_INET6, addr, net.addr) == 1)
		net.family = 6;
	else
		return -1;
	max = net.family == 4 ? 32 : 128;
	if (slash == NULL) {
		bits = max;
	} else {
		const char *p = slash + 1;

		if (*p == '\0' || strlen(p) > 3)
			return -1;
		for (; *p != '\0'; p++) {
			if (*p < '0' || *p > '9')
				return -1;
			bits = bits * 10 + (unsigned)(*p - '0');
		}
		if (bits > max)
			return -1;
	}
	net.bits = (uint8_t)bits;
	nets->net[nets->n++] = net;
	return 0;
}

static bool
prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned	whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[whole] ^ b[whole]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool
proxy_nets_match(const struct proxy_nets *nets, const char *addr)
{
	uint8_t	a[16];

	if (nets == NULL || nets->n == 0)
		return false;
	if (inet_pton(AF_INET, addr, a) == 1)
		return proxy_nets_match_bin(nets, 4, a);
	if (inet_pton(AF_INET6, addr, a) == 1)
		return proxy_nets_match_bin(nets, 6, a);
	return false;
}

bool
proxy_nets_match_bin(const struct proxy_nets *nets, int family, const uint8_t *addr)
{
	static const uint8_t	 mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	uint8_t			 a[16];

	if (nets == NULL || nets->n == 0 || (family != 4 && family != 6))
		return false;
	memcpy(a, addr, family == 4 ? 4 : 16);
	if (family == 6 && memcmp(a, mapped, sizeof(mapped)) == 0) {
		memmove(a, a + 12, 4);
		family = 4;
	}
	for (size_t i = 0; i < nets->n; i++)
		if (nets->net[i].family == family &&
		    prefix_equal(nets->net[i].addr, a, nets->net[i].bits))
			return true;
	return false;
}
