/*
 * metrics.c -- the shared counters of metrics.h and their rendering.
 *
 * Owns the region the master maps before forking (a head with the master's
 * counters, the retired sums and a sequence counter, then one struct
 * metrics_slot per worker process), this process's slot, the fixed label
 * sets and the Prometheus text format.  Writers never lock: a slot has one
 * writer (its worker), the head one (the master).  A renderer copies the
 * sums under the head's sequence counter, which the master makes odd while
 * it folds a dead worker's slot into the retired sums, so a render never
 * counts a slot twice or not at all.
 */
#include <sys/mman.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "metrics.h"

struct metrics_head {
	uint32_t		seq;		/* odd while the master folds */
	uint32_t		nslots;
	uint64_t		master[MX_COUNT];
	struct metrics_slot	retired;	/* the sums of the workers reaped */
};

static struct metrics_slot	 private_slot;
struct metrics_slot		*metrics_own = &private_slot;

static void			*region;
static size_t			 region_len;
static struct metrics_head	*head;
static struct metrics_slot	*slots;		/* [head->nslots] */

/* The label values; the index is the enum's. */
static const char *const verb_names[MV_COUNT] = {
	"helo", "ehlo", "lhlo", "mail", "rcpt", "data", "bdat", "rset", "noop",
	"quit", "vrfy", "expn", "help", "starttls", "auth", "xclient", "etrn",
	"turn", "other",
};
static const char *const reply_extra[MR_COUNT - MV_COUNT] = { "connect", "data_end" };
static const char *const class_names[4] = { "2xx", "3xx", "4xx", "5xx" };
static const char *const message_names[MM_COUNT] = { "accepted", "rejected", "failed" };
/* lcore_enter()'s what for each handler event (session_event_name, hook kinds) */
static const char *const handler_what[MH_COUNT] = {
	"CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "DATA_END", "RSET",
	"QUIT", "VRFY", "EXPN", "AUTH", "data", "abort", "outcome", "cancel",
	"close", "bind", "timer", "start", "redis", "",
};
static const char *const handler_names[MH_COUNT] = {
	"connect", "helo", "ehlo", "mail", "rcpt", "data", "data_end", "rset",
	"quit", "vrfy", "expn", "auth", "message_data", "abort", "outcome",
	"cancel", "close", "bind", "timer", "start", "redis", "other",
};
/* the buckets' upper bounds, in ns and as the le label says them */
static const uint64_t bucket_ns[METRICS_BUCKETS] = {
	50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
	25000000, 50000000, 100000000, 250000000, 500000000, 1000000000,
	2500000000u, 5000000000u, 10000000000u,
};
static const char *const bucket_le[METRICS_BUCKETS] = {
	"5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
	"0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
};

/* ---- counting ---------------------------------------------------------- */

enum metrics_verb
metrics_verb(const char *verb)
{
	if (verb != NULL)
		for (unsigned i = 0; i < MV_OTHER; i++)
			if (strcasecmp(verb, verb_names[i]) == 0)
				return (enum metrics_verb)i;
	return MV_OTHER;
}

/* The handler event of what, by name. */
static enum metrics_handler
handler_lookup(const char *what)
{
	for (unsigned i = 0; i < MH_OTHER; i++)
		if (strcmp(what, handler_what[i]) == 0)
			return (enum metrics_handler)i;
	return MH_OTHER;
}

enum metrics_handler
metrics_handler(const char *what)
{
	/*
	 * The callers pass the same few string constants every time: looked
	 * up by address (a multiplicative hash into a small table), by name
	 * only the first time or after a collision.
	 */
	static struct { const char *what; enum metrics_handler h; } seen[64];
	size_t	 i = (size_t)(((uint64_t)(uintptr_t)what * 0x9e3779b97f4a7c15ULL) >> 58);

	if (seen[i].what == what && what != NULL)
		return seen[i].h;
	if (what == NULL)
		return MH_OTHER;
	seen[i].what = what;
	seen[i].h = handler_lookup(what);
	return seen[i].h;
}

