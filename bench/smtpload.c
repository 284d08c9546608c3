/*
 * smtpload.c -- a small, fast SMTP load generator for the benchmark.
 *
 * Owns: many concurrent client sessions on one epoll loop, the SMTP client
 * dialogue (EHLO, pipelined MAIL/RCPT/DATA groups when the server advertises
 * PIPELINING, the message body, QUIT), and the timing of a run.  Options
 * follow Postfix's smtp-source where they overlap:
 *
 *	smtpload [-d] [-c connecting] [-s sessions] [-m messages] [-l bytes]
 *	    [-r rcpts] [-f from] [-t to] [-M helo] [-T timeout] host:port
 *	smtpload -i -s N [-c connecting] [-M helo] [-T timeout] host:port
 *	    (the idle holder)
 *
 * -d keeps a connection for many messages; without it every message gets a
 * connection of its own.  -m is the total over all sessions.  Recipients of
 * -r N are 1<to> .. N<to> as with smtp-source.  Any reply other than the
 * expected one is an error: smtpload reports it and exits 1.  On success it
 * prints one line: "messages=M seconds=S rate=R connections=C".
 *
 * -c C: at most C connections (default 100) wait for their greeting at a time.
 *
 * -i opens N connections, sends EHLO on each, prints "ready N" once every one
 * has its 250, then holds them until stdin reaches EOF or SIGTERM/SIGINT.
 *
 * Pipelining groups are MAIL, the RCPTs and DATA; the body goes alone and the
 * next group waits for its 250 (some servers refuse more after the dot).
 *
 * Built by bench/run.sh: cc -O2 -o bench/build/smtpload bench/smtpload.c
 */
#define _GNU_SOURCE
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define INBUF_MAX	8192
#define EXPECT_MAX	256
#define RCPT_MAX	100

/* What a pending reply means when it arrives. */
enum expect {
	X_GREET,	/* 220: send EHLO */
	X_EHLO,		/* 250: note PIPELINING, start a message (or idle) */
	X_MAIL,		/* 250 */
	X_RCPT,		/* 250 */
	X_DATA,		/* 354: send the body */
	X_DONE,		/* 250 after the dot: one message delivered */
	X_QUIT,		/* 221: wait for the close */
};

struct sess {
	int		 fd;
	bool		 pipelining;
	int		 rcpt_sent;		/* non-pipelined: RCPTs sent so far */
	const char	*out;			/* static text being written */
	size_t		 out_len, out_off;
	unsigned char	 expect[EXPECT_MAX];	/* ring of pending replies */
	unsigned	 x_head, x_count;
	char		 in[INBUF_MAX];
	size_t		 in_len;
	bool		 closing;		/* QUIT answered: wait for EOF */
	bool		 idle_ready;
	bool		 claim;			/* a message was claimed at connect */
};

/* options */
static int	 opt_sessions = 1, opt_rcpts = 1;
static long	 opt_messages = 1, opt_size = 1024;
static bool	 opt_keep, opt_idle;
static const char *opt_from = "sender@example.com", *opt_to = "rcpt@example.com";
static const char *opt_helo = "load.example.com";
static double	 opt_timeout = 300;

/* run state */
static struct sockaddr_storage	 target;
static socklen_t		 target_len;
static int			 ep;
static long			 claimed, delivered, connections;
static int			 active, idle_ready;
static int			 opt_concurrency = 100;	/* connections before their greeting */
static int			 handshaking;		/* connections waiting for the greeting */
static struct sess		**waiting;		/* sessions waiting to connect */
static int			 nwaiting;
static volatile sig_atomic_t	 stop_idle;

/* the texts, built once */
static char	*t_ehlo, *t_mail, *t_rcpt[RCPT_MAX], *t_data = "DATA\r\n";
static char	*t_env;			/* MAIL + RCPTs + DATA */
static char	*t_body;		/* body + ".\r\n" */
static const char *t_quit = "QUIT\r\n";

static void
die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("smtpload: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) == -1)
		die("out of memory");
	va_end(ap);
	return s;
}

static char *
concat(const char *a, const char *b, const char *c)
{
	size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
	char *s = malloc(la + lb + lc + 1);

	if (s == NULL)
		die("out of memory");
	memcpy(s, a, la);
	memcpy(s + la, b, lb);
	memcpy(s + la + lb, c, lc + 1);
	return s;
}

