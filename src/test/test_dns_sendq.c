/*
 * test_dns_sendq.c -- dns_sendq.c, c-ares's socket functions, on loopback
 * UDP and TCP sockets: queries held between hold and flush and sent then,
 * in order; TCP writes, an overflow and an oversized query never held; a
 * closed socket's held queries dropped; answers read ahead by recvmmsg and
 * handed out one by one, then "try again", however many were queued.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "dns_sendq.h"
#include "tap.h"

static struct dns_sendq sq;
#define F	dns_sendq_funcs

/* a UDP socket bound to 127.0.0.1, any port; its address in *sin */
static int
udp_peer(struct sockaddr_in *sin)
{
	socklen_t	 len = sizeof(*sin);
	int		 fd = socket(AF_INET, SOCK_DGRAM, 0);

	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)sin, sizeof(*sin));
	getsockname(fd, (struct sockaddr *)sin, &len);
	return fd;
}

static ares_ssize_t
send_str(ares_socket_t fd, const char *s)
{
	struct iovec iov[2];
	size_t half = strlen(s) / 2;

	/* two pieces, as c-ares may write a query */
	iov[0].iov_base = (void *)s;
	iov[0].iov_len = half;
	iov[1].iov_base = (void *)(s + half);
	iov[1].iov_len = strlen(s) - half;
	return F.asendv(fd, iov, 2, &sq);
}

/* the next datagram at fd within a second, as a string ("" if none) */
static const char *
next_datagram(int fd, int wait_ms)
{
	static char	 buf[4096];
	struct pollfd	 p = { fd, POLLIN, 0 };
	ssize_t		 n;

	if (poll(&p, 1, wait_ms) != 1)
		return "";
	if ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) < 0)
		return "";
	buf[n] = '\0';
	return buf;
}

static void
test_held_udp(void)
{
	struct sockaddr_in	 sin;
	int			 peer = udp_peer(&sin);
	ares_socket_t		 fd = F.asocket(AF_INET, SOCK_DGRAM, 0, &sq);
	char			 big[SENDQ_LEN + 2];
	int			 i;

	CHECK(fd != ARES_SOCKET_BAD);
	CHECK_INT(F.aconnect(fd, (struct sockaddr *)&sin, sizeof(sin), &sq), 0);

	CHECK_INT(send_str(fd, "not held"), 8);
	CHECK_STR(next_datagram(peer, 1000), "not held");

	dns_sendq_hold(&sq);
	CHECK_INT(send_str(fd, "query one"), 9);
	CHECK_INT(send_str(fd, "query two"), 9);
	CHECK_INT(send_str(fd, "query three"), 11);
	CHECK_STR(next_datagram(peer, 0), "");		/* held */
	dns_sendq_flush(&sq);
	CHECK_STR(next_datagram(peer, 1000), "query one");
	CHECK_STR(next_datagram(peer, 1000), "query two");
	CHECK_STR(next_datagram(peer, 1000), "query three");
	CHECK_STR(next_datagram(peer, 0), "");

	/* longer than a held query may be: out at once */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	dns_sendq_hold(&sq);
	CHECK_INT(send_str(fd, big), SENDQ_LEN + 1);
	CHECK_INT((int)strlen(next_datagram(peer, 1000)), SENDQ_LEN + 1);
	dns_sendq_flush(&sq);

	/* more than SENDQ_MAX: the rest out at once, none lost, in all */
	dns_sendq_hold(&sq);
	for (i = 0; i < SENDQ_MAX + 3; i++) {
		char q[16];

		snprintf(q, sizeof(q), "q%d", i);
		CHECK_INT(send_str(fd, q), (int)strlen(q));
	}
	CHECK_STR(next_datagram(peer, 1000), "q32");	/* the overflow went first */
	dns_sendq_flush(&sq);
	{
		int got = 0;

		while (next_datagram(peer, 200)[0] != '\0')
			got++;
		CHECK_INT(got, SENDQ_MAX + 2);
	}

	/* closed with queries held: they go with it */
	dns_sendq_hold(&sq);
	CHECK_INT(send_str(fd, "dropped"), 7);
	CHECK_INT(F.aclose(fd, &sq), 0);
	dns_sendq_flush(&sq);
	CHECK_STR(next_datagram(peer, 100), "");
	close(peer);
}

