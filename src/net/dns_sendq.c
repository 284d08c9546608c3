/*
 * dns_sendq.c -- c-ares's socket functions (ares_set_socket_functions), the
 * plain system calls but for two things: between dns_sendq_hold and
 * dns_sendq_flush, a query written to a UDP socket is held, and the flush
 * sends every held one in a single sendmmsg per socket; and a read from a
 * UDP socket takes what is queued there (up to RECVQ_MAX datagrams) in one
 * recvmmsg, handing them to c-ares, which reads until "try again", one by
 * one.
 *
 * Why: smtp.dnsbl asks several zones at once.  Sent one sendto at a time,
 * the resolver wakes for the first query and answers it before the next
 * arrives, so the answers come back one by one and the worker, idle in
 * between, sleeps and wakes once per answer: most of what a DNSBL check
 * costs its CPU.  Sent together, they are queued together at the resolver,
 * answered together, and read after one wake-up, in one system call.
 *
 * c-ares keeps its protocol (ids, retries, the TCP retry of a truncated
 * answer, servers): a held query counts as written, and one that the flush
 * cannot send is a lost datagram to c-ares, which times out and retries it
 * as any other.  TCP writes are never held (c-ares writes those from the
 * event loop, and a short write there matters).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "dns_sendq.h"
#include "log.h"

static int
sock_index(const struct dns_sendq *sq, ares_socket_t fd)
{
	int i;

	for (i = 0; i < SENDQ_SOCKS; i++)
		if (sq->socks[i].fd == fd)
			return i;
	return -1;
}

static ares_socket_t
sq_socket(int domain, int type, int protocol, void *arg)
{
	struct dns_sendq	*sq = arg;
	ares_socket_t		 fd;
	int			 i;

	/*
	 * c-ares leaves a socket made here as it is: non-blocking, close on
	 * exec, the receive buffer (a burst of answers) and no delay on TCP
	 * are ours to set
	 */
	if ((fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol)) == -1)
		return ARES_SOCKET_BAD;
	if (type == SOCK_DGRAM)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sq->rcvbuf, sizeof(sq->rcvbuf));
	else if (type == SOCK_STREAM) {
		int one = 1;

		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	/* a socket not in the table (more than SENDQ_SOCKS): its writes go out at once */
	if ((i = sock_index(sq, ARES_SOCKET_BAD)) != -1) {
		sq->socks[i].fd = fd;
		sq->socks[i].udp = type == SOCK_DGRAM;
	}
	return fd;
}

/* held queries for fd: dropped (c-ares gives up on them as on a lost datagram) */
static void
drop_held(struct dns_sendq *sq, ares_socket_t fd)
{
	int i, k = 0;

	for (i = 0; i < sq->n; i++)
		if (sq->q[i].fd != fd) {
			if (k != i)
				sq->q[k] = sq->q[i];
			k++;
		}
	sq->n = k;
}

static int
sq_close(ares_socket_t fd, void *arg)
{
	struct dns_sendq	*sq = arg;
	int			 i;

	drop_held(sq, fd);
	if (sq->rfd == fd)	/* its read-ahead goes with it */
		sq->rfd = ARES_SOCKET_BAD;
	if ((i = sock_index(sq, fd)) != -1)
		sq->socks[i].fd = ARES_SOCKET_BAD;
	return close(fd);
}

static int
sq_connect(ares_socket_t fd, const struct sockaddr *sa, ares_socklen_t len, void *arg)
{
	(void)arg;
	return connect(fd, sa, len);
}

/* reads what fd holds into sq->r: 0, or -1 and errno (EAGAIN: nothing) */
static int
read_ahead(struct dns_sendq *sq, ares_socket_t fd)
{
	struct mmsghdr	 msgs[RECVQ_MAX];
	struct iovec	 iov[RECVQ_MAX];
	int		 i, n;

	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < RECVQ_MAX; i++) {
		iov[i].iov_base = sq->r[i].buf;
		iov[i].iov_len = sizeof(sq->r[i].buf);
		msgs[i].msg_hdr.msg_name = &sq->r[i].from;
		msgs[i].msg_hdr.msg_namelen = sizeof(sq->r[i].from);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	if ((n = recvmmsg(fd, msgs, RECVQ_MAX, MSG_DONTWAIT, NULL)) == -1)
		return -1;
	for (i = 0; i < n; i++) {
		sq->r[i].fromlen = msgs[i].msg_hdr.msg_namelen;
		sq->r[i].len = msgs[i].msg_len;
	}
	sq->rfd = fd;
	sq->rnext = 0;
	sq->rn = n;
	sq->rdrained = n < RECVQ_MAX;
	return 0;
}

