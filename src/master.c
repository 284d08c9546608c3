/*
 * master.c -- the master process and the body of every worker.
 *
 * Owns the process tree described in master.h: dropping privileges, forking
 * workers (each with a ready pipe: one byte once its event loop runs, and a
 * busy record, busy.h, shared with the master), reaping and restarting them
 * with a backoff, replacing a worker stuck in one call into Lua, generations
 * of workers across reloads, forwarding stop signals, the ready file, and
 * the log tag that tells processes apart ("master[PID]", "worker0[PID]").
 * The master waits in poll() on a signalfd and the ready pipes; it has no
 * event base and no Lua state of its own while serving.  A worker is
 * server.c on a fresh event base with a freshly loaded policy, and the
 * signal handlers that end it when its master is gone.
 */
#include <sys/types.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "busy.h"
#include "connlimit.h"
#include "log.h"
#include "master.h"
#include "metrics.h"
#include "metrics_http.h"
#include "host.h"
#include "notify.h"
#include "server.h"
#include "session.h"

#define BACKOFF_MIN_MS		100
#define BACKOFF_MAX_MS		10000
#define BACKOFF_RESET_MS	10000	/* a worker that lived this long was healthy */
#define START_TIMEOUT_MS	60000	/* from fork to accepting */
#define STOP_SLACK_SECS		30	/* beyond the grace: then SIGKILL */
#define WORKER_EXIT_LOAD	3	/* a worker's status when the script failed */
#define BUSY_SCAN_MS		500	/* how often the master reads the busy records */
#define BUSY_WARN_MS		2000	/* one call into Lua this long is logged */

enum worker_state {
	W_STARTING,	/* forked, not accepting yet */
	W_READY,	/* accepting */
	W_DRAINING,	/* sent SIGTERM by the master */
};

struct worker {
	struct worker		*next;
	pid_t			 pid;
	unsigned		 gen;
	unsigned		 slot;
	enum worker_state	 state;
	int			 ready_fd;	/* read end of the ready pipe, or -1 */
	int64_t			 started_ms;
	struct busy		*busy;		/* shared with the worker */
	int			 climit;	/* its connlimit slot, or -1 */
	int			 mslot;		/* its metrics slot, or -1 */
	uint32_t		 warned_seq;	/* the stay in Lua already logged */
	bool			 blocked;	/* killed for blocking: replaced */
};

struct slot {
	unsigned	 delay_ms;	/* the next backoff */
	int64_t		 restart_ms;	/* when to fork again; 0: nothing due */
};

struct master {
	struct master_config	*mc;
	pid_t			 pid;
	int			 sigfd;
	sigset_t		 oldmask;
	struct worker		*workers;
	struct slot		*slots;		/* of the current generation */
	unsigned		 gen;		/* the generation serving */
	unsigned		 next_gen;	/* a reload in progress: its generation, else 0 */
	bool			 ready;		/* the first generation accepted */
	bool			 hup_pending;	/* SIGHUP during startup or a reload */
	bool			 stopping;
	bool			 child;		/* this is a worker: unwind and serve */
	int64_t			 kill_ms;	/* stopping: SIGKILL who is left then */
	int			 rc;
};

/* Set in a worker before it serves: its log tag. */
static char	log_tag[48];

/*
 * The ready file's temporary: created at start, so that a path that cannot
 * be written stops us there, not once every worker is ready.
 */
static int	ready_fd = -1;
static char	ready_tmp[4096];

/* A worker: what its signal handlers need when the master is gone. */
static pid_t			 worker_master;
static struct busy		*worker_busy;
static unsigned			 worker_grace;
static volatile sig_atomic_t	 orphan_secs;	/* since the master died; 0: it lives */

static int	 serve(const char *script, int *fds, size_t nfds, int metrics_fd,
		    unsigned grace, void (*ready)(void *), void *ready_arg,
		    struct busy *busy);
static struct server *serve_server(struct event_base *, struct host *,
		    unsigned grace);
static int	 ready_open(const char *path);
static int	 ready_commit(const char *path, const struct master_config *mc);
static void	 ready_discard(void);
static void	 worker_signals(pid_t master, struct busy *busy, unsigned grace);
static int64_t	 now_ms(void);
static void	 master_loop(struct master *);
static void	 master_free(struct master *);
static void	 master_spawn_gen(struct master *, unsigned gen);
static int	 master_spawn(struct master *, unsigned gen, unsigned slot);
static void	 master_reap(struct master *);
static void	 master_exited(struct master *, struct worker *, int status);
static void	 master_backoff(struct master *, unsigned slot, int64_t lived);
static void	 master_signal(struct master *, int sig);
static void	 master_reload(struct master *);
static void	 master_progress(struct master *);
static void	 master_timers(struct master *, int64_t now);
static void	 master_watch(struct master *);
static void	 master_stop(struct master *, int sig, int rc);
static void	 master_abort_gen(struct master *, unsigned gen);
static void	 master_close_listeners(struct master *);
static size_t	 count_gen(const struct master *, unsigned gen, int state);
static void	 describe_status(int status, char *buf, size_t len);