/* A message of about opt_size octets: a few headers, then 78-column lines. */
static void
texts_build(void)
{
	size_t cap = opt_size + 1024, len;
	char *b = malloc(cap), *env;
	int i;

	if (b == NULL)
		die("out of memory");
	len = snprintf(b, cap, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpload\r\n"
	    "Message-Id: <smtpload@%s>\r\n\r\n", opt_from, opt_to, opt_helo);
	while (len < (size_t)opt_size) {
		size_t n = opt_size - len < 80 ? opt_size - len : 80;

		if (n < 3)
			n = 3;
		memset(b + len, 'x', n - 2);
		memcpy(b + len + n - 2, "\r\n", 2);
		len += n;
	}
	memcpy(b + len, ".\r\n", 4);
	t_body = b;

	t_ehlo = xasprintf("EHLO %s\r\n", opt_helo);
	t_mail = xasprintf("MAIL FROM:<%s>\r\n", opt_from);
	env = strdup(t_mail);
	for (i = 0; i < opt_rcpts; i++) {
		char *n;

		if (opt_rcpts == 1)
			t_rcpt[i] = xasprintf("RCPT TO:<%s>\r\n", opt_to);
		else
			t_rcpt[i] = xasprintf("RCPT TO:<%d%s>\r\n", opt_rcpts - i, opt_to);
		n = concat(env, t_rcpt[i], "");
		free(env);
		env = n;
	}
	t_env = concat(env, t_data, "");
	free(env);
}

static void
expect_push(struct sess *s, enum expect x)
{
	if (s->x_count == EXPECT_MAX)
		die("internal: expect queue full");
	s->expect[(s->x_head + s->x_count++) % EXPECT_MAX] = x;
}

static void
sess_write(struct sess *s, const char *text)
{
	if (s->out_off < s->out_len)
		die("internal: a reply arrived before its command was sent");
	s->out = text;
	s->out_len = strlen(text);
	s->out_off = 0;
}

/* Write what is pending; returns -1 on a fatal error. */
static int
sess_flush(struct sess *s)
{
	while (s->out_off < s->out_len) {
		ssize_t n = send(s->fd, s->out + s->out_off, s->out_len - s->out_off,
		    MSG_NOSIGNAL);

		if (n == -1) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			return -1;
		}
		s->out_off += n;
	}
	return 0;
}

static void sess_connect(struct sess *);
static void sess_connected(void);
static void sess_open(struct sess *);

/* Start the next message on this connection, or say goodbye. */
static void
sess_next(struct sess *s)
{
	int i;

	if (s->claim)
		s->claim = false;
	else if (claimed >= opt_messages) {
		sess_write(s, t_quit);
		expect_push(s, X_QUIT);
		return;
	} else
		claimed++;
	if (s->pipelining) {
		sess_write(s, t_env);
		expect_push(s, X_MAIL);
		for (i = 0; i < opt_rcpts; i++)
			expect_push(s, X_RCPT);
		expect_push(s, X_DATA);
	} else {
		sess_write(s, t_mail);
		expect_push(s, X_MAIL);
	}
}

/*
 * The 354 arrived: send the body.  The next group waits for the 250 to the
 * dot: RFC 2920 would let it follow the body, but some servers (Haraka)
 * refuse commands pipelined after the end of DATA.
 */
static void
sess_body(struct sess *s)
{
	expect_push(s, X_DONE);
	sess_write(s, t_body);
}

static bool
ehlo_has_pipelining(const char *line, size_t len)
{
	return len >= 14 && strncasecmp(line + 4, "PIPELINING", 10) == 0 &&
	    (len == 14 || line[14] == ' ' || line[14] == '\r' || line[14] == '\n');
}

/* One complete reply (its last line) for the head of the expect queue. */
static void
sess_reply(struct sess *s, int code, const char *line)
{
	enum expect x;
	int want;

	if (s->x_count == 0)
		die("unexpected reply: %s", line);
	x = s->expect[s->x_head];
	s->x_head = (s->x_head + 1) % EXPECT_MAX;
	s->x_count--;
	switch (x) {
	case X_GREET:	want = 220; break;
	case X_DATA:	want = 354; break;
	case X_QUIT:	want = 221; break;
	default:	want = 250; break;
	}
	if (code != want)
		die("expected %d, got: %s", want, line);

	switch (x) {
	case X_GREET:
		sess_connected();
		sess_write(s, t_ehlo);
		expect_push(s, X_EHLO);
		break;
	case X_EHLO:
		if (opt_idle) {
			s->idle_ready = true;
			idle_ready++;
		} else
			sess_next(s);
		break;
	case X_MAIL:
		if (!s->pipelining) {
			s->rcpt_sent = 1;
			sess_write(s, t_rcpt[0]);
			expect_push(s, X_RCPT);
		}
		break;
	case X_RCPT:
		if (!s->pipelining) {
			if (s->rcpt_sent < opt_rcpts) {
				sess_write(s, t_rcpt[s->rcpt_sent++]);
				expect_push(s, X_RCPT);
			} else {
				sess_write(s, t_data);
				expect_push(s, X_DATA);
			}
		}
		break;
	case X_DATA:
		sess_body(s);
		break;
	case X_DONE:
		delivered++;
		if (opt_keep)
			sess_next(s);
		else {
			sess_write(s, t_quit);
			expect_push(s, X_QUIT);
		}
		break;
	case X_QUIT:
		s->closing = true;
		break;
	}
}

