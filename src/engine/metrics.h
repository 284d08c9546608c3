/*
 * metrics.h -- counters and histograms of every worker, in shared memory,
 * for the Prometheus text format that --metrics serves (metrics_http.c).
 *
 * The master maps one region (MAP_SHARED, before any fork), as it does
 * connlimit.h's: a slot per worker process, written only by that worker with
 * plain increments (no locks, no atomic read-modify-write), read by whoever
 * renders.  When the master reaps a worker it folds the slot into the
 * region's "retired" sums and frees it, under a sequence counter that
 * renderers retry on: a total is the retired sums plus the live slots, so
 * no counter ever goes back across crashes, restarts and reloads.  Gauges
 * (open connections, Lua memory) are the live slots' only.  The master's own
 * counts (worker restarts, reloads) sit in the region's head.  Without
 * worker processes (--workers 0) the same code runs on one slot.
 *
 * Before metrics_attach() (the validating load, the test harness, the
 * fuzzers) counting goes to a private slot nobody renders: the call sites
 * never test whether metrics are on.
 *
 * Every label set is fixed here: nothing a client sends becomes a label
 * value (an unknown verb counts as "other").
 */
#ifndef LUASMTPD_METRICS_H
#define LUASMTPD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Plain counters: one series each (see metrics.c's table for names). */
enum metrics_counter {
	M_CONNECTIONS,		/* luasmtpd_connections_total */
	M_REFUSED_LIMIT,	/* luasmtpd_connections_refused_total{reason="limit"} */
	M_REFUSED_PROXY,	/* ... {reason="proxy"}: not from proxyFrom, no good PROXY header */
	M_HANDLER_ERRORS,	/* luasmtpd_handler_errors_total */
	M_BUDGET_STOPS,		/* luasmtpd_handler_budget_stops_total */
	M_TLS_OK,		/* luasmtpd_tls_handshakes_total{result="success"} */
	M_TLS_FAILED,		/* ... {result="failure"} */
	M_AUTH_OK,		/* luasmtpd_auth_total{result="success"} */
	M_AUTH_FAILED,		/* ... {result="failure"} */
	M_COUNTERS
};

/* Commands by verb: luasmtpd_commands_total{verb}. */
enum metrics_verb {
	MV_HELO, MV_EHLO, MV_LHLO, MV_MAIL, MV_RCPT, MV_DATA, MV_BDAT, MV_RSET,
	MV_NOOP, MV_QUIT, MV_VRFY, MV_EXPN, MV_HELP, MV_STARTTLS, MV_AUTH,
	MV_XCLIENT, MV_ETRN, MV_TURN,
	MV_OTHER,		/* unknown verbs, malformed lines */
	MV_COUNT
};

/*
 * What a reply answers: luasmtpd_replies_total{event, class}
 * (class "2xx", "3xx": 354 and 334, "4xx", "5xx").  The verbs
 * above (a command's reply), then the greeting, the reply after the end of
 * the message, and "other" (unknown commands, bad lines, timeouts, the
 * shutdown's 421).
 */
enum metrics_reply_event {
	MR_CONNECT = MV_COUNT,	/* after the verbs; MV_OTHER is "other" */
	MR_DATA_END,
	MR_COUNT
};

/* Messages: luasmtpd_messages_total{result}, luasmtpd_message_octets_total{result}. */
enum metrics_message {
	MM_ACCEPTED,		/* the end of data got 2xx */
	MM_REJECTED,		/* the policy's 4xx/5xx at the end of data */
	MM_FAILED,		/* ended by the engine: size, bad line, timeout, disconnect */
	MM_COUNT
};

/*
 * Handler runs (calls from C into Lua): luasmtpd_handler_seconds{event}.
 * The engine's asks, then the other hooks and the calls from the loop.
 */