/* ---- the process tree ----------------------------------------------------- */

static void
write_ready_in_process(void *arg)
{
	struct master_config	*mc = arg;

	if (mc->ready_file != NULL && ready_commit(mc->ready_file, mc) == 0)
		mc->ready_written = 1;
	notify_ready(NULL);
}

int
master_run(struct master_config *mc)
{
	struct master	 m;
	sigset_t	 mask;
	char		 err[512];
	int		 rc;

	if (mc->user != NULL) {
		if (master_drop_privileges(mc->user, err, sizeof(err)) == -1) {
			log_error(0, "%s", err);
			goto fail;
		}
		log_info(0, "running as %s (uid %ld, gid %ld)", mc->user, (long)getuid(),
		    (long)getgid());
	}
	/* as the user that writes it once every worker accepts */
	if (mc->ready_file != NULL && ready_open(mc->ready_file) == -1)
		goto fail;
	/*
	 * The connection counters: a slot per worker process, for two
	 * generations at once (a reload) and their replacements.
	 */
	if (connlimit_map(mc->workers == 0 ? 1 : 4 * mc->workers + 2) == -1) {
		log_error(0, "cannot map the connection counters: %s", strerror(errno));
		goto fail;
	}
	/* the metrics: the same slots, and the sums of the workers gone */
	if (metrics_map(mc->workers == 0 ? 1 : 4 * mc->workers + 2) == -1) {
		log_error(0, "cannot map the metrics: %s", strerror(errno));
		connlimit_unmap();
		goto fail;
	}
	if (mc->workers == 0) {	/* one process: serve here, as without a master */
		connlimit_attach(connlimit_slot_take());
		metrics_attach(metrics_slot_take(0));
		log_info(0, "luasmtpd %s ready (policy %s, no worker processes)",
		    LUASMTPD_VERSION, mc->script);
		signal(SIGHUP, SIG_IGN);
		rc = serve(mc->script, mc->fds, mc->nfds, mc->metrics_fd, mc->grace,
		    write_ready_in_process, mc, NULL);
		mc->nfds = 0;
		mc->metrics_fd = -1;
		if (mc->ready_written)
			(void)unlink(mc->ready_file);
		ready_discard();
		connlimit_unmap();
		metrics_unmap();
		log_info(0, "stopped");
		return rc;
	}

	memset(&m, 0, sizeof(m));
	m.mc = mc;
	m.pid = getpid();
	m.gen = 1;
	snprintf(log_tag, sizeof(log_tag), "master[%ld]", (long)m.pid);
	log_set_tag(log_tag);
	if ((m.slots = calloc(mc->workers, sizeof(*m.slots))) == NULL) {
		log_error(0, "out of memory");
		master_free(&m);
		return 1;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, &m.oldmask) == -1 ||
	    (m.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) == -1) {
		log_error(0, "cannot watch signals: %s", strerror(errno));
		m.sigfd = -1;
		master_free(&m);
		return 1;
	}
	log_info(0, "luasmtpd %s starting %u worker(s) (policy %s)",
	    LUASMTPD_VERSION, mc->workers, mc->script);
	master_spawn_gen(&m, m.gen);
	if (!m.child)
		master_loop(&m);
	rc = m.rc;
	if (m.child) {		/* a worker, done serving */
		master_free(&m);
		fflush(NULL);
		exit(rc);
	}
	if (mc->ready_file != NULL && m.ready)
		(void)unlink(mc->ready_file);	/* no stale address for the next run */
	ready_discard();
	log_info(0, "stopped");
	master_free(&m);
	connlimit_unmap();
	metrics_unmap();
	log_set_tag(NULL);
	return rc;
fail:
	for (size_t i = 0; i < mc->nfds; i++)
		close(mc->fds[i]);
	mc->nfds = 0;
	if (mc->metrics_fd != -1)
		close(mc->metrics_fd);
	mc->metrics_fd = -1;
	return 1;
}

static void
master_free(struct master *m)
{
	struct worker	*w;

	while ((w = m->workers) != NULL) {
		m->workers = w->next;
		if (w->ready_fd != -1)
			close(w->ready_fd);
		if (w->busy != NULL)
			munmap(w->busy, sizeof(*w->busy));
		free(w);
	}
	free(m->slots);
	m->slots = NULL;
	if (m->sigfd != -1)
		close(m->sigfd);
	m->sigfd = -1;
	master_close_listeners(m);
}

static void
master_close_listeners(struct master *m)
{
	for (size_t i = 0; i < m->mc->nfds; i++)
		if (m->mc->fds[i] != -1)
			close(m->mc->fds[i]);
	m->mc->nfds = 0;
	if (m->mc->metrics_fd != -1)
		close(m->mc->metrics_fd);
	m->mc->metrics_fd = -1;
}

