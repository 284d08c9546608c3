/*
 * busy.h -- what a worker is doing in Lua, in memory its master reads.
 *
 * The master maps one record per worker (MAP_SHARED, before the fork).  The
 * worker stamps it as it enters and leaves Lua (lua_run.c: lcore_enter,
 * lcore_leave); the master's poll loop reads it and tells a worker that is
 * stuck in one call, blocked in a system call or a long C function, where
 * neither the handler budgets (they run between VM instructions) nor the
 * worker's own event loop can stop it (master.c).  A seqlock: seq is odd
 * while the worker writes, and a read that saw it odd or changed is retried.
 */
#ifndef LUASMTPD_BUSY_H
#define LUASMTPD_BUSY_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define BUSY_WHAT_MAX	16

struct busy {
	uint32_t	seq;		/* odd while the worker writes */
	uint32_t	limit_ms;	/* the worker's blockedLimit; 0: not serving yet */
	int64_t		since_ms;	/* busy_now_ms() when it entered Lua; 0: not in Lua */
	uint64_t	id;		/* the session it entered for; 0: none */
	char		what[BUSY_WHAT_MAX];	/* the event: "rcpt", "data", "timer" */
};

/* Cheap (no system call) and the same clock in every process. */
static inline int64_t
busy_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The worker: entered Lua for session id (0: none) and event what (lowercase). */
static inline void
busy_enter(struct busy *b, uint64_t id, const char *what)
{
	uint32_t	s = __atomic_load_n(&b->seq, __ATOMIC_RELAXED);
	size_t		i;

	__atomic_store_n(&b->seq, s + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	b->since_ms = busy_now_ms();
	b->id = id;
	for (i = 0; i < BUSY_WHAT_MAX - 1 && what[i] != '\0'; i++)
		b->what[i] = (char)(what[i] >= 'A' && what[i] <= 'Z' ? what[i] - 'A' + 'a' : what[i]);
	b->what[i] = '\0';
	__atomic_store_n(&b->seq, s + 2, __ATOMIC_RELEASE);
}

/* The worker: left Lua. */
static inline void
busy_leave(struct busy *b)
{
	uint32_t s = __atomic_load_n(&b->seq, __ATOMIC_RELAXED);

	__atomic_store_n(&b->seq, s + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	b->since_ms = 0;
	__atomic_store_n(&b->seq, s + 2, __ATOMIC_RELEASE);
}

/*
 * The master (or the worker's own signal handler): a consistent copy of b,
 * or -1 when the worker was writing (try again at the next look).  The
 * copy's seq tells one stay in Lua from the next.
 */
static inline int
busy_read(const struct busy *b, struct busy *out)
{
	uint32_t s = __atomic_load_n(&b->seq, __ATOMIC_ACQUIRE);

	if (s & 1)
		return -1;
	out->limit_ms = b->limit_ms;
	out->since_ms = b->since_ms;
	out->id = b->id;
	memcpy(out->what, b->what, sizeof(out->what));
	out->what[BUSY_WHAT_MAX - 1] = '\0';
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (__atomic_load_n(&b->seq, __ATOMIC_RELAXED) != s)
		return -1;
	out->seq = s;
	return 0;
}

#endif
