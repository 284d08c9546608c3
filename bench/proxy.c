/*
 * bench/proxy.c -- the CPU cost of a PROXY protocol header per connection.
 *
 * Figures per header (v1 TCP4, v2 TCP4, v2 TCP6 with TLVs as HAProxy
 * sends them with send-proxy-v2-ssl): proxy_parse() alone, and what conn.c
 * does at the accept for a header already in, on a loopback TCP connection
 * the header was written to (the write is not counted): on a plain listener
 * one recv onto the stack and the parse; on an implicit-TLS one a
 * recv(MSG_PEEK), the parse and the recv that takes exactly the header.
 * Then the cost of a miss (the header not in yet): one recv that finds
 * nothing (EAGAIN), after which conn.c waits as before.  CPU
 * time of this thread (CLOCK_THREAD_CPUTIME_ID), so a loaded machine makes
 * it slower, not wrong by much; bench/proxy.sh also counts instructions with
 * callgrind, which a loaded machine does not change.
 *
 *	cc -O2 -D_GNU_SOURCE -Isrc/engine bench/proxy.c src/engine/proxy.c -o proxy-bench && ./proxy-bench [N [v1|v2|v6]]
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy.h"

static double
cpu_now(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t
v2(uint8_t *b, uint8_t fam, const uint8_t *body, size_t blen)
{
	static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
	    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

	memcpy(b, sig, 12);
	b[12] = 0x21;
	b[13] = fam;
	b[14] = (uint8_t)(blen >> 8);
	b[15] = (uint8_t)blen;
	memcpy(b + 16, body, blen);
	return 16 + blen;
}

/* a loopback TCP connection: sv[0] writes, sv[1] (accepted, non-blocking) reads */
static void
tcp_pair(int sv[2])
{
	struct sockaddr_in	sin = { .sin_family = AF_INET };
	socklen_t		slen = sizeof(sin);
	int			l;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((l = socket(AF_INET, SOCK_STREAM, 0)) == -1 ||
	    bind(l, (struct sockaddr *)&sin, sizeof(sin)) == -1 || listen(l, 1) == -1 ||
	    getsockname(l, (struct sockaddr *)&sin, &slen) == -1 ||
	    (sv[0] = socket(AF_INET, SOCK_STREAM, 0)) == -1 ||
	    connect(sv[0], (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    (sv[1] = accept4(l, NULL, NULL, SOCK_NONBLOCK)) == -1) {
		perror("tcp_pair");
		exit(1);
	}
	close(l);
}

static void
run(const char *name, const uint8_t *hdr, size_t len, long n)
{
	struct proxy_header	 h;
	const char		*why;
	uint8_t			 buf[PROXY_HEADER_MAX];
	double			 t0, parse_us, plain_us = 0, peek_us = 0, miss_us = 0;
	long			 sink = 0, m = n / 10;
	int			 sv[2];
	ssize_t			 got;

	t0 = cpu_now();
	for (long i = 0; i < n; i++)
		sink += proxy_parse(hdr, len, &h, &why);
	parse_us = (cpu_now() - t0) / n * 1e6;
	if (sink != (long)len * n) {
		fprintf(stderr, "%s: parse failed\n", name);
		exit(1);
	}
	tcp_pair(sv);
	for (long i = 0; i < m; i++) {
		/* a plain listener: one recv onto the stack, the parse */
		if (write(sv[0], hdr, len) != (ssize_t)len)
			exit(1);
		while (recv(sv[1], buf, 1, MSG_PEEK) != 1)
			;	/* in the receive queue (loopback: at once) */
		t0 = cpu_now();
		got = recv(sv[1], buf, sizeof(buf), 0);
		if (got != (ssize_t)len || proxy_parse(buf, (size_t)got, &h, &why) != (int)len)
			exit(1);
		plain_us += cpu_now() - t0;
		/* an implicit-TLS listener: peek, parse, take exactly the header */
		if (write(sv[0], hdr, len) != (ssize_t)len)
			exit(1);
		while (recv(sv[1], buf, 1, MSG_PEEK) != 1)
			;
		t0 = cpu_now();
		got = recv(sv[1], buf, sizeof(buf), MSG_PEEK);
		if (got <= 0 || proxy_parse(buf, (size_t)got, &h, &why) != (int)len ||
		    recv(sv[1], buf, len, 0) != (ssize_t)len)
			exit(1);
		peek_us += cpu_now() - t0;
		/* a miss: nothing in yet */
		t0 = cpu_now();
		got = recv(sv[1], buf, sizeof(buf), 0);
		miss_us += cpu_now() - t0;
		if (got != -1 || errno != EAGAIN)
			exit(1);
	}
	close(sv[0]);
	close(sv[1]);
	printf("%-18s %4zu octets  parse %.3f us  recv+parse %.3f us  peek+parse+recv %.3f us  "
	    "miss (EAGAIN) %.3f us  (client %s)\n", name, len, parse_us, plain_us / m * 1e6,
	    peek_us / m * 1e6, miss_us / m * 1e6, h.src_addr);
}

int
main(int argc, char **argv)
{
	long	 n = argc > 1 ? atol(argv[1]) : 1000000;
	const char *only = argc > 2 ? argv[2] : "";
	uint8_t	 b[PROXY_HEADER_MAX], body[512];
	size_t	 len, off;
	const char *v1 = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n";

	if (!*only || strcmp(only, "v1") == 0)
		run("v1 TCP4", (const uint8_t *)v1, strlen(v1), n);
	memcpy(body, "\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19", 12);
	len = v2(b, 0x11, body, 12);
	if (!*only || strcmp(only, "v2") == 0)
		run("v2 TCP4", b, len, n);
	/* TCP6 and the TLVs of send-proxy-v2-ssl-cn: ALPN, AUTHORITY, SSL, UNIQUE_ID */
	memset(body, 0, sizeof(body));
	inet_pton(AF_INET6, "2001:db8::7", body);
	inet_pton(AF_INET6, "2001:db8::25", body + 16);
	body[32] = 0xdc, body[33] = 0x04, body[35] = 25;
	off = 36;
	memcpy(body + off, "\x01\x00\x02h2", 5), off += 5;
	memcpy(body + off, "\x02\x00\x0bmx.example\x00", 14), off += 14;
	memcpy(body + off, "\x20\x00\x1e\x07\x00\x00\x00\x00\x21\x00\x07TLSv1.3"
	    "\x22\x00\x0cmx.example.o", 33), off += 33;
	memcpy(body + off, "\x05\x00\x20", 3), off += 3;
	memset(body + off, 'u', 32), off += 32;
	len = v2(b, 0x21, body, off);
	if (!*only || strcmp(only, "v6") == 0)
		run("v2 TCP6 + 4 TLVs", b, len, n);
	return 0;
}
