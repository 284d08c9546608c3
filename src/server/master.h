/*
 * master.h -- the process tree: a master that forks workers, restarts them
 * when they die, reloads the script on SIGHUP and drains them on SIGTERM.
 *
 * main.c parses the options, validates the script, binds the listening
 * sockets and hands them over in a master_config.  master_run() then drops
 * privileges (--user) and either serves in this very process (workers 0) or
 * forks that many workers.  Every worker loads the script into a Lua state
 * and an event base of its own and accepts on the inherited sockets; the
 * master runs no Lua while serving and holds no connection.
 *
 *     master --fork--> worker 0 (event base, Lua state, server.c)
 *            --fork--> worker 1 ...
 *
 * Signals to the master: SIGHUP reloads (the script is loaded in the master
 * first: an error is logged with file:line and the old workers keep
 * serving; a good script gets a new generation of workers, and once every
 * one of them is accepting the old ones drain: they stop accepting and
 * finish their sessions within the grace period); SIGTERM/SIGINT go to every
 * worker, which drain as server.h describes, and the master exits once they
 * are gone.  A worker that dies unexpectedly is restarted after a backoff
 * (0.1 s doubling to 10 s, reset once a worker lived 10 s), and so is one
 * that stays in one call into Lua past its script's blockedLimit: the
 * master reads what each worker is doing from a shared record (busy.h),
 * logs a worker blocked for a few seconds and kills one blocked past the
 * limit.  Workers get SIGHUP when the master dies (PR_SET_PDEATHSIG): they
 * drain as on SIGTERM, and end themselves if blocked past the limit or
 * still there at the master's stop deadline, so none outlives it.
 *
 * With --user no Lua runs as root: main.c validates the script in a child
 * that drops privileges first, master_run() drops them before anything
 * else (then creates the ready file's temporary, as that user, so that a
 * path it cannot write is an error at start), and the workers and a
 * reload's check run as that user.
 */
#ifndef LUASMTPD_MASTER_H
#define LUASMTPD_MASTER_H

#include <stddef.h>

#include "listener.h"
#include "host.h"

#define MASTER_LISTEN_MAX	32
#define MASTER_WORKERS_MAX	256

struct master_config {
	const char		*script;
	const char		*ready_file;	/* NULL: none */
	int			 ready_written;	/* workers 0: the ready file is there */
	const char		*user;		/* NULL: keep the current user */
	unsigned		 grace;		/* seconds */
	unsigned		 workers;	/* 0: serve in this process */
	/* the bound sockets (listener_bind) and their names; master_run owns them */
	int			 fds[MASTER_LISTEN_MAX];
	char			 names[MASTER_LISTEN_MAX][LISTENER_NAME_MAX];
	size_t			 nfds;
	int			 metrics_fd;	/* --metrics, bound; -1: none (master_run owns it) */
	/* the script's own listen addresses when they were used (no --listen):
	 * a reload that changes them is reported, not applied */
	struct host_listen	 script_listen[MASTER_LISTEN_MAX];
	size_t			 nscript_listen;
	int			 script_listen_used;
};

/* Runs until stopped; returns the exit status (0 after a clean stop). */
int	master_run(struct master_config *mc);

/*
 * setgroups, setgid, setuid to user, and a check that root cannot be
 * regained; 0, or -1 with one line in err.  Nothing to do when already him.
 */
int	master_drop_privileges(const char *user, char *err, size_t errlen);

#endif