void
metrics_handler_time(enum metrics_handler h, uint64_t ns)
{
	unsigned b = 0;

	if ((unsigned)h >= MH_COUNT)
		h = MH_OTHER;
	while (b < METRICS_BUCKETS && ns > bucket_ns[b])
		b++;
	metrics_own->hist[h][b]++;
	metrics_own->hist_ns[h] += ns;
}

/* ---- the region -------------------------------------------------------- */

int
metrics_map(unsigned n)
{
	size_t	 hlen = (sizeof(struct metrics_head) + 63) & ~(size_t)63;
	void	*p;

	metrics_unmap();
	region_len = hlen + (size_t)n * sizeof(struct metrics_slot);
	p = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	region = p;
	head = p;
	head->nslots = n;
	slots = (struct metrics_slot *)((char *)p + hlen);
	return 0;
}

void
metrics_unmap(void)
{
	if (metrics_own != &private_slot)
		metrics_own = &private_slot;
	if (region != NULL)
		munmap(region, region_len);
	region = NULL;
	head = NULL;
	slots = NULL;
}

int
metrics_slot_take(unsigned worker)
{
	if (head == NULL)
		return -1;
	for (unsigned i = 0; i < head->nslots; i++)
		if (__atomic_load_n(&slots[i].in_use, __ATOMIC_ACQUIRE) == 0) {
			memset(&slots[i], 0, sizeof(slots[i]));
			slots[i].worker = worker;
			__atomic_store_n(&slots[i].in_use, 1, __ATOMIC_RELEASE);
			return (int)i;
		}
	return -1;
}

/* Adds the counters of from to to (the gauges are not sums over time). */
static void
slot_add(struct metrics_slot *to, const struct metrics_slot *from)
{
	const uint64_t	*f = from->c;
	uint64_t	*t = to->c;
	size_t		 n = (sizeof(*from) - offsetof(struct metrics_slot, c)) / sizeof(uint64_t);

	for (size_t i = 0; i < n; i++)
		t[i] += __atomic_load_n(&f[i], __ATOMIC_RELAXED);
}

void
metrics_slot_retire(int slot)
{
	uint32_t s;

	if (head == NULL || slot < 0 || (unsigned)slot >= head->nslots ||
	    slots[slot].in_use == 0)
		return;
	s = head->seq;
	__atomic_store_n(&head->seq, s + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	slot_add(&head->retired, &slots[slot]);
	__atomic_store_n(&slots[slot].in_use, 0, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	__atomic_store_n(&head->seq, s + 2, __ATOMIC_RELEASE);
}

void
metrics_master_count(enum metrics_master m)
{
	if (head != NULL)
		__atomic_store_n(&head->master[m], head->master[m] + 1, __ATOMIC_RELAXED);
}

void
metrics_attach(int slot)
{
	if (head == NULL || slot < 0 || (unsigned)slot >= head->nslots) {
		memset(&private_slot, 0, sizeof(private_slot));
		metrics_own = &private_slot;
		return;
	}
	metrics_own = &slots[slot];
	metrics_own->pid = getpid();
}

/* ---- rendering ----------------------------------------------------------- */

/* A consistent view: the sums, the master's counters and the live slots' gauges. */
struct view {
	struct metrics_slot	sum;
	uint64_t		master[MX_COUNT];
	int64_t			open;
	unsigned		nlive;
	struct { unsigned worker; int64_t pid, bytes; } *live;
};

static void
view_take(struct view *v)
{
	for (int tries = 0; tries < 1000; tries++) {
		uint32_t s = __atomic_load_n(&head->seq, __ATOMIC_ACQUIRE);

		if (s & 1)
			continue;
		memset(&v->sum, 0, sizeof(v->sum));
		v->open = 0;
		v->nlive = 0;
		slot_add(&v->sum, &head->retired);
		for (unsigned i = 0; i < MX_COUNT; i++)
			v->master[i] = __atomic_load_n(&head->master[i], __ATOMIC_RELAXED);
		for (unsigned i = 0; i < head->nslots; i++) {
			const struct metrics_slot *sl = &slots[i];

			if (__atomic_load_n(&sl->in_use, __ATOMIC_ACQUIRE) == 0)
				continue;
			slot_add(&v->sum, sl);
			v->open += __atomic_load_n(&sl->open, __ATOMIC_RELAXED);
			if (v->live != NULL) {
				v->live[v->nlive].worker = sl->worker;
				v->live[v->nlive].pid = __atomic_load_n(&sl->pid, __ATOMIC_RELAXED);
				v->live[v->nlive].bytes = __atomic_load_n(&sl->lua_bytes,
				    __ATOMIC_RELAXED);
			}
			v->nlive++;
		}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&head->seq, __ATOMIC_RELAXED) == s)
			return;
	}
}

