/*
 * main.c -- the luasmtpd command: options, script validation, binding.
 *
 * Parses the command line, loads the policy script once to validate it
 * (host.h; --check stops here) and to learn where it listens, binds the
 * listeners (from --listen, else the script's server:listen, else
 * 127.0.0.1:2525) and hands the sockets to master.c, which drops
 * privileges, forks the workers and runs until a signal stops it.  Under
 * systemd's socket activation (LISTEN_FDS) it binds nothing: the sockets
 * systemd passed are the listeners, matched to the listen addresses by
 * their bound address for the log (use_activated).  With
 * --user the validating load runs in a child process that has dropped
 * privileges already: the script (and what it requires) never runs as
 * root, while the parent still binds privileged ports.  Exit status: 0
 * after a clean stop, 1 for a runtime error, 2 for usage.
 */
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "listener.h"
#include "log.h"
#include "master.h"
#include "host.h"
#include "lua_store.h"
#include "notify.h"
#include "options_usage.h"
#include "server.h"

#define MAIN_LISTEN_MAX		MASTER_LISTEN_MAX
#define MAIN_DEFAULT_LISTEN	"127.0.0.1:2525"

struct options {
	const char	*script;
	const char	*listen[MAIN_LISTEN_MAX];
	size_t		 nlisten;
	const char	*ready_file;
	unsigned	 grace;
	long		 workers;	/* -1: one per online core */
	const char	*user;
	const char	*state_dir;	/* smtp.store's files (NULL: the script's) */
	const char	*metrics;	/* --metrics ADDR:PORT, or NULL */
	int		 check;
	const char	*store_dump;	/* --store-dump NAME: print it and exit */
	int		 dump_redis;	/* --dump-format redis */
};

/* What the validating load found: the script's listen addresses, or an error. */
struct loaded {
	int			ok;
	char			err[1024];
	size_t			nlisten;	/* more than MAIN_LISTEN_MAX: too many */
	struct host_listen	listen[MAIN_LISTEN_MAX];
};

/* The option list is README.md's (docs/gen-options.py): so is the man page. */
static void
usage(FILE *f)
{
	fputs(OPTIONS_USAGE
	    "Signals to the master: SIGHUP reloads SCRIPT (new workers; the old ones\n"
	    "finish their sessions), SIGTERM or SIGINT stops.  See luasmtpd(8).\n", f);
}

/*
 * With --user, --state-dir is created here, as root, and given to the user:
 * the workers (and the validating load) write there as that user.  An
 * existing directory is left as it is.
 */
static int
state_dir_prepare(const struct options *o)
{
	struct passwd *pw;

	if (mkdir(o->state_dir, 0700) == -1) {
		if (errno == EEXIST)
			return 0;
		fprintf(stderr, "luasmtpd: cannot create --state-dir %s: %s\n",
		    o->state_dir, strerror(errno));
		return -1;
	}
	if ((pw = getpwnam(o->user)) == NULL ||
	    chown(o->state_dir, pw->pw_uid, pw->pw_gid) == -1) {
		fprintf(stderr, "luasmtpd: cannot give --state-dir %s to %s: %s\n",
		    o->state_dir, o->user, pw == NULL ? "no such user" : strerror(errno));
		return -1;
	}
	return 0;
}

