/*
 * proxy.h -- the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2) and lists of trusted networks.
 *
 * Pure parsing: no sockets, no allocation.  conn.c feeds proxy_parse() the
 * octets a trusted listener received before the greeting and learns the
 * client's address; the engine (XCLIENT) and server.c match addresses
 * against a struct proxy_nets.  Everything is bounded: a version 1 line is
 * at most PROXY_V1_MAX octets with its CRLF, a version 2 header at most
 * PROXY_HEADER_MAX octets with its TLVs.
 */
#ifndef LUASMTPD_PROXY_H
#define LUASMTPD_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROXY_V1_MAX		107	/* "PROXY TCP6 ... 65535 65535\r\n" */
#define PROXY_V2_FIXED		16	/* signature, version/command, family, length */
#define PROXY_V2_LEN_MAX	2048	/* addresses and TLVs we accept */
#define PROXY_HEADER_MAX	(PROXY_V2_FIXED + PROXY_V2_LEN_MAX)
#define PROXY_ADDR_MAX		46	/* INET6_ADDRSTRLEN */
#define PROXY_NETS_MAX		16

/* What a complete header says. */
struct proxy_header {
	int		version;	/* 1 or 2 */
	bool		known;		/* false: UNKNOWN, LOCAL, UNSPEC, UNIX: keep the real peer */
	int		family;		/* AF_INET or AF_INET6 when known */
	char		src_addr[PROXY_ADDR_MAX];	/* the client */
	uint16_t	src_port;
	char		dst_addr[PROXY_ADDR_MAX];	/* the address it connected to */
	uint16_t	dst_port;
};

/*
 * Reads a header at the start of buf[0..len).  Returns the header's length
 * (> 0, *h filled), 0 when more octets are needed (every octet given so far
 * belongs to the header then: none of them is the client's), or -1 with a
 * reason in *why when this is no valid header (or one over the bounds).
 * Input that cannot start a header is refused at its first octet.
 */
int	proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *h,
	    const char **why);

/* One network: an address and a prefix length. */
struct proxy_net {
	uint8_t		family;		/* 4 or 6 */
	uint8_t		bits;
	uint8_t		addr[16];
};

struct proxy_nets {
	size_t			n;
	struct proxy_net	net[PROXY_NETS_MAX];
};

/*
 * Adds "192.0.2.0/24", "2001:db8::/32" or a single address.  -1 if it is
 * not one, or the list is full.
 */
int	proxy_nets_add(struct proxy_nets *nets, const char *cidr);
/* Is the numeric address in one of the networks (an IPv4-mapped IPv6 address as IPv4)? */
bool	proxy_nets_match(const struct proxy_nets *nets, const char *addr);
/* The same for an address in network order: family 4 (4 octets) or 6 (16). */
bool	proxy_nets_match_bin(const struct proxy_nets *nets, int family,
	    const uint8_t *addr);

/* A listener's PROXY settings: server:listen(port, host, {proxy = true, ...}). */
struct proxy_listen {
	bool			on;
	unsigned		timeout_ms;	/* for the whole header, from the accept */
	struct proxy_nets	from;		/* the sources trusted to send one */
};

#define PROXY_TIMEOUT_DEFAULT_MS	5000

#endif