static void
master_loop(struct master *m)
{
	struct pollfd	 pfd[1 + 2 * MASTER_WORKERS_MAX];
	struct worker	*wk[1 + 2 * MASTER_WORKERS_MAX];
	struct worker	*w;

	while (!(m->stopping && m->workers == NULL)) {
		int64_t		 now = now_ms(), due = -1;
		nfds_t		 n = 1;
		int		 timeout;

		pfd[0].fd = m->sigfd;
		pfd[0].events = POLLIN;
		for (w = m->workers; w != NULL; w = w->next) {
			if (w->ready_fd != -1 && n < sizeof(pfd) / sizeof(pfd[0])) {
				pfd[n].fd = w->ready_fd;
				pfd[n].events = POLLIN;
				wk[n++] = w;
			}
			if (w->state == W_STARTING &&
			    (due == -1 || w->started_ms + START_TIMEOUT_MS < due))
				due = w->started_ms + START_TIMEOUT_MS;
		}
		for (unsigned i = 0; !m->stopping && i < m->mc->workers; i++)
			if (m->slots[i].restart_ms != 0 &&
			    (due == -1 || m->slots[i].restart_ms < due))
				due = m->slots[i].restart_ms;
		if (m->workers != NULL && (due == -1 || now + BUSY_SCAN_MS < due))
			due = now + BUSY_SCAN_MS;	/* a look at the busy records */
		if (m->stopping && (due == -1 || m->kill_ms < due))
			due = m->kill_ms;
		timeout = due == -1 ? -1 : due <= now ? 0 :
		    due - now > 60000 ? 60000 : (int)(due - now);
		if (poll(pfd, n, timeout) == -1) {
			if (errno == EINTR)
				continue;
			log_error(0, "poll: %s", strerror(errno));
			master_stop(m, SIGTERM, 1);
			continue;
		}
		if (pfd[0].revents != 0) {
			struct signalfd_siginfo	si;

			while (read(m->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				master_signal(m, (int)si.ssi_signo);
				if (m->child)
					return;		/* a worker forked by a reload */
			}
		}
		for (nfds_t i = 1; i < n; i++) {
			char	c;
			ssize_t	r;

			if (pfd[i].revents == 0)
				continue;
			w = wk[i];
			r = read(w->ready_fd, &c, 1);
			if (r == -1 && (errno == EINTR || errno == EAGAIN))
				continue;
			close(w->ready_fd);	/* one byte, or EOF: a death SIGCHLD reports */
			w->ready_fd = -1;
			if (r == 1 && w->state == W_STARTING) {
				w->state = W_READY;
				log_info(0, "worker%u[%ld] accepting (generation %u)",
				    w->slot, (long)w->pid, w->gen);
			}
		}
		master_reap(m);
		master_timers(m, now_ms());
		if (m->child)
			return;
		master_progress(m);
		if (m->child)
			return;
	}
}

/* Forks the workers of a generation: every slot of the current config. */
static void
master_spawn_gen(struct master *m, unsigned gen)
{
	for (unsigned i = 0; i < m->mc->workers; i++) {
		switch (master_spawn(m, gen, i)) {
		case 1:
			return;		/* the child */
		case -1:
			if (gen == m->next_gen) {
				log_error(0, "reload failed; generation %u keeps serving",
				    m->gen);
				metrics_master_count(MX_RELOADS_FAILED);
				master_abort_gen(m, gen);
			} else {
				master_stop(m, SIGTERM, 1);
			}
			return;
		}
	}
}

/* Returns 0 in the master, -1 there when the fork failed (logged), 1 in the child. */
static int
master_spawn(struct master *m, unsigned gen, unsigned slot)
{
	struct worker	*w;
	int		 p[2];
	pid_t		 pid;

	if ((w = calloc(1, sizeof(*w))) == NULL) {
		log_error(0, "cannot start worker%u: out of memory", slot);
		return -1;
	}
	w->busy = mmap(NULL, sizeof(*w->busy), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (w->busy == MAP_FAILED) {
		log_error(0, "cannot start worker%u: mmap: %s", slot, strerror(errno));
		free(w);
		return -1;
	}
	if ((w->climit = connlimit_slot_take()) == -1)
		log_warn(0, "worker%u: no free connection counter slot; its own "
		    "connections are not seen by the other workers", slot);
	if ((w->mslot = metrics_slot_take(slot)) == -1)
		log_warn(0, "worker%u: no free metrics slot; its counts are not "
		    "in the metrics", slot);
	if (pipe2(p, O_CLOEXEC) == -1) {
		log_error(0, "cannot start worker%u: %s", slot, strerror(errno));
		connlimit_slot_free(w->climit);
		metrics_slot_retire(w->mslot);
		munmap(w->busy, sizeof(*w->busy));
		free(w);
		return -1;
	}
	fflush(NULL);
	if ((pid = fork()) == -1) {
		log_error(0, "cannot start worker%u: fork: %s", slot, strerror(errno));
		close(p[0]);
		close(p[1]);
		connlimit_slot_free(w->climit);
		metrics_slot_retire(w->mslot);
		munmap(w->busy, sizeof(*w->busy));
		free(w);
		return -1;
	}
	if (pid == 0) {
		struct master_config	*mc = m->mc;
		int			 fds[MASTER_LISTEN_MAX];
		size_t			 nfds = mc->nfds;
		int			 metrics_fd = mc->metrics_fd;
		pid_t			 master = m->pid;
		struct busy		*busy = w->busy;	/* its own; the others' go */
		int			 rc;

		connlimit_attach(w->climit);
		metrics_attach(w->mslot);
		free(w);
		close(p[0]);
		if (ready_fd != -1)
			close(ready_fd);
		ready_fd = -1;
		/* what the worker keeps: the listening sockets and its pipe end */
		memcpy(fds, mc->fds, nfds * sizeof(fds[0]));
		mc->nfds = 0;
		mc->metrics_fd = -1;
		m->child = true;	/* every caller unwinds to master_run() */
		master_free(m);
		snprintf(log_tag, sizeof(log_tag), "worker%u[%ld]", slot,
		    (long)getpid());
		log_set_tag(log_tag);
		(void)setpgid(0, 0);		/* a terminal's ^C reaches the master only */
		worker_signals(master, busy, mc->grace);
		sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
		if (prctl(PR_SET_PDEATHSIG, SIGHUP) == -1 || getppid() != master) {
			m->rc = 0;		/* the master is already gone */
			for (size_t i = 0; i < nfds; i++)
				close(fds[i]);
			if (metrics_fd != -1)
				close(metrics_fd);
			close(p[1]);
			return 1;
		}
		rc = serve(mc->script, fds, nfds, metrics_fd, mc->grace, NULL, &p[1],
		    busy);
		if (p[1] != -1)
			close(p[1]);
		m->rc = rc;
		return 1;
	}
	close(p[1]);
	w->pid = pid;
	w->gen = gen;
	w->slot = slot;
	w->state = W_STARTING;
	w->ready_fd = p[0];
	w->started_ms = now_ms();
	w->next = m->workers;
	m->workers = w;
	return 0;
}

static void
master_reap(struct master *m)
{
	struct worker	**wp, *w;
	pid_t		  pid;
	int		  status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (wp = &m->workers; (w = *wp) != NULL; wp = &w->next)
			if (w->pid == pid)
				break;
		if (w == NULL)
			continue;
		*wp = w->next;
		master_exited(m, w, status);
		connlimit_slot_free(w->climit);	/* what it held died with it */
		metrics_slot_retire(w->mslot);	/* what it counted stays counted */
		if (w->ready_fd != -1)
			close(w->ready_fd);
		munmap(w->busy, sizeof(*w->busy));
		free(w);
	}
}

static void
master_exited(struct master *m, struct worker *w, int status)
{
	char		 how[64];
	int64_t		 lived = now_ms() - w->started_ms;

	describe_status(status, how, sizeof(how));
	if (m->stopping || w->state == W_DRAINING) {
		log_info(0, "worker%u[%ld] (generation %u) %s", w->slot,
		    (long)w->pid, w->gen, how);
		return;
	}
	if (w->gen == m->next_gen) {	/* a reload whose worker failed */
		log_error(0, "reload failed: worker%u[%ld] %s before accepting; "
		    "generation %u keeps serving", w->slot, (long)w->pid, how, m->gen);
		metrics_master_count(MX_RELOADS_FAILED);
		master_abort_gen(m, m->next_gen);
		return;
	}
	if (w->gen != m->gen) {
		log_info(0, "worker%u[%ld] (generation %u) %s", w->slot,
		    (long)w->pid, w->gen, how);
		return;
	}
	if (!m->ready && w->state == W_STARTING) {
		log_error(0, "worker%u[%ld] %s before accepting; stopping", w->slot,
		    (long)w->pid, how);
		master_stop(m, SIGTERM, 1);
		return;
	}
	if (w->blocked)
		log_warn(0, "worker%u[%ld] %s for blocking, after %.1f s", w->slot,
		    (long)w->pid, how, lived / 1000.0);
	else
		log_warn(0, "worker%u[%ld] %s unexpectedly after %.1f s", w->slot,
		    (long)w->pid, how, lived / 1000.0);
	master_backoff(m, w->slot, lived);
}

/* Schedules the slot's restart: 0.1 s, doubling to 10 s, reset after a good run. */
static void
master_backoff(struct master *m, unsigned slot, int64_t lived)
{
	struct slot	*s = &m->slots[slot];

	if (lived >= BACKOFF_RESET_MS || s->delay_ms == 0)
		s->delay_ms = BACKOFF_MIN_MS;
	else if ((s->delay_ms *= 2) > BACKOFF_MAX_MS)
		s->delay_ms = BACKOFF_MAX_MS;
	s->restart_ms = now_ms() + s->delay_ms;
	log_info(0, "worker%u: restarting in %.1f s", slot, s->delay_ms / 1000.0);
}

static void
master_signal(struct master *m, int sig)
{
	switch (sig) {
	case SIGCHLD:
		break;		/* master_reap() runs after every wake-up */
	case SIGHUP:
		if (m->stopping) {
			log_info(0, "SIGHUP ignored: stopping");
		} else if (!m->ready || m->next_gen != 0) {
			log_info(0, "SIGHUP: reloading once the workers started are accepting");
			m->hup_pending = true;
		} else {
			master_reload(m);
		}
		break;
	case SIGTERM:
	case SIGINT:
		log_info(0, "signal %s received", sig == SIGTERM ? "TERM" : "INT");
		master_stop(m, sig, m->rc);
		break;
	}
}

/* SIGHUP: validate the script here, then start a new generation. */
static void
master_reload(struct master *m)
{
	struct master_config	*mc = m->mc;
	struct host		*p;
	char			 err[1024] = "";
	bool			 changed;

	log_info(0, "SIGHUP: reloading %s", mc->script);
	notify_reloading();
	if ((p = host_load(mc->script, NULL, err, sizeof(err))) == NULL) {
		log_error(0, "reload failed: %s; generation %u keeps serving",
		    err[0] ? err : "cannot load script", m->gen);
		metrics_master_count(MX_RELOADS_FAILED);
		notify_ready("serving; the last reload failed (see the log)");
		return;
	}
	if (mc->script_listen_used) {
		changed = host_listen_count(p) != mc->nscript_listen;
		for (size_t i = 0; !changed && i < mc->nscript_listen; i++) {
			const struct host_listen *pl = host_listen_at(p, i);

			changed = pl->port != mc->script_listen[i].port ||
			    strcmp(pl->host, mc->script_listen[i].host) != 0;
		}
		if (changed)
			log_warn(0, "reload: the script's listen addresses changed; "
			    "they take effect at the next start (still on %s%s)",
			    mc->names[0], mc->nfds > 1 ? " ..." : "");
	}
	host_destroy(p);
	m->next_gen = m->gen + 1;
	master_spawn_gen(m, m->next_gen);
}

/* Startup done? A reload's generation complete? A reload waiting? */
static void
master_progress(struct master *m)
{
	struct worker	*w;
	size_t		 old;

	if (m->stopping)
		return;
	if (!m->ready && count_gen(m, m->gen, W_READY) == m->mc->workers) {
		m->ready = true;
		if (m->mc->ready_file != NULL &&
		    ready_commit(m->mc->ready_file, m->mc) == -1) {
			master_stop(m, SIGTERM, 1);
			return;
		}
		log_info(0, "ready: %u worker(s) accepting", m->mc->workers);
		notify_ready(NULL);
	}
	if (m->next_gen != 0 && count_gen(m, m->next_gen, W_READY) == m->mc->workers) {
		old = 0;
		for (w = m->workers; w != NULL; w = w->next) {
			if (w->gen != m->next_gen && w->state != W_DRAINING) {
				w->state = W_DRAINING;
				(void)kill(w->pid, SIGTERM);
				old++;
			}
		}
		m->gen = m->next_gen;
		m->next_gen = 0;
		memset(m->slots, 0, m->mc->workers * sizeof(*m->slots));
		metrics_master_count(MX_RELOADS_OK);
		log_info(0, "reload: generation %u serving; %zu old worker(s) draining",
		    m->gen, old);
		notify_ready(NULL);
	}
	if (m->hup_pending && m->ready && m->next_gen == 0) {
		m->hup_pending = false;
		master_reload(m);
	}
}

static void
master_timers(struct master *m, int64_t now)
{
	struct worker	*w;

	master_watch(m);
	if (m->stopping) {
		if (now >= m->kill_ms) {
			for (w = m->workers; w != NULL; w = w->next) {
				log_error(0, "worker%u[%ld] still running: killing it",
				    w->slot, (long)w->pid);
				(void)kill(w->pid, SIGKILL);
			}
			m->rc = 1;
			m->kill_ms = now + 60000;
		}
		return;
	}
	for (w = m->workers; w != NULL; w = w->next) {
		if (w->state == W_STARTING && now >= w->started_ms + START_TIMEOUT_MS) {
			log_error(0, "worker%u[%ld] not accepting after %d s: killing it",
			    w->slot, (long)w->pid, START_TIMEOUT_MS / 1000);
			w->started_ms = now;	/* once */
			(void)kill(w->pid, SIGKILL);
		}
	}
	for (unsigned i = 0; i < m->mc->workers; i++) {
		if (m->slots[i].restart_ms != 0 && now >= m->slots[i].restart_ms) {
			m->slots[i].restart_ms = 0;
			switch (master_spawn(m, m->gen, i)) {
			case 1:
				return;		/* the child */
			case -1:
				master_backoff(m, i, 0);
				break;
			default:
				metrics_master_count(MX_RESTARTS);
				break;
			}
		}
	}
}

/*
 * A worker in one call into Lua for long (a blocking system call, a long C
 * function: nothing its budgets or its event loop can stop) is logged after
 * a while, and past its blockedLimit killed with its process group (what it
 * started, os.execute's shell) and replaced: its sessions are lost, the
 * others' go on, and the socket it shared goes to the workers that accept.
 */
static void
master_watch(struct master *m)
{
	struct worker	*w;
	struct busy	 b;
	int64_t		 stayed;
	char		 session[40];

	for (w = m->workers; w != NULL; w = w->next) {
		if (w->blocked || busy_read(w->busy, &b) == -1 || b.since_ms == 0 ||
		    b.limit_ms == 0)
			continue;
		stayed = busy_now_ms() - b.since_ms;
		if (stayed < BUSY_WARN_MS && stayed < b.limit_ms)
			continue;
		if (b.id != 0)
			snprintf(session, sizeof(session), "session %016" PRIx64, b.id);
		else
			snprintf(session, sizeof(session), "no session");
		if (stayed >= b.limit_ms) {
			log_error(0, "worker%u[%ld] blocked for %.1f s in %s handler (%s): "
			    "over blockedLimit (%.1f s), %s it", w->slot, (long)w->pid,
			    stayed / 1000.0, b.what, session, b.limit_ms / 1000.0,
			    m->stopping || w->state == W_DRAINING || w->gen != m->gen ?
			    "killing" : "replacing");
			w->blocked = true;
			if (kill(-w->pid, SIGKILL) == -1)	/* its own group, see master_spawn */
				(void)kill(w->pid, SIGKILL);
		} else if (b.seq != w->warned_seq) {
			w->warned_seq = b.seq;
			log_warn(0, "worker%u[%ld] blocked for %.1f s in %s handler (%s)",
			    w->slot, (long)w->pid, stayed / 1000.0, b.what, session);
		}
	}
}

/* SIGTERM/SIGINT (or a fatal error): forward, then wait for every worker. */
static void
master_stop(struct master *m, int sig, int rc)
{
	struct worker	*w;
	size_t		 n = 0;

	if (!m->stopping) {
		notify_stopping();
		m->stopping = true;
		m->rc = rc;
		m->kill_ms = now_ms() + ((int64_t)m->mc->grace + STOP_SLACK_SECS) * 1000;
		master_close_listeners(m);	/* new connections are refused */
	}
	for (w = m->workers; w != NULL; w = w->next, n++)
		(void)kill(w->pid, sig);
	log_info(0, "stopping: signalled %zu worker(s)", n);
}

/* A reload's generation failed: its workers drain, the current one serves on. */
static void
master_abort_gen(struct master *m, unsigned gen)
{
	struct worker	*w;

	for (w = m->workers; w != NULL; w = w->next) {
		if (w->gen == gen && w->state != W_DRAINING) {
			w->state = W_DRAINING;
			(void)kill(w->pid, SIGTERM);
		}
	}
	if (m->next_gen == gen) {
		m->next_gen = 0;
		notify_ready("serving; the last reload failed (see the log)");
	}
}

static size_t
count_gen(const struct master *m, unsigned gen, int state)
{
	size_t	n = 0;

	for (const struct worker *w = m->workers; w != NULL; w = w->next)
		if (w->gen == gen && (int)w->state == state)
			n++;
	return n;
}

static void
describe_status(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "ended (status 0x%x)", (unsigned)status);
}

