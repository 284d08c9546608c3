/*
 * dns_sendq.h -- c-ares's socket functions, with a batch's UDP queries held
 * and sent in one sendmmsg, and answers read in one recvmmsg (dns_sendq.c).
 */
#ifndef DNS_SENDQ_H
#define DNS_SENDQ_H

#include <ares.h>

#define SENDQ_MAX	32	/* queries held at once (platform.dnsbl's zones) */
#define SENDQ_LEN	512	/* octets of one held query (a UDP query is far shorter) */
#define SENDQ_SOCKS	8	/* c-ares sockets known as UDP or TCP */
#define RECVQ_MAX	8	/* datagrams read by one recvmmsg */
#define RECVQ_LEN	4097	/* c-ares's own buffer for one (EDNS's 4096, and one to tell) */

struct dns_sendq {
	int		 holding;	/* between dns_sendq_hold and dns_sendq_flush */
	int		 rcvbuf;	/* SO_RCVBUF of a UDP socket */
	int		 n;
	struct {
		ares_socket_t	 fd;
		int		 udp;
	}		 socks[SENDQ_SOCKS];
	struct {
		ares_socket_t	 fd;
		unsigned	 len;
		unsigned char	 buf[SENDQ_LEN];
	}		 q[SENDQ_MAX];
	/* datagrams read ahead from one UDP socket, handed to c-ares one by one */
	ares_socket_t	 rfd;
	int		 rnext, rn;
	int		 rdrained;	/* the last recvmmsg emptied the socket */
	struct {
		struct sockaddr_storage	 from;
		socklen_t		 fromlen;
		unsigned		 len;
		unsigned char		 buf[RECVQ_LEN];
	}		 r[RECVQ_MAX];
};

/* the functions for ares_set_socket_functions, user data: a struct dns_sendq */
extern const struct ares_socket_functions dns_sendq_funcs;

void	dns_sendq_init(struct dns_sendq *, int rcvbuf);
void	dns_sendq_hold(struct dns_sendq *);
void	dns_sendq_flush(struct dns_sendq *);

#endif