static int
parse_options(int argc, char **argv, struct options *o)
{
	enum { OPT_CHECK = 256, OPT_LOG, OPT_READY, OPT_GRACE, OPT_VERSION,
	    OPT_WORKERS, OPT_USER, OPT_STATE, OPT_METRICS, OPT_DUMP, OPT_DUMP_FORMAT,
	    OPT_LOG_FORMAT, OPT_LOG_TO };
	static const struct option longopts[] = {
		{ "listen",	required_argument,	NULL, 'l' },
		{ "check",	no_argument,		NULL, OPT_CHECK },
		{ "log-level",	required_argument,	NULL, OPT_LOG },
		{ "log-format",	required_argument,	NULL, OPT_LOG_FORMAT },
		{ "log",	required_argument,	NULL, OPT_LOG_TO },
		{ "ready-file",	required_argument,	NULL, OPT_READY },
		{ "grace",	required_argument,	NULL, OPT_GRACE },
		{ "workers",	required_argument,	NULL, OPT_WORKERS },
		{ "user",	required_argument,	NULL, OPT_USER },
		{ "state-dir",	required_argument,	NULL, OPT_STATE },
		{ "metrics",	required_argument,	NULL, OPT_METRICS },
		{ "store-dump",	required_argument,	NULL, OPT_DUMP },
		{ "dump-format", required_argument,	NULL, OPT_DUMP_FORMAT },
		{ "version",	no_argument,		NULL, OPT_VERSION },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 },
	};
	enum log_level	 level;
	enum log_format	 format;
	unsigned long	 n;
	char		*end;
	int		 ch;

	memset(o, 0, sizeof(*o));
	o->grace = SERVER_GRACE_DEFAULT;
	o->workers = -1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":l:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'l':
			if (o->nlisten == MAIN_LISTEN_MAX) {
				fprintf(stderr, "luasmtpd: too many --listen (at most %d)\n",
				    MAIN_LISTEN_MAX);
				return 2;
			}
			o->listen[o->nlisten++] = optarg;
			break;
		case OPT_CHECK:
			o->check = 1;
			break;
		case OPT_LOG:
			if (log_parse_level(optarg, &level) == -1) {
				fprintf(stderr, "luasmtpd: bad --log-level '%s' "
				    "(error, warn, info or debug)\n", optarg);
				return 2;
			}
			log_set_level(level);
			break;
		case OPT_LOG_FORMAT:
			if (log_parse_format(optarg, &format) == -1) {
				fprintf(stderr, "luasmtpd: bad --log-format '%s' "
				    "(text or json)\n", optarg);
				return 2;
			}
			log_set_format(format);
			break;
		case OPT_LOG_TO:
			if (strcmp(optarg, "stderr") == 0)
				break;
			if ((strcmp(optarg, "syslog") != 0 &&
			    strncmp(optarg, "syslog:/", 8) != 0) ||
			    log_set_syslog(optarg[6] == ':' ? optarg + 7 : NULL) == -1) {
				fprintf(stderr, "luasmtpd: bad --log '%s' (stderr, syslog "
				    "or syslog:/PATH of a socket)\n", optarg);
				return 2;
			}
			break;
		case OPT_READY:
			o->ready_file = optarg;
			break;
		case OPT_GRACE:
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    optarg[0] == '-' || n > 86400) {
				fprintf(stderr, "luasmtpd: bad --grace '%s' "
				    "(seconds, 0 to 86400)\n", optarg);
				return 2;
			}
			o->grace = (unsigned)n;
			break;
		case OPT_WORKERS:
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    optarg[0] == '-' || n > MASTER_WORKERS_MAX) {
				fprintf(stderr, "luasmtpd: bad --workers '%s' "
				    "(0 to %d)\n", optarg, MASTER_WORKERS_MAX);
				return 2;
			}
			o->workers = (long)n;
			break;
		case OPT_USER:
			if (optarg[0] == '\0') {
				fprintf(stderr, "luasmtpd: empty --user\n");
				return 2;
			}
			o->user = optarg;
			break;
		case OPT_STATE:
			if (optarg[0] == '\0') {
				fprintf(stderr, "luasmtpd: empty --state-dir\n");
				return 2;
			}
			o->state_dir = optarg;
			break;
		case OPT_METRICS:
			o->metrics = optarg;
			break;
		case OPT_DUMP:
			o->store_dump = optarg;
			break;
		case OPT_DUMP_FORMAT:
			if (strcmp(optarg, "text") != 0 && strcmp(optarg, "redis") != 0) {
				fprintf(stderr, "luasmtpd: bad --dump-format '%s' (text or "
				    "redis)\n", optarg);
				return 2;
			}
			o->dump_redis = strcmp(optarg, "redis") == 0;
			break;
		case OPT_VERSION:
			printf("luasmtpd %s\n", LUASMTPD_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			fprintf(stderr, "luasmtpd: option %s needs an argument\n",
			    argv[optind - 1]);
			return 2;
		default:
			if (optopt != 0)
				fprintf(stderr, "luasmtpd: unknown option -%c\n", optopt);
			else
				fprintf(stderr, "luasmtpd: unknown option %s\n",
				    argv[optind - 1]);
			fprintf(stderr, "luasmtpd: try 'luasmtpd --help'\n");
			return 2;
		}
	}
	if (o->store_dump != NULL && argc == optind)
		return 0;
	if (argc - optind != 1) {
		fprintf(stderr, "luasmtpd: %s\n", argc - optind == 0 ?
		    "no SCRIPT given" : "only one SCRIPT may be given");
		fprintf(stderr, "luasmtpd: try 'luasmtpd --help'\n");
		return 2;
	}
	o->script = argv[optind];
	return 0;
}

