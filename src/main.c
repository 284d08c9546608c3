/*
 * main.c -- the luasmtpd command: options, policy loading, ready file, run.
 *
 * Owns the process: parses the command line, loads the policy script
 * (policy.h), builds the session config, binds the listeners (from --listen,
 * else the script's server:listen, else 127.0.0.1:2525), writes the ready
 * file and runs the server until a signal stops it (then removes the file).
 * Exit status: 0 after a clean stop, 1 for a runtime error, 2 for usage.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "listener.h"
#include "log.h"
#include "policy.h"
#include "server.h"
#include "session.h"

#define MAIN_LISTEN_MAX		32
#define MAIN_DEFAULT_LISTEN	"127.0.0.1:2525"

struct options {
	const char	*script;
	const char	*listen[MAIN_LISTEN_MAX];
	size_t		 nlisten;
	const char	*ready_file;
	unsigned	 grace;
	int		 check;
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: luasmtpd [options] SCRIPT\n"
	    "  -l, --listen ADDR:PORT   listen here (repeatable; overrides the script)\n"
	    "                           ADDR:PORT, [IPv6]:PORT or PORT (127.0.0.1)\n"
	    "      --check              load and validate SCRIPT, then exit\n"
	    "      --log-level LEVEL    error, warn, info (default) or debug\n"
	    "      --ready-file PATH    once listening, write one ADDR:PORT line per listener\n"
	    "                           (removed again on exit)\n"
	    "      --grace SECONDS      on SIGTERM/SIGINT, time sessions get to finish (%d)\n"
	    "      --version            print the version and exit\n"
	    "  -h, --help               print this help and exit\n",
	    SERVER_GRACE_DEFAULT);
}

static int
parse_options(int argc, char **argv, struct options *o)
{
	enum { OPT_CHECK = 256, OPT_LOG, OPT_READY, OPT_GRACE, OPT_VERSION };
	static const struct option longopts[] = {
		{ "listen",	required_argument,	NULL, 'l' },
		{ "check",	no_argument,		NULL, OPT_CHECK },
		{ "log-level",	required_argument,	NULL, OPT_LOG },
		{ "ready-file",	required_argument,	NULL, OPT_READY },
		{ "grace",	required_argument,	NULL, OPT_GRACE },
		{ "version",	no_argument,		NULL, OPT_VERSION },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 },
	};
	enum log_level	 level;
	unsigned long	 n;
	char		*end;
	int		 ch;

	memset(o, 0, sizeof(*o));
	o->grace = SERVER_GRACE_DEFAULT;
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
	if (argc - optind != 1) {
		fprintf(stderr, "luasmtpd: %s\n", argc - optind == 0 ?
		    "no SCRIPT given" : "only one SCRIPT may be given");
		fprintf(stderr, "luasmtpd: try 'luasmtpd --help'\n");
		return 2;
	}
	o->script = argv[optind];
	return 0;
}

/* Writes "ADDR:PORT" lines to PATH.tmp, then renames it to PATH. */
static int
write_ready_file(const char *path, const struct server *srv)
{
	char	 tmp[4096];
	FILE	*f;
	int	 n, failed = 0;

	n = snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		fprintf(stderr, "luasmtpd: ready file path too long\n");
		return -1;
	}
	if ((f = fopen(tmp, "w")) == NULL) {
		fprintf(stderr, "luasmtpd: cannot write ready file %s: %s\n",
		    tmp, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < server_listener_count(srv); i++)
		if (fprintf(f, "%s\n", server_listener_name(srv, i)) < 0)
			failed = 1;
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		failed = 1;
	if (fclose(f) != 0)
		failed = 1;
	if (failed || rename(tmp, path) == -1) {
		fprintf(stderr, "luasmtpd: cannot write ready file %s: %s\n",
		    path, strerror(errno));
		(void)unlink(tmp);
		return -1;
	}
	return 0;
}

/* Binds --listen addresses, else the script's, else the default. */
static int
bind_listeners(struct server *srv, const struct options *o,
    const struct policy *p)
{
	char		 host[256], err[512];
	uint16_t	 port;
	size_t		 i;

	if (o->nlisten > 0 || policy_listen_count(p) == 0) {
		for (i = 0; i < (o->nlisten > 0 ? o->nlisten : 1); i++) {
			const char *spec = o->nlisten > 0 ? o->listen[i] : MAIN_DEFAULT_LISTEN;

			if (listener_parse(spec, host, sizeof(host), &port, err,
			    sizeof(err)) == -1 ||
			    server_listen(srv, host, port, err, sizeof(err)) == -1) {
				fprintf(stderr, "luasmtpd: %s\n", err);
				return -1;
			}
		}
		return 0;
	}
	for (i = 0; i < policy_listen_count(p); i++) {
		const struct policy_listen *pl = policy_listen_at(p, i);

		if (server_listen(srv, pl->host, pl->port, err, sizeof(err)) == -1) {
			fprintf(stderr, "luasmtpd: %s\n", err);
			return -1;
		}
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct options		 o;
	struct session_config	 cfg;
	struct event_base	*base = NULL;
	struct policy		*policy = NULL;
	struct server		*srv = NULL;
	char			 err[1024], host[256];
	uint16_t		 port;
	int			 rc;

	if ((rc = parse_options(argc, argv, &o)) != 0)
		return rc;
	/* bad --listen is a usage error, found before the script runs */
	for (size_t i = 0; i < o.nlisten; i++) {
		if (listener_parse(o.listen[i], host, sizeof(host), &port, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "luasmtpd: %s\n", err);
			return 2;
		}
	}
	if (access(o.script, R_OK) == -1) {
		fprintf(stderr, "luasmtpd: cannot read %s: %s\n", o.script,
		    strerror(errno));
		return 1;
	}
	if (o.check) {
		err[0] = '\0';
		if ((policy = policy_load(o.script, NULL, err, sizeof(err))) == NULL) {
			fprintf(stderr, "luasmtpd: %s\n", err[0] ? err : "cannot load script");
			return 1;
		}
		policy_destroy(policy);
		printf("%s: OK\n", o.script);
		return 0;
	}

	signal(SIGPIPE, SIG_IGN);
	rc = 1;
	if ((base = event_base_new()) == NULL) {
		fprintf(stderr, "luasmtpd: cannot create the event loop\n");
		goto done;
	}
	err[0] = '\0';
	if ((policy = policy_load(o.script, base, err, sizeof(err))) == NULL) {
		fprintf(stderr, "luasmtpd: %s\n", err[0] ? err : "cannot load script");
		goto done;
	}
	session_config_init(&cfg);
	policy_session_config(policy, &cfg);
	if ((srv = server_create(base, &cfg, policy_hooks(policy), policy,
	    o.grace)) == NULL) {
		fprintf(stderr, "luasmtpd: cannot create the server: out of memory\n");
		goto done;
	}
	if (bind_listeners(srv, &o, policy) == -1)
		goto done;
	if (o.ready_file != NULL && write_ready_file(o.ready_file, srv) == -1)
		goto done;
	log_info(0, "luasmtpd %s ready (policy %s)", LUASMTPD_VERSION, o.script);
	if (server_run(srv) == 0)
		rc = 0;
	if (o.ready_file != NULL)
		(void)unlink(o.ready_file);	/* no stale address for the next run */
	log_info(0, "stopped");
done:
	server_destroy(srv);	/* connections first: they hold the policy's hooks */
	policy_destroy(policy);
	if (base != NULL)
		event_base_free(base);
	return rc;
}