/* ---- a worker (or the single process of --workers 0) ---------------------- */

static void
worker_ready_cb(evutil_socket_t fd, short what, void *arg)
{
	int	*pfd = arg;

	(void)fd, (void)what;
	if (*pfd != -1) {
		(void)write(*pfd, "R", 1);
		close(*pfd);
		*pfd = -1;
	}
}

static void
in_process_ready_cb(evutil_socket_t fd, short what, void *arg)
{
	void	**cb = arg;

	(void)fd, (void)what;
	((void (*)(void *))cb[0])(cb[1]);
}

/* What a worker writes from a signal handler: its tag and the reason, no more. */
static void
worker_say(const char *what)
{
	const char *parts[] = { "luasmtpd: ", log_tag, ": ", what, "\n" };

	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		(void)!write(STDERR_FILENO, parts[i], strlen(parts[i]));
}

/* Ends the worker at once, with what it started (os.execute's children). */
static void
worker_die(const char *why)
{
	worker_say(why);
	if (getpgrp() == getpid())	/* its own group: see master_spawn */
		(void)kill(0, SIGKILL);
	(void)raise(SIGKILL);
	_exit(1);
}

/*
 * SIGHUP: the master died (PR_SET_PDEATHSIG), or someone sent a stray one
 * (ignored).  The worker drains as if the master had sent SIGTERM, and from
 * now on applies the master's rules to itself, once a second (SIGALRM):
 * a call into Lua that blocks past the blockedLimit ends it, and so does
 * the master's stop deadline (the grace, then STOP_SLACK_SECS).  A worker
 * stuck in Lua never runs the drain that SIGTERM asks for.
 */