/* Parse complete lines; a multiline reply counts once, at its last line. */
static void
sess_parse(struct sess *s)
{
	size_t start = 0;
	char *nl;

	while ((nl = memchr(s->in + start, '\n', s->in_len - start)) != NULL) {
		char *line = s->in + start;
		size_t len = nl - line + 1;

		if (len < 4 || line[0] < '2' || line[0] > '5')
			die("malformed reply: %.*s", (int)len, line);
		if (s->x_count > 0 && s->expect[s->x_head] == X_EHLO &&
		    ehlo_has_pipelining(line, len))
			s->pipelining = true;
		if (line[3] != '-') {
			*nl = '\0';
			sess_reply(s, atoi(line), line);
		}
		start += len;
	}
	if (start > 0) {
		memmove(s->in, s->in + start, s->in_len - start);
		s->in_len -= start;
	}
	if (s->in_len == sizeof(s->in))
		die("reply line too long");
}

static void
sess_close(struct sess *s)
{
	close(s->fd);
	s->fd = -1;
	active--;
}

/*
 * At most -c connections wait for their greeting at a time: a server with a
 * short listen backlog (OpenSMTPD: 5) would otherwise overflow it, and with
 * SYN cookies a connection whose final ACK was dropped waits forever for a
 * greeting that the server never knew to send.
 */
static void
sess_connect(struct sess *s)
{
	s->claim = false;
	if (!opt_keep && !opt_idle) {	/* one message per connection: claim it now */
		claimed++;
		s->claim = true;
	}
	if (handshaking >= opt_concurrency) {
		s->fd = -1;
		waiting[nwaiting++] = s;
		return;
	}
	sess_open(s);
}

/* A greeting arrived: the next waiting session may connect. */
static void
sess_connected(void)
{
	handshaking--;
	if (nwaiting > 0)
		sess_open(waiting[--nwaiting]);
}

static void
sess_open(struct sess *s)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = s };
	int one = 1;

	s->fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd == -1)
		die("socket: %s", strerror(errno));
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s->fd, (struct sockaddr *)&target, target_len) == -1 &&
	    errno != EINPROGRESS)
		die("connect: %s", strerror(errno));
	s->pipelining = false;
	s->closing = false;
	s->out = NULL;
	s->out_len = s->out_off = 0;
	s->in_len = 0;
	s->x_head = s->x_count = 0;
	expect_push(s, X_GREET);
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) == -1)
		die("epoll_ctl: %s", strerror(errno));
	active++;
	handshaking++;
	connections++;
}

static void
sess_event(struct sess *s, uint32_t events)
{
	int one = 1;

	if (events & EPOLLERR) {
		int err = 0;
		socklen_t l = sizeof(err);

		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		die("connection error: %s", strerror(err ? err : EIO));
	}
	for (;;) {
		ssize_t n = recv(s->fd, s->in + s->in_len, sizeof(s->in) - s->in_len, 0);

		if (n > 0) {
			/* ack at once: a server whose replies are held back by Nagle
			 * would otherwise wait for our delayed ACK on every group */
			setsockopt(s->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
			s->in_len += n;
			sess_parse(s);
			continue;
		}
		if (n == 0) {
			if (!s->closing)
				die("server closed the connection unexpectedly");
			sess_close(s);
			if (!opt_keep && !opt_idle && claimed < opt_messages)
				sess_connect(s);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		if (errno == ECONNRESET && s->closing) {
			sess_close(s);
			if (!opt_keep && !opt_idle && claimed < opt_messages)
				sess_connect(s);
			return;
		}
		die("recv: %s", strerror(errno));
	}
	if (sess_flush(s) == -1)
		die("send: %s", strerror(errno));
}

static void
on_signal(int sig)
{
	(void)sig;
	stop_idle = 1;
}

static void
target_parse(const char *spec)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST }, *res;
	char host[256];
	const char *colon = strrchr(spec, ':'), *port;
	size_t hl;
	int rc;

	if (colon == NULL)
		die("target must be host:port");
	hl = colon - spec;
	port = colon + 1;
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl == 0 || hl >= sizeof(host))
		die("bad host in %s", spec);
	memcpy(host, spec, hl);
	host[hl] = '\0';
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0)
		die("%s: %s", spec, gai_strerror(rc));
	memcpy(&target, res->ai_addr, res->ai_addrlen);
	target_len = res->ai_addrlen;
	freeaddrinfo(res);
}