static ares_ssize_t
sq_recvfrom(ares_socket_t fd, void *buf, size_t len, int flags, struct sockaddr *from,
    ares_socklen_t *fromlen, void *arg)
{
	struct dns_sendq	*sq = arg;
	int			 s;
	size_t			 n;

	if (flags != 0 || (s = sock_index(sq, fd)) == -1 || !sq->socks[s].udp)
		return recvfrom(fd, buf, len, flags, from, fromlen);
	if (sq->rfd != fd || sq->rnext == sq->rn) {
		/*
		 * The datagrams read ahead are all handed out: if that read
		 * emptied the socket, this is the "try again" c-ares reads to
		 * (the event loop calls again when more arrive).  Another
		 * socket's read-ahead, if any is left (c-ares reads each to
		 * the end, so none is), stays for its next read.
		 */
		if (sq->rfd == fd && sq->rdrained) {
			sq->rfd = ARES_SOCKET_BAD;
			errno = EAGAIN;
			return -1;
		}
		if (sq->rfd != fd && sq->rnext < sq->rn)
			return recvfrom(fd, buf, len, flags, from, fromlen);
		if (read_ahead(sq, fd) == -1) {
			sq->rfd = ARES_SOCKET_BAD;
			return -1;
		}
	}
	n = sq->r[sq->rnext].len;
	if (n > len)
		n = len;	/* as recvfrom: a datagram longer than buf is cut */
	memcpy(buf, sq->r[sq->rnext].buf, n);
	if (from != NULL && fromlen != NULL) {
		socklen_t fl = sq->r[sq->rnext].fromlen;

		if (fl > *fromlen)
			fl = *fromlen;
		memcpy(from, &sq->r[sq->rnext].from, fl);
		*fromlen = sq->r[sq->rnext].fromlen;
	}
	sq->rnext++;
	return (ares_ssize_t)n;
}

static ares_ssize_t
sq_sendv(ares_socket_t fd, const struct iovec *iov, int iovcnt, void *arg)
{
	struct dns_sendq	*sq = arg;
	size_t			 len = 0;
	int			 i, s;

	if (sq->holding && sq->n < SENDQ_MAX && (s = sock_index(sq, fd)) != -1 &&
	    sq->socks[s].udp) {
		for (i = 0; i < iovcnt; i++)
			len += iov[i].iov_len;
		if (len <= SENDQ_LEN) {
			unsigned char *p = sq->q[sq->n].buf;

			for (i = 0; i < iovcnt; i++) {
				memcpy(p, iov[i].iov_base, iov[i].iov_len);
				p += iov[i].iov_len;
			}
			sq->q[sq->n].fd = fd;
			sq->q[sq->n].len = (unsigned)len;
			sq->n++;
			return (ares_ssize_t)len;
		}
	}
	return writev(fd, iov, iovcnt);
}

const struct ares_socket_functions dns_sendq_funcs = {
	sq_socket, sq_close, sq_connect, sq_recvfrom, sq_sendv,
};

void
dns_sendq_init(struct dns_sendq *sq, int rcvbuf)
{
	int i;

	memset(sq, 0, sizeof(*sq));
	sq->rcvbuf = rcvbuf;
	sq->rfd = ARES_SOCKET_BAD;
	for (i = 0; i < SENDQ_SOCKS; i++)
		sq->socks[i].fd = ARES_SOCKET_BAD;
}

void
dns_sendq_hold(struct dns_sendq *sq)
{
	sq->holding = 1;
}

/* sends what is held: one sendmmsg per run of queries to the same socket */
void
dns_sendq_flush(struct dns_sendq *sq)
{
	struct mmsghdr	 msgs[SENDQ_MAX];
	struct iovec	 iov[SENDQ_MAX];
	int		 i, j, k, sent;

	sq->holding = 0;
	for (i = 0; i < sq->n; i = j) {
		for (j = i; j < sq->n && sq->q[j].fd == sq->q[i].fd; j++) {
			iov[j].iov_base = sq->q[j].buf;
			iov[j].iov_len = sq->q[j].len;
			memset(&msgs[j], 0, sizeof(msgs[j]));
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
		}
		for (k = i; k < j; k += sent) {
			sent = sendmmsg(sq->q[i].fd, &msgs[k], (unsigned)(j - k), 0);
			if (sent <= 0) {	/* the rest: lost datagrams, retried by c-ares */
				log_debug(0, "dns: %d queries not sent: %s", j - k,
				    strerror(sent == 0 ? EAGAIN : errno));
				break;
			}
		}
	}
	sq->n = 0;
}