static void
worker_hup(int sig)
{
	struct itimerval	it = { { 1, 0 }, { 1, 0 } };
	int			saved = errno;

	(void)sig;
	if (orphan_secs == 0 && getppid() != worker_master) {
		orphan_secs = 1;
		(void)kill(getpid(), SIGTERM);	/* server.c's stop, once the loop runs */
		(void)setitimer(ITIMER_REAL, &it, NULL);
	}
	errno = saved;
}

static void
worker_alarm(int sig)
{
	struct busy	b;
	int		saved = errno;

	(void)sig;
	if (orphan_secs == 0)
		return;
	if ((unsigned)orphan_secs++ > worker_grace + STOP_SLACK_SECS)
		worker_die("master gone and the stop takes too long: exiting");
	if (worker_busy != NULL && busy_read(worker_busy, &b) == 0 && b.since_ms != 0 &&
	    b.limit_ms != 0 && busy_now_ms() - b.since_ms >= b.limit_ms)
		worker_die("master gone and a handler blocked past blockedLimit: exiting");
	errno = saved;
}

static void
worker_signals(pid_t master, struct busy *busy, unsigned grace)
{
	struct sigaction sa;

	worker_master = master;
	worker_busy = busy;
	worker_grace = grace;
	memset(&sa, 0, sizeof(sa));
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = worker_hup;
	(void)sigaction(SIGHUP, &sa, NULL);	/* reloading is the master's: see worker_hup */
	sa.sa_handler = worker_alarm;
	(void)sigaction(SIGALRM, &sa, NULL);
}