enum metrics_handler {
	MH_CONNECT, MH_HELO, MH_EHLO, MH_MAIL, MH_RCPT, MH_DATA, MH_DATA_END,
	MH_RSET, MH_QUIT, MH_VRFY, MH_EXPN, MH_AUTH,
	MH_MESSAGE_DATA, MH_ABORT, MH_OUTCOME, MH_CANCEL, MH_CLOSE, MH_BIND,
	MH_TIMER, MH_START, MH_REDIS,
	MH_OTHER,
	MH_COUNT
};

#define METRICS_BUCKETS		17	/* finite bounds; +Inf is one more */

struct metrics_slot {
	/* written by the master when it hands the slot out */
	uint32_t	in_use;
	uint32_t	worker;		/* the worker's index (its log tag) */
	int64_t		pid;		/* written by the worker as it attaches */
	/* gauges: live slots only, not folded */
	int64_t		open;		/* connections */
	int64_t		lua_bytes;	/* the Lua heap, after the last handler run */
	/* counters: folded into retired when the worker is reaped */
	uint64_t	c[M_COUNTERS];
	uint64_t	commands[MV_COUNT];
	uint64_t	replies[MR_COUNT][4];	/* 2xx, 3xx, 4xx, 5xx */
	uint64_t	messages[MM_COUNT];
	uint64_t	octets[MM_COUNT];
	uint64_t	hist[MH_COUNT][METRICS_BUCKETS + 1];	/* not cumulative */
	uint64_t	hist_ns[MH_COUNT];	/* the sum, in ns */
} __attribute__((aligned(64)));

/* This process's slot: the shared one once attached, else a private one. */
extern struct metrics_slot	*metrics_own;

static inline void
metrics_count(enum metrics_counter c)
{
	metrics_own->c[c]++;
}

static inline void
metrics_command(enum metrics_verb v)
{
	metrics_own->commands[v]++;
}

/* A reply with code (200..599) answering event (a metrics_verb or metrics_reply_event). */
static inline void
metrics_reply(unsigned event, int code)
{
	unsigned k = (unsigned)(code / 100) - 2;	/* 2xx 3xx 4xx 5xx */

	if (k < 4 && event < MR_COUNT)
		metrics_own->replies[event][k]++;
}

static inline void
metrics_message(enum metrics_message r, uint64_t octets)
{
	metrics_own->messages[r]++;
	metrics_own->octets[r] += octets;
}

static inline void
metrics_open(int delta)
{
	metrics_own->open += delta;
}

/* The verb of a command table entry ("MAIL"; NULL or unknown: MV_OTHER). */
enum metrics_verb metrics_verb(const char *verb);
/*
 * The handler event of lcore_enter()'s what ("RCPT", "close", "timer"): a
 * string constant, remembered by its address after the first lookup.
 */
enum metrics_handler metrics_handler(const char *what);
/* One handler run of ns nanoseconds. */
void		metrics_handler_time(enum metrics_handler h, uint64_t ns);

/* ---- the master ---- */

enum metrics_master {
	MX_RESTARTS,		/* luasmtpd_worker_restarts_total */
	MX_RELOADS_OK,		/* luasmtpd_reloads_total{result="success"} */
	MX_RELOADS_FAILED,	/* ... {result="failure"} */
	MX_COUNT
};

/* Maps nslots slots (the master, or the single process).  0 or -1 (errno). */
int		metrics_map(unsigned nslots);
void		metrics_unmap(void);
/* A free slot for worker index worker, cleared and in use; -1 when none is free. */
int		metrics_slot_take(unsigned worker);
/* A worker is gone: its counters join the retired sums, its gauges go. */
void		metrics_slot_retire(int slot);
void		metrics_master_count(enum metrics_master m);

/* The worker (after the fork): counts into its slot from now on (-1: private). */
void		metrics_attach(int slot);

/*
 * Renders every metric, summed over the retired sums and the live slots, in
 * the Prometheus text format 0.0.4.  Any process that mapped (or inherited)
 * the region may call it; it only reads.  A malloc'ed, NUL-terminated text
 * and its length in *len, or NULL when out of memory.
 */
char		*metrics_render(size_t *len);

#endif