static void
help(FILE *f, const char *name, const char *type, const char *text)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

static void
render(FILE *f, const struct view *v)
{
	const struct metrics_slot *s = &v->sum;

	help(f, "luasmtpd_connections_total", "counter",
	    "Connections accepted (before TLS and Lua; refusals not included).");
	fprintf(f, "luasmtpd_connections_total %llu\n",
	    (unsigned long long)s->c[M_CONNECTIONS]);
	help(f, "luasmtpd_connections_open", "gauge", "Connections open now.");
	fprintf(f, "luasmtpd_connections_open %lld\n", (long long)v->open);
	help(f, "luasmtpd_connections_refused_total", "counter",
	    "Connections refused before any Lua: limit (421: maxConnections, "
	    "maxConnectionsPerClient), proxy (closed: not from proxyFrom, no good PROXY header).");
	fprintf(f, "luasmtpd_connections_refused_total{reason=\"limit\"} %llu\n",
	    (unsigned long long)s->c[M_REFUSED_LIMIT]);
	fprintf(f, "luasmtpd_connections_refused_total{reason=\"proxy\"} %llu\n",
	    (unsigned long long)s->c[M_REFUSED_PROXY]);

	help(f, "luasmtpd_commands_total", "counter",
	    "Command lines by verb (unknown verbs and malformed lines: other).");
	for (unsigned i = 0; i < MV_COUNT; i++)
		fprintf(f, "luasmtpd_commands_total{verb=\"%s\"} %llu\n", verb_names[i],
		    (unsigned long long)s->commands[i]);

	help(f, "luasmtpd_replies_total", "counter",
	    "Replies by what they answer and by class.");
	for (unsigned e = 0; e < MR_COUNT; e++)
		for (unsigned k = 0; k < 4; k++)
			fprintf(f, "luasmtpd_replies_total{event=\"%s\",class=\"%s\"} %llu\n",
			    e < MV_COUNT ? verb_names[e] : reply_extra[e - MV_COUNT],
			    class_names[k], (unsigned long long)s->replies[e][k]);

	help(f, "luasmtpd_messages_total", "counter",
	    "Messages by outcome: accepted (2xx at the end of data), rejected "
	    "(the policy's 4xx/5xx), failed (ended by the server).");
	for (unsigned i = 0; i < MM_COUNT; i++)
		fprintf(f, "luasmtpd_messages_total{result=\"%s\"} %llu\n",
		    message_names[i], (unsigned long long)s->messages[i]);
	help(f, "luasmtpd_message_octets_total", "counter",
	    "Octets of message data received, by the message's outcome.");
	for (unsigned i = 0; i < MM_COUNT; i++)
		fprintf(f, "luasmtpd_message_octets_total{result=\"%s\"} %llu\n",
		    message_names[i], (unsigned long long)s->octets[i]);

	help(f, "luasmtpd_handler_seconds", "histogram",
	    "Time of each call from the server into Lua, by event.");
	for (unsigned h = 0; h < MH_COUNT; h++) {
		uint64_t n = 0;

		for (unsigned b = 0; b <= METRICS_BUCKETS; b++) {
			n += s->hist[h][b];
			fprintf(f, "luasmtpd_handler_seconds_bucket{event=\"%s\",le=\"%s\"} %llu\n",
			    handler_names[h], b < METRICS_BUCKETS ? bucket_le[b] : "+Inf",
			    (unsigned long long)n);
		}
		fprintf(f, "luasmtpd_handler_seconds_sum{event=\"%s\"} %llu.%09llu\n",
		    handler_names[h], (unsigned long long)(s->hist_ns[h] / 1000000000u),
		    (unsigned long long)(s->hist_ns[h] % 1000000000u));
		fprintf(f, "luasmtpd_handler_seconds_count{event=\"%s\"} %llu\n",
		    handler_names[h], (unsigned long long)n);
	}
	help(f, "luasmtpd_handler_errors_total", "counter",
	    "Handler runs that raised an error (the client got 451).");
	fprintf(f, "luasmtpd_handler_errors_total %llu\n",
	    (unsigned long long)s->c[M_HANDLER_ERRORS]);
	help(f, "luasmtpd_handler_budget_stops_total", "counter",
	    "Handler runs stopped by their instruction, CPU or memory budget.");
	fprintf(f, "luasmtpd_handler_budget_stops_total %llu\n",
	    (unsigned long long)s->c[M_BUDGET_STOPS]);
	help(f, "luasmtpd_lua_memory_bytes", "gauge",
	    "The Lua heap of each worker process, after its last handler run.");
	for (unsigned i = 0; v->live != NULL && i < v->nlive; i++)
		fprintf(f, "luasmtpd_lua_memory_bytes{worker=\"%u\",pid=\"%lld\"} %lld\n",
		    v->live[i].worker, (long long)v->live[i].pid,
		    (long long)v->live[i].bytes);

	help(f, "luasmtpd_tls_handshakes_total", "counter",
	    "TLS handshakes (STARTTLS and implicit TLS) by result.");
	fprintf(f, "luasmtpd_tls_handshakes_total{result=\"success\"} %llu\n",
	    (unsigned long long)s->c[M_TLS_OK]);
	fprintf(f, "luasmtpd_tls_handshakes_total{result=\"failure\"} %llu\n",
	    (unsigned long long)s->c[M_TLS_FAILED]);
	help(f, "luasmtpd_auth_total", "counter", "AUTH verdicts by result.");
	fprintf(f, "luasmtpd_auth_total{result=\"success\"} %llu\n",
	    (unsigned long long)s->c[M_AUTH_OK]);
	fprintf(f, "luasmtpd_auth_total{result=\"failure\"} %llu\n",
	    (unsigned long long)s->c[M_AUTH_FAILED]);

	help(f, "luasmtpd_worker_restarts_total", "counter",
	    "Worker processes restarted after an unexpected exit or a block.");
	fprintf(f, "luasmtpd_worker_restarts_total %llu\n",
	    (unsigned long long)v->master[MX_RESTARTS]);
	help(f, "luasmtpd_reloads_total", "counter", "Reloads (SIGHUP) by result.");
	fprintf(f, "luasmtpd_reloads_total{result=\"success\"} %llu\n",
	    (unsigned long long)v->master[MX_RELOADS_OK]);
	fprintf(f, "luasmtpd_reloads_total{result=\"failure\"} %llu\n",
	    (unsigned long long)v->master[MX_RELOADS_FAILED]);
}

char *
metrics_render(size_t *len)
{
	struct view	 v;
	char		*buf = NULL;
	size_t		 n = 0;
	FILE		*f;

	memset(&v, 0, sizeof(v));
	if (head != NULL) {
		if ((v.live = calloc(head->nslots + 1, sizeof(*v.live))) == NULL)
			return NULL;
		view_take(&v);
	} else {
		/* not mapped (a test, the harness): this process's own counts */
		slot_add(&v.sum, metrics_own);
		v.open = metrics_own->open;
	}
	if ((f = open_memstream(&buf, &n)) == NULL) {
		free(v.live);
		return NULL;
	}
	render(f, &v);
	free(v.live);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	if (len != NULL)
		*len = n;
	return buf;
}