/* The loop's turn is over: the log lines it produced leave in one write. */
static void
log_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	log_flush();
}

static void
log_flush_soon(void *ev)
{
	event_active(ev, EV_TIMEOUT, 0);
}

/*
 * Loads the script on a fresh event base, accepts on fds (taken over) and
 * serves until stopped.  Once the loop runs: ready(ready_arg), or, with
 * ready NULL, one byte to the pipe *ready_arg.  busy, if given, is the
 * record the master watches.  metrics_fd (taken over; -1: none) is the
 * --metrics socket, served on the same loop.  Returns the exit status.
 */
static int
serve(const char *script, int *fds, size_t nfds, int metrics_fd, unsigned grace,
    void (*ready)(void *), void *ready_arg, struct busy *busy)
{
	struct metrics_http	*mh = NULL;
	struct event_base	*base = NULL;
	struct event		*flush = NULL;
	struct host		*policy = NULL;
	struct server		*srv = NULL;
	struct timeval		 now = { 0, 0 };
	void			*cb[2] = { (void *)ready, ready_arg };
	char			 err[1024] = "";
	size_t			 i = 0;
	unsigned		 max_total, max_client;
	int			 rc = 1;

	if (log_tag[0] != '\0')
		log_set_tag(log_tag);
	if ((base = event_base_new()) == NULL) {
		log_error(0, "cannot create the event loop");
		goto done;
	}
	/* log lines leave once per turn of the loop, not one write() each */
	if ((flush = event_new(base, -1, 0, log_flush_cb, NULL)) != NULL)
		log_set_batch(log_flush_soon, flush);
	if ((policy = host_load(script, base, err, sizeof(err))) == NULL) {
		log_error(0, "%s", err[0] ? err : "cannot load script");
		rc = WORKER_EXIT_LOAD;
		goto done;
	}
	if (busy != NULL)
		host_watch(policy, busy);
	host_conn_limits(policy, &max_total, &max_client);
	connlimit_set_limits(max_total, max_client);
	if ((srv = serve_server(base, policy, grace)) == NULL) {
		log_error(0, "cannot create the server: out of memory");
		goto done;
	}
	for (; i < nfds; i++)
		if (server_adopt(srv, fds[i], err, sizeof(err)) == -1) {
			log_error(0, "%s", err);
			i++;
			goto done;
		}
	if (metrics_fd != -1) {
		mh = metrics_http_create(base, metrics_fd);
		metrics_fd = -1;	/* the endpoint's now, even on error */
		if (mh == NULL) {
			log_error(0, "cannot serve --metrics");
			goto done;
		}
	}
	if (event_base_once(base, -1, EV_TIMEOUT, ready != NULL ?
	    in_process_ready_cb : worker_ready_cb, ready != NULL ? (void *)cb :
	    ready_arg, &now) == -1) {
		log_error(0, "cannot schedule the ready notice");
		goto done;
	}
	if (log_tag[0] != '\0')
		log_info(0, "serving (policy %s)", script);
	rc = server_run(srv) == 0 ? 0 : 1;
done:
	for (; i < nfds; i++)
		close(fds[i]);
	if (metrics_fd != -1)
		close(metrics_fd);
	metrics_http_destroy(mh);
	server_destroy(srv);	/* connections first: they hold the policy's hooks */
	host_destroy(policy);
	log_set_batch(NULL, NULL);
	if (flush != NULL)
		event_free(flush);
	if (base != NULL)
		event_base_free(base);
	return rc;
}