static void
test_tcp_never_held(void)
{
	struct sockaddr_in	 sin;
	socklen_t		 len = sizeof(sin);
	int			 lst = socket(AF_INET, SOCK_STREAM, 0), acc;
	ares_socket_t		 fd;
	struct pollfd		 p;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(lst, (struct sockaddr *)&sin, sizeof(sin));
	listen(lst, 1);
	getsockname(lst, (struct sockaddr *)&sin, &len);
	fd = F.asocket(AF_INET, SOCK_STREAM, 0, &sq);
	CHECK(fd != ARES_SOCKET_BAD);
	F.aconnect(fd, (struct sockaddr *)&sin, sizeof(sin), &sq);	/* in progress */
	p.fd = fd;
	p.events = POLLOUT;
	CHECK_INT(poll(&p, 1, 1000), 1);
	acc = accept(lst, NULL, NULL);
	dns_sendq_hold(&sq);
	CHECK_INT(send_str(fd, "tcp query"), 9);
	CHECK_STR(next_datagram(acc, 1000), "tcp query");
	dns_sendq_flush(&sq);
	F.aclose(fd, &sq);
	close(acc);
	close(lst);
}

static void
test_read_ahead(void)
{
	struct sockaddr_in	 sin, me, from;
	socklen_t		 len = sizeof(me);
	ares_socklen_t		 fromlen;
	int			 peer = udp_peer(&sin), i;
	ares_socket_t		 fd = F.asocket(AF_INET, SOCK_DGRAM, 0, &sq);
	char			 buf[64];
	ares_ssize_t		 n;

	F.aconnect(fd, (struct sockaddr *)&sin, sizeof(sin), &sq);
	getsockname(fd, (struct sockaddr *)&me, &len);

	errno = 0;
	CHECK_INT((int)F.arecvfrom(fd, buf, sizeof(buf), 0, NULL, NULL, &sq), -1);
	CHECK_INT(errno, EAGAIN);

	/* more than one recvmmsg takes: all handed out, in order, then EAGAIN */
	for (i = 0; i < RECVQ_MAX + 2; i++) {
		snprintf(buf, sizeof(buf), "answer %d", i);
		sendto(peer, buf, strlen(buf), 0, (struct sockaddr *)&me, sizeof(me));
	}
	{
		struct pollfd p = { fd, POLLIN, 0 };

		CHECK_INT(poll(&p, 1, 1000), 1);
	}
	for (i = 0; i < RECVQ_MAX + 2; i++) {
		char want[32];

		fromlen = sizeof(from);
		memset(&from, 0, sizeof(from));
		n = F.arecvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &fromlen, &sq);
		snprintf(want, sizeof(want), "answer %d", i);
		buf[n > 0 ? n : 0] = '\0';
		CHECK_STR(buf, want);
		CHECK_INT((int)fromlen, (int)sizeof(sin));
		CHECK(from.sin_port == sin.sin_port);
	}
	errno = 0;
	CHECK_INT((int)F.arecvfrom(fd, buf, sizeof(buf), 0, NULL, NULL, &sq), -1);
	CHECK_INT(errno, EAGAIN);

	/* one more later: read, then EAGAIN again; a short buffer cuts it */
	sendto(peer, "late answer", 11, 0, (struct sockaddr *)&me, sizeof(me));
	{
		struct pollfd p = { fd, POLLIN, 0 };

		CHECK_INT(poll(&p, 1, 1000), 1);
	}
	CHECK_INT((int)F.arecvfrom(fd, buf, 4, 0, NULL, NULL, &sq), 4);
	CHECK(memcmp(buf, "late", 4) == 0);
	errno = 0;
	CHECK_INT((int)F.arecvfrom(fd, buf, sizeof(buf), 0, NULL, NULL, &sq), -1);
	CHECK_INT(errno, EAGAIN);

	/* closed with answers read ahead: a new socket on the same number starts empty */
	sendto(peer, "a1", 2, 0, (struct sockaddr *)&me, sizeof(me));
	sendto(peer, "a2", 2, 0, (struct sockaddr *)&me, sizeof(me));
	{
		struct pollfd p = { fd, POLLIN, 0 };

		CHECK_INT(poll(&p, 1, 1000), 1);
	}
	CHECK_INT((int)F.arecvfrom(fd, buf, sizeof(buf), 0, NULL, NULL, &sq), 2);
	F.aclose(fd, &sq);
	fd = F.asocket(AF_INET, SOCK_DGRAM, 0, &sq);
	F.aconnect(fd, (struct sockaddr *)&sin, sizeof(sin), &sq);
	errno = 0;
	CHECK_INT((int)F.arecvfrom(fd, buf, sizeof(buf), 0, NULL, NULL, &sq), -1);
	CHECK_INT(errno, EAGAIN);
	F.aclose(fd, &sq);
	close(peer);
}

int
main(void)
{
	dns_sendq_init(&sq, 1 << 20);
	test_held_udp();
	test_tcp_never_held();
	test_read_ahead();
	return tap_done();
}