/* Binds one address into the master's list of sockets. */
static int
bind_one(struct master_config *mc, const char *host, uint16_t port)
{
	char	err[512];
	int	fd;

	if (mc->nfds == MASTER_LISTEN_MAX) {
		fprintf(stderr, "luasmtpd: too many listen addresses (at most %d)\n",
		    MASTER_LISTEN_MAX);
		return -1;
	}
	fd = listener_bind(host, port, mc->names[mc->nfds], sizeof(mc->names[0]),
	    err, sizeof(err));
	if (fd == -1) {
		fprintf(stderr, "luasmtpd: %s\n", err);
		return -1;
	}
	mc->fds[mc->nfds] = fd;
	log_info(0, "listening on %s", mc->names[mc->nfds]);
	mc->nfds++;
	return 0;
}

/* Loads the script here and notes where it listens. */
static void
load_here(const char *script, struct loaded *ld)
{
	struct host *p;

	memset(ld, 0, sizeof(*ld));
	if ((p = host_load(script, NULL, ld->err, sizeof(ld->err))) == NULL) {
		if (ld->err[0] == '\0')
			snprintf(ld->err, sizeof(ld->err), "cannot load script");
		return;
	}
	ld->ok = 1;
	ld->nlisten = host_listen_count(p);
	for (size_t i = 0; i < ld->nlisten && i < MAIN_LISTEN_MAX; i++)
		ld->listen[i] = *host_listen_at(p, i);
	host_destroy(p);
}

/*
 * The validating load: here, or with --user in a child that switches to
 * that user first and sends back what load_here() found.  -1 (printed)
 * when the child cannot be run.
 */