/*
 * A server with the bridge's hooks and the settings of each port: those of
 * the ports the script listens on (TLS, AUTH before TLS), the script's
 * server options for every other port (--listen).  NULL: out of memory.
 */
static struct server *
serve_server(struct event_base *base, struct host *policy, unsigned grace)
{
	struct server_port	 sp = { .tls = host_tls(policy) };
	struct server		*srv;
	const struct session_hooks *hooks;
	void			*hook_ctx;

	session_config_init(&sp.cfg);
	host_session_config(policy, &sp.cfg);
	hooks = host_hooks(policy, &hook_ctx);
	if ((srv = server_create(base, &sp, hooks, hook_ctx, grace)) == NULL)
		return NULL;
	for (size_t i = 0; i < host_listen_count(policy); i++) {
		const struct host_listen *pl = host_listen_at(policy, i);
		uint16_t port = pl->port;

		if (pl->host[0] == '/') {	/* a unix socket */
			host_path_config(policy, pl->host, &sp.cfg, &sp.implicit_tls);
			memset(&sp.proxy, 0, sizeof(sp.proxy));	/* no PROXY header on a unix socket */
			if (server_set_path(srv, pl->host, &sp) == -1) {
				server_destroy(srv);
				return NULL;
			}
			continue;
		}
		host_port_config(policy, port, &sp.cfg, &sp.implicit_tls);
		host_port_proxy(policy, port, &sp.proxy);
		if (server_set_port(srv, port, &sp) == -1) {
			server_destroy(srv);
			return NULL;
		}
	}
	return srv;
}