static void
usage(void)
{
	fprintf(stderr, "usage: smtpload [-d] [-c connecting] [-s sessions] [-m messages] [-l bytes] "
	    "[-r rcpts] [-f from] [-t to] [-M helo] [-T timeout] host:port\n"
	    "       smtpload -i -s sessions [-c connecting] [-M helo] [-T timeout] host:port\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	struct epoll_event evs[256];
	struct sess *sessions;
	double t0, t1;
	int c, i;

	while ((c = getopt(argc, argv, "c:df:il:m:M:r:s:t:T:")) != -1) {
		switch (c) {
		case 'c': opt_concurrency = atoi(optarg); break;
		case 'd': opt_keep = true; break;
		case 'f': opt_from = optarg; break;
		case 'i': opt_idle = true; break;
		case 'l': opt_size = atol(optarg); break;
		case 'm': opt_messages = atol(optarg); break;
		case 'M': opt_helo = optarg; break;
		case 'r': opt_rcpts = atoi(optarg); break;
		case 's': opt_sessions = atoi(optarg); break;
		case 't': opt_to = optarg; break;
		case 'T': opt_timeout = atof(optarg); break;
		default: usage();
		}
	}
	if (optind + 1 != argc || opt_sessions < 1 || opt_sessions > 100000 ||
	    opt_messages < 1 || opt_size < 0 || opt_size > 64L << 20 ||
	    opt_rcpts < 1 || opt_rcpts > RCPT_MAX || opt_timeout <= 0 ||
	    opt_concurrency < 1 ||
	    strpbrk(opt_from, "<>\r\n") || strpbrk(opt_to, "<>\r\n") ||
	    strpbrk(opt_helo, " \r\n"))
		usage();
	target_parse(argv[optind]);
	texts_build();
	signal(SIGPIPE, SIG_IGN);
	if (opt_idle) {		/* otherwise a signal ends the run at once */
		signal(SIGTERM, on_signal);
		signal(SIGINT, on_signal);
	}

	if ((ep = epoll_create1(EPOLL_CLOEXEC)) == -1)
		die("epoll_create1: %s", strerror(errno));
	if (!opt_idle && opt_sessions > opt_messages)
		opt_sessions = opt_messages;
	if ((sessions = calloc(opt_sessions, sizeof(*sessions))) == NULL)
		die("out of memory");

	if ((waiting = calloc(opt_sessions, sizeof(*waiting))) == NULL)
		die("out of memory");
	t0 = now();
	for (i = opt_sessions - 1; i >= 0; i--)	/* the waiting list is a stack */
		sess_connect(&sessions[i]);

	while (active > 0 || nwaiting > 0) {
		int n = epoll_wait(ep, evs, 256, 1000);

		if (n == -1 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (i = 0; i < n; i++) {
			struct sess *s = evs[i].data.ptr;

			if (s->fd != -1)
				sess_event(s, evs[i].events);
		}
		if (now() - t0 > opt_timeout) {
			for (i = 0; i < opt_sessions; i++) {
				struct sess *s = &sessions[i];

				if (s->fd != -1 && s->x_count > 0)
					fprintf(stderr, "smtpload: session %d waits for reply kind %d "
					    "(%u pending, %zu of %zu octets sent)\n", i,
					    s->expect[s->x_head], s->x_count, s->out_off, s->out_len);
			}
			die("timeout after %.0f s: %ld of %ld messages, %d of %d idle sessions ready",
			    opt_timeout, delivered, opt_messages, idle_ready, opt_sessions);
		}
		if (opt_idle && idle_ready == opt_sessions)
			break;
	}
	t1 = now();

	if (opt_idle) {
		struct epoll_event ev = { .events = EPOLLIN };
		char buf[64];

		printf("ready %d seconds=%.3f\n", idle_ready, t1 - t0);
		fflush(stdout);
		/* hold until stdin closes or a signal; a server that drops one of
		 * the idle connections is an error */
		if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) == -1)
			stop_idle = 1;	/* stdin is not a pipe or socket: do not hold */
		while (!stop_idle) {
			int n = epoll_wait(ep, evs, 256, 1000);

			for (i = 0; i < n; i++) {
				if (evs[i].data.ptr == NULL) {
					if (read(0, buf, sizeof(buf)) <= 0)
						stop_idle = 1;
					continue;
				}
				{
					struct sess *s = evs[i].data.ptr;
					ssize_t r = recv(s->fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);

					if (r >= 0 || (errno != EAGAIN && errno != EINTR))
						die("server spoke or closed on an idle connection");
				}
			}
		}
		return 0;
	}
	if (delivered != opt_messages)
		die("delivered %ld of %ld messages", delivered, opt_messages);
	printf("messages=%ld seconds=%.6f rate=%.1f connections=%ld\n",
	    delivered, t1 - t0, delivered / (t1 - t0), connections);
	return 0;
}