static int
load_script(const struct options *o, struct loaded *ld)
{
	char	*buf = (char *)ld;
	size_t	 got = 0;
	ssize_t	 n;
	pid_t	 pid;
	int	 p[2], status;

	if (o->user == NULL) {
		load_here(o->script, ld);
		return 0;
	}
	if (pipe2(p, O_CLOEXEC) == -1) {
		fprintf(stderr, "luasmtpd: pipe: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	if ((pid = fork()) == -1) {
		fprintf(stderr, "luasmtpd: fork: %s\n", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		close(p[0]);
		memset(ld, 0, sizeof(*ld));
		if (master_drop_privileges(o->user, ld->err, sizeof(ld->err)) == 0)
			load_here(o->script, ld);
		fflush(NULL);
		for (size_t off = 0; off < sizeof(*ld);) {
			if ((n = write(p[1], buf + off, sizeof(*ld) - off)) == -1 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			off += (size_t)n;
		}
		_exit(0);
	}
	close(p[1]);
	memset(ld, 0, sizeof(*ld));
	while (got < sizeof(*ld)) {
		if ((n = read(p[0], buf + got, sizeof(*ld) - got)) == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(p[0]);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (got != sizeof(*ld)) {
		memset(ld, 0, sizeof(*ld));
		snprintf(ld->err, sizeof(ld->err), "the script's load as --user %s ended "
		    "without a result", o->user);
	}
	ld->err[sizeof(ld->err) - 1] = '\0';
	return 0;
}

/*
 * The sockets systemd passed (LISTEN_FDS for our LISTEN_PID), from fd 3 on;
 * sd_listen_fds(1) unsets the variables, so no child takes them for its own.
 * Returns how many, or -1 (printed).
 */
static int
activated_take(void)
{
	int	n = sd_listen_fds(1);

	if (n < 0) {
		fprintf(stderr, "luasmtpd: socket activation: %s\n", strerror(-n));
		return -1;
	}
	if (n > MASTER_LISTEN_MAX) {
		fprintf(stderr, "luasmtpd: socket activation: %d sockets (at most %d)\n",
		    n, MASTER_LISTEN_MAX);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i, fl = fcntl(fd, F_GETFL);

		/* accepting never blocks a worker's loop; not for os.execute's children */
		if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1 ||
		    fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
			fprintf(stderr, "luasmtpd: socket activation: fd %d: %s\n", fd,
			    strerror(errno));
			return -1;
		}
	}
	return n;
}

/*
 * Socket activation: every socket systemd passed is served, and nothing is
 * bound here.  Each listen address (--listen, else the script's) is matched
 * to a passed socket by its bound address and port, for the log: one that
 * no socket matches is not served (a warning says so; add it to the
 * .socket unit); a socket that matches no listen address is served with
 * the settings of its port (the script's options for a port it does not
 * name), like a --listen address.
 */
static int
use_activated(struct master_config *mc, const struct options *o,
    const struct loaded *ld, int nact)
{
	char		 host[256], err[512];
	uint16_t	 port;
	size_t		 i, j, n;
	bool		 named[MASTER_LISTEN_MAX] = { false };

	for (i = 0; i < (size_t)nact; i++) {
		int fd = SD_LISTEN_FDS_START + (int)i;

		if (listener_inherited(fd, mc->names[mc->nfds], sizeof(mc->names[0]),
		    err, sizeof(err)) == -1) {
			fprintf(stderr, "luasmtpd: %s\n", err);
			return -1;
		}
		mc->fds[mc->nfds++] = fd;
	}
	if (o->nlisten == 0 && ld->nlisten > 0) {
		if (ld->nlisten > MASTER_LISTEN_MAX) {
			fprintf(stderr, "luasmtpd: too many listen addresses (at most %d)\n",
			    MASTER_LISTEN_MAX);
			return -1;
		}
		mc->script_listen_used = 1;
		for (i = 0; i < ld->nlisten; i++)
			mc->script_listen[mc->nscript_listen++] = ld->listen[i];
	}
	n = o->nlisten > 0 ? o->nlisten : ld->nlisten;
	for (i = 0; i < n; i++) {
		if (o->nlisten > 0) {
			if (listener_parse(o->listen[i], host, sizeof(host), &port, err,
			    sizeof(err)) == -1)
				continue;	/* checked before: cannot happen */
		} else {
			snprintf(host, sizeof(host), "%s", ld->listen[i].host);
			port = ld->listen[i].port;
		}
		for (j = 0; j < mc->nfds && !listener_matches(mc->fds[j], host, port); j++)
			;
		if (j == mc->nfds) {
			log_warn(0, "%s%s%s:%u is not served: systemd passed no socket bound "
			    "to it (with socket activation luasmtpd binds nothing itself)",
			    strchr(host, ':') ? "[" : "", host[0] ? host : LISTENER_DEFAULT_HOST,
			    strchr(host, ':') ? "]" : "", port);
			continue;
		}
		named[j] = true;
	}
	for (j = 0; j < mc->nfds; j++)
		log_info(0, "listening on %s (socket from systemd%s)", mc->names[j],
		    named[j] ? "" : "; no listen address names it: the settings of its port");
	return 0;
}

/* Binds --listen addresses, else the script's, else the default. */
static int
bind_listeners(struct master_config *mc, const struct options *o,
    const struct loaded *ld)
{
	char		 host[256], err[512];
	uint16_t	 port;
	size_t		 i;

	if (o->nlisten > 0 || ld->nlisten == 0) {
		for (i = 0; i < (o->nlisten > 0 ? o->nlisten : 1); i++) {
			const char *spec = o->nlisten > 0 ? o->listen[i] : MAIN_DEFAULT_LISTEN;

			if (listener_parse(spec, host, sizeof(host), &port, err,
			    sizeof(err)) == -1) {
				fprintf(stderr, "luasmtpd: %s\n", err);
				return -1;
			}
			if (bind_one(mc, host, port) == -1)
				return -1;
		}
		return 0;
	}
	if (ld->nlisten > MASTER_LISTEN_MAX) {
		fprintf(stderr, "luasmtpd: too many listen addresses (at most %d)\n",
		    MASTER_LISTEN_MAX);
		return -1;
	}
	mc->script_listen_used = 1;
	for (i = 0; i < ld->nlisten; i++) {
		const struct host_listen *pl = &ld->listen[i];

		mc->script_listen[mc->nscript_listen++] = *pl;
		if (bind_one(mc, pl->host, pl->port) == -1)
			return -1;
	}
	return 0;
}

/* Binds --metrics (before --user, as the listeners). */
static int
bind_metrics(struct master_config *mc, const char *spec)
{
	char		host[256], name[LISTENER_NAME_MAX], err[512];
	uint16_t	port;

	if (listener_parse(spec, host, sizeof(host), &port, err, sizeof(err)) == -1 ||
	    (mc->metrics_fd = listener_bind(host, port, name, sizeof(name), err,
	    sizeof(err))) == -1) {
		fprintf(stderr, "luasmtpd: --metrics: %s\n", err);
		return -1;
	}
	log_info(0, "metrics on http://%s/metrics", name);
	return 0;
}

static unsigned
online_cores(void)
{
	long	n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > MASTER_WORKERS_MAX ? MASTER_WORKERS_MAX : (unsigned)n;
}

int
main(int argc, char **argv)
{
	struct options		 o;
	static struct master_config mc;
	static struct loaded	 ld;
	struct host		*policy = NULL;
	char			 err[1024], host[256];
	uint16_t		 port;
	int			 rc, nact;

	if ((rc = parse_options(argc, argv, &o)) != 0)
		return rc;
	if (o.store_dump != NULL) {
		if (store_dump(o.state_dir != NULL ? o.state_dir : "./state", o.store_dump,
		    o.dump_redis, stdout, err, sizeof(err)) == -1) {
			fprintf(stderr, "luasmtpd: %s\n", err);
			return 1;
		}
		return 0;
	}
	/* bad --listen is a usage error, found before the script runs */
	for (size_t i = 0; i < o.nlisten; i++) {
		if (listener_parse(o.listen[i], host, sizeof(host), &port, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "luasmtpd: %s\n", err);
			return 2;
		}
	}
	if (o.metrics != NULL && listener_parse(o.metrics, host, sizeof(host), &port,
	    err, sizeof(err)) == -1) {
		fprintf(stderr, "luasmtpd: --metrics: %s\n", err);
		return 2;
	}
	if (access(o.script, R_OK) == -1) {
		fprintf(stderr, "luasmtpd: cannot read %s: %s\n", o.script,
		    strerror(errno));
		return 1;
	}
	host_set_state_dir(o.state_dir);
	if (o.state_dir != NULL && o.user != NULL && state_dir_prepare(&o) == -1)
		return 1;
	if (o.check) {
		err[0] = '\0';
		if ((policy = host_load(o.script, NULL, err, sizeof(err))) == NULL) {
			fprintf(stderr, "luasmtpd: %s\n", err[0] ? err : "cannot load script");
			return 1;
		}
		host_destroy(policy);
		printf("%s: OK\n", o.script);
		return 0;
	}

	/* validate: the workers load the script again, each for itself */
	if (load_script(&o, &ld) == -1)
		return 1;
	if (!ld.ok) {
		fprintf(stderr, "luasmtpd: %s\n", ld.err);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	mc.script = o.script;
	mc.ready_file = o.ready_file;
	mc.user = o.user;
	mc.grace = o.grace;
	mc.workers = o.workers < 0 ? online_cores() : (unsigned)o.workers;
	mc.metrics_fd = -1;
	notify_init();		/* this process speaks to systemd, its workers do not */
	if ((nact = activated_take()) == -1)
		return 1;
	if ((nact > 0 ? use_activated(&mc, &o, &ld, nact) == -1 :
	    bind_listeners(&mc, &o, &ld) == -1) ||
	    (o.metrics != NULL && bind_metrics(&mc, o.metrics) == -1)) {
		for (size_t i = 0; i < mc.nfds; i++)
			close(mc.fds[i]);
		return 1;
	}
	return master_run(&mc);	/* no Lua state in the master */
}