/* ---- helpers ---------------------------------------------------------------- */

int
master_drop_privileges(const char *user, char *err, size_t errlen)
{
	struct passwd	*pw;

	errno = 0;
	if ((pw = getpwnam(user)) == NULL) {
		snprintf(err, errlen, "--user %s: %s", user,
		    errno ? strerror(errno) : "no such user");
		return -1;
	}
	if (geteuid() == pw->pw_uid && getuid() == pw->pw_uid)
		return 0;	/* already that user */
	if (initgroups(pw->pw_name, pw->pw_gid) == -1 ||
	    setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1) {
		snprintf(err, errlen, "--user %s: cannot switch to uid %ld gid %ld: %s", user,
		    (long)pw->pw_uid, (long)pw->pw_gid, strerror(errno));
		return -1;
	}
	if (pw->pw_uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
		snprintf(err, errlen, "--user %s: root could be regained; refusing to run", user);
		return -1;
	}
	return 0;
}

/*
 * Creates PATH.PID.tmp, which ready_commit() fills and renames to PATH:
 * at start, so that a directory that is missing or not writable (by the
 * --user) is an error before any worker starts.
 */
static int
ready_open(const char *path)
{
	int n = snprintf(ready_tmp, sizeof(ready_tmp), "%s.%ld.tmp", path, (long)getpid());

	if (n < 0 || (size_t)n >= sizeof(ready_tmp)) {
		log_error(0, "cannot write ready file %s: path too long", path);
		ready_tmp[0] = '\0';
		return -1;
	}
	if ((ready_fd = open(ready_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) == -1) {
		log_error(0, "cannot write ready file %s: %s: %s", path, ready_tmp,
		    strerror(errno));
		ready_tmp[0] = '\0';
		return -1;
	}
	return 0;
}

/* Writes "ADDR:PORT" lines to the temporary, then renames it to PATH. */
static int
ready_commit(const char *path, const struct master_config *mc)
{
	FILE	*f;
	int	 failed = 0;

	if (ready_fd == -1 || (f = fdopen(ready_fd, "w")) == NULL) {
		log_error(0, "cannot write ready file %s: %s", path,
		    ready_fd == -1 ? "not open" : strerror(errno));
		ready_discard();
		return -1;
	}
	ready_fd = -1;
	for (size_t i = 0; i < mc->nfds; i++)
		if (fprintf(f, "%s\n", mc->names[i]) < 0)
			failed = 1;
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		failed = 1;
	if (fclose(f) != 0)
		failed = 1;
	if (failed || rename(ready_tmp, path) == -1) {
		log_error(0, "cannot write ready file %s: %s", path, strerror(errno));
		ready_discard();
		return -1;
	}
	ready_tmp[0] = '\0';
	return 0;
}

/* The temporary of a ready file never written (a failed start, a stop before ready). */
static void
ready_discard(void)
{
	if (ready_fd != -1)
		close(ready_fd);
	ready_fd = -1;
	if (ready_tmp[0] != '\0')
		(void)unlink(ready_tmp);
	ready_tmp[0] = '\0';
}

static int64_t
now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
