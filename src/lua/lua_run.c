/*
 * lua_run.c -- handler runs: coroutines resumed under budgets, and the
 * allocator that bounds the Lua heap.
 *
 * smtp_core.call, .thread and .limits; the coroutine.resume and
 * coroutine.wrap a policy gets (Lua's own, except that they tell the
 * budgets which thread runs, so that a coroutine a handler makes is bounded
 * like the handler); the watchdog of the server (lcore_watchdog_enable,
 * lcore_watchdog_tick); the allocator of the server's state (lcore_alloc: a
 * limit per worker, a budget per run); and the calls into Lua from C
 * (lcore_enter, lcore_leave), which the worker's busy record (busy.h)
 * follows and after which a run that ran out of memory is collected.
 */
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "busy.h"
#include "lua_core.h"
#include "lua_core_impl.h"
#include "metrics.h"

#define RUN_PERIOD		1000	/* harness: instructions between two checks */
#define LIMITS_MAGIC		0x6c6d7473u
#define HEAP_RESERVE		((size_t)1 << 20)	/* what runs leave to the code around them */
#define MEM_DEFAULT_MIN		((size_t)64 << 20)
#define MEM_DEFAULT_MAX		((size_t)512 << 20)

/* ---- runs and their budgets ---------------------------------------------- */

/*
 * A run is one resume of a handler's coroutine (smtp_core.call) under
 * three budgets: VM instructions, CPU time, and growth of the Lua heap.  The
 * innermost run is cur_run (runs nest: a handler's decide runs other
 * handlers), and its cur is the thread running: the handler's coroutine, or
 * one that it resumed through coroutine.resume or a coroutine.wrap function.
 *
 * The budgets are checked by a count hook, run_hook, on the threads of the
 * run (hooks are per thread; lua_newthread copies its creator's, and the
 * tracked resume arms a thread as it enters).  Without the watchdog (the
 * harness: determinism) a run is armed from its first instruction: the
 * hook fires every RUN_PERIOD instructions, counts them, and reads the
 * thread's CPU clock and the heap size.  With the watchdog (the server) a
 * run sets no hook at all: with any count hook set, the VM traces every
 * instruction, which short handlers should not pay for.  Instead
 * lcore_watchdog_tick(), called from a CPU-time timer's signal handler,
 * counts the ticks of the run, arms the instruction count of a run that
 * is still running at its second tick, and stops a run over its CPU time at
 * its next instruction, however few instructions its C calls took; the
 * allocator refuses growth past the heap budgets.  Once over a budget the
 * hook fires on every instruction of every thread of the run, so a pcall
 * inside the handler cannot swallow the error.
 *
 * The state the signal handler and the allocator touch is volatile and
 * written only on this thread; lua_sethook is async-signal-safe (it stores
 * four fields and marks the thread's frames to trap, as lua.c does from
 * SIGINT).
 */
enum over { OVER_NONE, OVER_INSTR, OVER_CPU, OVER_MEMORY, OVER_HEAP };

struct run {
	struct run		*outer;
	lua_State *volatile	 cur;		/* the thread running */
	struct lcore_heap	*heap;		/* the state's, if lcore_alloc is its allocator */
	int			 budget;	/* instructions */
	int			 cpu_ms;
	long			 used;		/* instructions counted since armed */
	volatile sig_atomic_t	 armed;		/* the instruction count is on */
	volatile sig_atomic_t	 over;		/* enum over: stop at every instruction */
	volatile sig_atomic_t	 refused;	/* enum over: an allocation refused, none granted since */
	volatile sig_atomic_t	 ticks;		/* watchdog ticks within this run */
	sig_atomic_t		 cpu_ticks;	/* over its CPU time past this many */
	int64_t			 cpu0_ns;	/* harness: the thread's CPU clock at the start */
	size_t			 mem_base;	/* the heap at the start */
	size_t			 mem_budget;	/* bytes it may grow by */
};

static struct run *volatile	 cur_run;
static volatile sig_atomic_t	 wd_on;		/* the watchdog arms the budgets */
static unsigned			 wd_tick_us = 10000;
static struct busy		*busy_rec;	/* the worker's record, or NULL */
static unsigned			 depth;		/* calls into Lua from C in progress */
static const char		*enter_what;	/* the outermost call's event ... */
static struct timespec		 enter_ts;	/* ... and when it began */
static int			 gc_due;	/* a run ran out of memory: collect at the end */

static void	run_hook(lua_State *, lua_Debug *);

static int64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t
heap_size(lua_State *L)
{
	return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

/* The instructions until the next check: the rest of the budget, or a period. */
static int
run_period(const struct run *r)
{
	long left = r->budget - r->used;

	if (left < 1)
		left = 1;
	if (!wd_on && left > RUN_PERIOD)
		left = RUN_PERIOD;
	return (int)left;
}

/* Hooks th as the run needs: every instruction once over, else its count once armed. */
static void
run_arm(struct run *r, lua_State *th)
{
	if (r->over == OVER_NONE && r->refused == OVER_NONE) {
		if (!r->armed || lua_gethook(th) == run_hook)
			return;
		lua_sethook(th, run_hook, LUA_MASKCOUNT, run_period(r));
		if (r->over == OVER_NONE && r->refused == OVER_NONE)
			return;		/* else a tick came in between */
	}
	lua_sethook(th, run_hook, LUA_MASKCOUNT, 1);
}

static void
format_bytes(char *buf, size_t len, size_t n)
{
	if (n % ((size_t)1 << 20) == 0)
		snprintf(buf, len, "%zu MiB", n >> 20);
	else if (n % 1024 == 0)
		snprintf(buf, len, "%zu KiB", n >> 10);
	else
		snprintf(buf, len, "%zu bytes", n);
}

/* The message of a run over budget. */
static void
over_message(const struct run *r, int over, char *buf, size_t len)
{
	char size[32];

	switch (over) {
	case OVER_INSTR:
		snprintf(buf, len, "handler exceeded its instruction budget (%d instructions)",
		    r->budget);
		break;
	case OVER_CPU:
		snprintf(buf, len, "handler exceeded its CPU time budget (%d ms)", r->cpu_ms);
		break;
	case OVER_MEMORY:
		format_bytes(size, sizeof(size), r->mem_budget);
		snprintf(buf, len, "handler exceeded its memory budget (%s)", size);
		break;
	default:
		format_bytes(size, sizeof(size), r->heap != NULL ? r->heap->limit : 0);
		snprintf(buf, len, "handler ran into the Lua memory limit (%s)", size);
		break;
	}
}

static void
run_hook(lua_State *L, lua_Debug *ar)
{
	struct run	*r = cur_run;
	char		 msg[128];

	(void)ar;
	if (r == NULL) {	/* a thread a past run hooked, resumed outside any */
		lua_sethook(L, NULL, 0, 0);
		return;
	}
	if (r->over == OVER_NONE) {
		if (r->refused != OVER_NONE)	/* the collection did not help */
			r->over = r->refused;
		else if ((r->used += lua_gethookcount(L)) >= r->budget)
			r->over = OVER_INSTR;
		else if (!wd_on && r->cpu_ms > 0 &&
		    thread_cpu_ns() - r->cpu0_ns >= (int64_t)r->cpu_ms * 1000000)
			r->over = OVER_CPU;
		else if (!wd_on && r->heap == NULL && r->mem_budget > 0 &&
		    heap_size(L) > r->mem_base + r->mem_budget) {
			lua_gc(L, LUA_GCCOLLECT, 0);	/* garbage does not count */
			if (heap_size(L) > r->mem_base + r->mem_budget)
				r->over = OVER_MEMORY;
		}
		if (r->over == OVER_NONE) {
			if (r->armed)
				lua_sethook(L, run_hook, LUA_MASKCOUNT, run_period(r));
			else
				lua_sethook(L, NULL, 0, 0);	/* the allocator's check, passed */
			if (r->over == OVER_NONE)
				return;
		}
	}
	lua_sethook(L, run_hook, LUA_MASKCOUNT, 1);	/* re-fires: pcall cannot hide it */
	over_message(r, r->over, msg, sizeof(msg));
	lua_pushstring(L, msg);
	lua_error(L);
}

/*
 * A run that failed (its error on co's stack): one over a heap budget gets
 * the budget's message in place of "not enough memory", with where it was,
 * and the heap is collected once the call from C that ran it ends (the
 * failed coroutine holds what it allocated until then).
 */
static void
run_failed(lua_State *co, const struct run *r)
{
	int		 over = r->over != OVER_NONE ? r->over : r->refused;
	const char	*err;
	char		 msg[128], where[LUA_IDSIZE + 32] = "";
	lua_Debug	 ar;

	if (over != OVER_MEMORY && over != OVER_HEAP)
		return;
	gc_due = 1;
	if ((err = lua_tostring(co, -1)) == NULL || strcmp(err, "not enough memory") != 0)
		return;
	for (int level = 0; lua_getstack(co, level, &ar); level++)
		if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
			snprintf(where, sizeof(where), "%s:%d: ", ar.short_src, ar.currentline);
			break;
		}
	over_message(r, over, msg, sizeof(msg));
	lua_pop(co, 1);
	lua_pushfstring(co, "%s%s", where, msg);
}

void
lcore_watchdog_enable(int on, unsigned tick_us)
{
	wd_tick_us = tick_us > 0 ? tick_us : 10000;
	wd_on = on != 0;
}

/* Async-signal-safe: see the comment on runs above. */
void
lcore_watchdog_tick(void)
{
	struct run *r = cur_run;

	if (r == NULL || r->over != OVER_NONE)
		return;
	r->ticks = r->ticks + 1;
	if (r->cpu_ticks > 0 && r->ticks > r->cpu_ticks) {
		r->over = OVER_CPU;
		lua_sethook(r->cur, run_hook, LUA_MASKCOUNT, 1);
	} else if (r->ticks >= 2 && !r->armed) {
		r->armed = 1;
		lua_sethook(r->cur, run_hook, LUA_MASKCOUNT, run_period(r));
	}
}

/*
 * Resumes co (its function and n arguments, or n values for a yield, on its
 * stack) as a run under lim.  lua_resume's status; *nres results are on
 * co's stack.
 */
static int
co_resume(lua_State *L, lua_State *co, const struct lcore_limits *lim, int n, int *nres)
{
	struct run	 r;
	void		*ud;
	size_t		 limit;
	int		 st;

	memset(&r, 0, sizeof(r));
	r.outer = cur_run;
	r.cur = co;
	r.budget = lim->budget;
	r.cpu_ms = lim->cpu_ms;
	r.heap = lua_getallocf(L, &ud) == lcore_alloc ? ud : NULL;
	limit = r.heap != NULL && r.heap->limit > 0 ? r.heap->limit : lcore_memory_default();
	r.mem_budget = lim->memory > 0 ? lim->memory : limit / 4;
	r.mem_base = r.heap != NULL ? r.heap->total : heap_size(L);
	if (wd_on) {
		r.cpu_ticks = (sig_atomic_t)(((int64_t)r.cpu_ms * 1000 + wd_tick_us - 1) / wd_tick_us);
	} else {
		r.armed = 1;
		r.cpu0_ns = thread_cpu_ns();
		lua_sethook(co, run_hook, LUA_MASKCOUNT, run_period(&r));
	}
	atomic_signal_fence(memory_order_seq_cst);
	cur_run = &r;
	atomic_signal_fence(memory_order_seq_cst);
	st = lua_resume(co, L, n, nres);
	atomic_signal_fence(memory_order_seq_cst);
	cur_run = r.outer;
	atomic_signal_fence(memory_order_seq_cst);
	if (lua_gethook(co) == run_hook)
		lua_sethook(co, NULL, 0, 0);
	if (st != LUA_OK && st != LUA_YIELD) {
		if (r.over != OVER_NONE || r.refused != OVER_NONE)
			metrics_count(M_BUDGET_STOPS);
		run_failed(co, &r);
	}
	return st;
}

/* Resumes co from L within the current run, if any: co is the thread running meanwhile. */
static int
tracked_resume(lua_State *L, lua_State *co, int n, int *nres)
{
	struct run	*r = cur_run;
	lua_State	*prev;
	int		 st;

	if (r == NULL)
		return lua_resume(co, L, n, nres);
	prev = r->cur;
	r->cur = co;
	run_arm(r, co);
	st = lua_resume(co, L, n, nres);
	r->cur = prev;
	run_arm(r, prev);
	return st;
}

/* ---- the heap ------------------------------------------------------------ */

size_t
lcore_memory_default(void)
{
	static size_t	 def;
	long		 pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	long		 cores = sysconf(_SC_NPROCESSORS_ONLN);

	if (def != 0)
		return def;
	def = MEM_DEFAULT_MAX;
	if (pages > 0 && psize > 0) {
		size_t share = (size_t)pages * (size_t)psize / (2 * (size_t)(cores > 0 ? cores : 1));

		if (share < def)
			def = share < MEM_DEFAULT_MIN ? MEM_DEFAULT_MIN : share;
	}
	return def;
}

void
lcore_heap_limit(struct lcore_heap *h, size_t limit)
{
	h->limit = limit;
	h->reserve = limit / 8 < HEAP_RESERVE ? limit / 8 : HEAP_RESERVE;
}

/*
 * Small blocks are recycled.  Lua allocates and frees tables, strings and
 * closures by the dozen per SMTP command, and a LIFO list per 16-octet size
 * class costs a fraction of malloc and free.  The rule that makes it safe:
 * a block Lua knows as s octets (Lua passes every block's size back) has
 * room for its class, (s - 1) / BLOCK_GRAIN, in full if s <= BLOCK_SMALL,
 * else for s.  So a block of a class fits any request of that class, a
 * realloc within a class or down to a smaller one keeps the block, and a
 * freed block joins the list of its size's class.  At most BLOCK_KEEP
 * blocks a class stay listed (1.1 MiB at most; what Lua frees between two
 * collections, which malloc would keep too); one process, one thread.  A
 * collection after a run over its memory budget gives them back.
 */
#define BLOCK_GRAIN	16
#define BLOCK_SMALL	256
#define BLOCK_CLASSES	(BLOCK_SMALL / BLOCK_GRAIN)
#define BLOCK_KEEP	512

struct block {
	struct block	*next;
};

/*
 * Under AddressSanitizer a listed block is poisoned but for its link (which
 * LeakSanitizer must read): a use after free is still caught.
 */
#if defined(__SANITIZE_ADDRESS__)
#define BLOCK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BLOCK_ASAN 1
#endif
#endif
#ifdef BLOCK_ASAN
#include <sanitizer/asan_interface.h>
#define block_poison(b, n)	ASAN_POISON_MEMORY_REGION((b) + 1, (n) - sizeof(*(b)))
#define block_unpoison(b, n)	ASAN_UNPOISON_MEMORY_REGION((b) + 1, (n) - sizeof(*(b)))
#else
#define block_poison(b, n)	((void)(b), (void)(n))
#define block_unpoison(b, n)	((void)(b), (void)(n))
#endif

static struct block	*block_list[BLOCK_CLASSES];
static unsigned		 block_listed[BLOCK_CLASSES];

static size_t
block_class(size_t n)
{
	return (n - 1) / BLOCK_GRAIN;
}

/* Gives every listed block back to malloc. */
static void
block_drain(void)
{
	for (size_t k = 0; k < BLOCK_CLASSES; k++) {
		while (block_list[k] != NULL) {
			struct block *b = block_list[k];

			block_unpoison(b, (k + 1) * BLOCK_GRAIN);
			block_list[k] = b->next;
			free(b);
		}
		block_listed[k] = 0;
	}
}

/* malloc or realloc, with the listed blocks given back first if it fails */
static void *
block_sys(void *ptr, size_t n)
{
	void *p = ptr == NULL ? malloc(n) : realloc(ptr, n);

	if (p == NULL) {
		block_drain();
		p = ptr == NULL ? malloc(n) : realloc(ptr, n);
	}
	return p;
}

/* A block for n octets (n >= 1). */
static void *
block_get(size_t n)
{
	size_t		 k;
	struct block	*b;

	if (n > BLOCK_SMALL)
		return block_sys(NULL, n);
	k = block_class(n);
	if ((b = block_list[k]) == NULL)
		return block_sys(NULL, (k + 1) * BLOCK_GRAIN);
	block_unpoison(b, (k + 1) * BLOCK_GRAIN);
	block_list[k] = b->next;
	block_listed[k]--;
	return b;
}

/* Takes back the block p Lua knew as n octets. */
static void
block_put(void *p, size_t n)
{
	size_t		 k;
	struct block	*b = p;

	if (n > BLOCK_SMALL || block_listed[k = block_class(n)] >= BLOCK_KEEP) {
		free(p);
		return;
	}
	b->next = block_list[k];
	block_list[k] = b;
	block_listed[k]++;
	block_poison(b, (k + 1) * BLOCK_GRAIN);
}

/* realloc for the block p Lua knew as old octets (p may be NULL; n >= 1) */
static void *
block_resize(void *p, size_t old, size_t n)
{
	void *q;

	if (p == NULL)
		return block_get(n);
	if (old > BLOCK_SMALL)
		return block_sys(p, n > BLOCK_SMALL ? n :
		    (block_class(n) + 1) * BLOCK_GRAIN);
	if (block_class(n) <= block_class(old))
		return p;		/* it has room: its class's, or more */
	if ((q = block_get(n)) == NULL)
		return NULL;
	memcpy(q, p, old);
	block_put(p, old);
	return q;
}

/*
 * lua_Alloc over the blocks above that counts the heap and refuses growth past the
 * limit (less a reserve while a run is on, so that what reports the failure
 * finds memory) and past the budget of the run.  A refusal is what Lua
 * handles as an allocation failure: a full collection, one more try, then
 * "not enough memory"; the run is hooked so that its next instruction ends
 * it if the collection did not help.
 */
void *
lcore_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct lcore_heap	*h = ud;
	struct run		*r;
	size_t			 old = ptr != NULL ? osize : 0;
	void			*p;

	if (nsize == 0) {
		if (ptr != NULL)
			block_put(ptr, old);
		h->total -= old;
		return NULL;
	}
	if (nsize > old) {
		size_t	grow = nsize - old;
		int	why = OVER_NONE;

		r = cur_run;
		if (h->limit > 0 && h->total + grow > h->limit - (r != NULL ? h->reserve : 0))
			why = OVER_HEAP;
		else if (r != NULL && h->total + grow > r->mem_base + r->mem_budget)
			why = OVER_MEMORY;
		if (why != OVER_NONE) {
			if (r != NULL) {
				r->refused = why;
				lua_sethook(r->cur, run_hook, LUA_MASKCOUNT, 1);
			}
			return NULL;
		}
	}
	if ((p = block_resize(ptr, old, nsize)) == NULL)
		return NULL;
	h->total = h->total - old + nsize;
	if (nsize > old && (r = cur_run) != NULL)
		r->refused = OVER_NONE;
	return p;
}

/* ---- calls into Lua from C ------------------------------------------------ */

void
lcore_busy_attach(struct busy *b)
{
	busy_rec = b;
}

void
lcore_enter(uint64_t id, const char *what)
{
	if (depth++ > 0)
		return;
	if (busy_rec != NULL)
		busy_enter(busy_rec, id, what);
	enter_what = what;
	clock_gettime(CLOCK_MONOTONIC, &enter_ts);
}

void
lcore_leave(lua_State *L)
{
	struct timespec	 now;
	void		*ud;

	if (depth > 0 && --depth > 0)
		return;
	if (busy_rec != NULL)
		busy_leave(busy_rec);
	clock_gettime(CLOCK_MONOTONIC, &now);
	metrics_handler_time(metrics_handler(enter_what), (uint64_t)
	    ((now.tv_sec - enter_ts.tv_sec) * 1000000000LL + now.tv_nsec - enter_ts.tv_nsec));
	if (lua_getallocf(L, &ud) == lcore_alloc)
		metrics_own->lua_bytes = (int64_t)((struct lcore_heap *)ud)->total;
	if (gc_due) {
		gc_due = 0;
		lua_gc(L, LUA_GCCOLLECT, 0);
		block_drain();
#ifdef __GLIBC__
		malloc_trim(0);		/* give the pages back: the worker's RSS drops */
#endif
	}
}

/* ---- smtp_core.run, .call, .thread, .limits -------------------------------- */

static int
check_budget(lua_State *L, int idx)
{
	lua_Integer b = luaL_checkinteger(L, idx);

	luaL_argcheck(L, b >= 1, idx, "budget must be positive");
	return b > INT_MAX ? INT_MAX : (int)b;
}

/* A limits userdata at idx, or a bare instruction budget (default CPU and memory). */
static void
check_limits(lua_State *L, int idx, struct lcore_limits *out)
{
	const struct lcore_limits *lim;

	if (lua_type(L, idx) == LUA_TUSERDATA && lua_rawlen(L, idx) == sizeof(*lim) &&
	    (lim = lua_touserdata(L, idx))->magic == LIMITS_MAGIC) {
		*out = *lim;
		return;
	}
	out->magic = LIMITS_MAGIC;
	out->budget = check_budget(L, idx);
	out->cpu_ms = CPU_DEFAULT_MS;
	out->memory = 0;
}

/*
 * smtp_core.limits(instructions, cpu_seconds[, memory_bytes]) -> limits
 * The budgets of a run, for call: memory 0 or absent is a quarter
 * of the heap's limit.
 */
int
lcore_limits(lua_State *L)
{
	int			 budget = check_budget(L, 1);
	lua_Number		 cpu = luaL_checknumber(L, 2);
	lua_Integer		 mem = luaL_optinteger(L, 3, 0);
	struct lcore_limits	*lim;

	luaL_argcheck(L, cpu > 0 && cpu <= 86400, 2, "seconds in (0, 86400] expected");
	luaL_argcheck(L, mem >= 0, 3, "bytes >= 0 expected");
	lim = lua_newuserdatauv(L, sizeof(*lim), 0);
	lim->magic = LIMITS_MAGIC;
	lim->budget = budget;
	lim->cpu_ms = cpu * 1000 < 1 ? 1 : (int)(cpu * 1000 + 0.5);
	lim->memory = (size_t)mem;
	return 1;
}

/*
 * smtp_core.call(co, limits | budget, fn, ...) -> true | nil | false, err
 * One handler run on a pooled coroutine, without a trampoline: an idle co
 * (new, or its last function returned) starts fn(...); a co waiting in a
 * yield is resumed with ... instead (fn is ignored).  true: fn returned
 * (its results are dropped and co is idle again, ready for the next call);
 * nil: it waits (yielded); false, err: it failed (co is dead for good).
 * The limits are smtp_core.limits' or a bare instruction budget.
 */
int
lcore_call(lua_State *L)
{
	lua_State		*co = lua_tothread(L, 1);
	struct lcore_limits	 lim;
	int			 n = lua_gettop(L) - 3, nres, st;
	lua_Debug		 ar;

	check_limits(L, 2, &lim);
	luaL_argexpected(L, co != NULL, 1, "coroutine");
	st = lua_status(co);
	if (co == L || (st != LUA_OK && st != LUA_YIELD) ||
	    (st == LUA_OK && (lua_gettop(co) != 0 || lua_getstack(co, 0, &ar) > 0))) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot call on a busy coroutine");
		return 2;
	}
	if (st == LUA_OK)
		luaL_checktype(L, 3, LUA_TFUNCTION);
	else if (lua_gettop(L) >= 3)
		lua_remove(L, 3);	/* a wait resumed: its values only */
	if (n < 0)
		n = 0;
	if (!lua_checkstack(co, n + 2)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "too many arguments to call");
		return 2;
	}
	lua_xmove(L, co, lua_gettop(L) - 2);
	st = co_resume(L, co, &lim, n, &nres);
	if (st == LUA_OK) {
		lua_settop(co, 0);	/* idle: the next call starts afresh */
		lua_pushboolean(L, 1);
		return 1;
	}
	if (st == LUA_YIELD) {
		lua_pop(co, nres);	/* what the wait yielded: no one reads it */
		return 0;
	}
	metrics_count(M_HANDLER_ERRORS);
	lua_pushboolean(L, 0);
	lua_xmove(co, L, 1);		/* the error object */
	return 2;
}

/* smtp_core.thread() -> an idle coroutine for smtp_core.call (no function) */
int
lcore_thread(lua_State *L)
{
	lua_newthread(L);
	return 1;
}


/* ---- coroutine.resume and coroutine.wrap, tracked -------------------------- */

/*
 * Lua's own (lcorolib.c, Lua 5.4), with the resume tracked: within a run,
 * the resumed thread is the run's while it runs, so the watchdog hooks it
 * and its budgets cover it.  coroutine.create needs nothing: a new thread
 * takes its creator's hook.
 */
static int
aux_resume(lua_State *L, lua_State *co, int narg)
{
	int st, nres;

	if (!lua_checkstack(co, narg)) {
		lua_pushliteral(L, "too many arguments to resume");
		return -1;
	}
	lua_xmove(L, co, narg);
	st = tracked_resume(L, co, narg, &nres);
	if (st == LUA_OK || st == LUA_YIELD) {
		if (!lua_checkstack(L, nres + 1)) {
			lua_pop(co, nres);
			lua_pushliteral(L, "too many results to resume");
			return -1;
		}
		lua_xmove(co, L, nres);
		return nres;
	}
	lua_xmove(co, L, 1);		/* the error object */
	return -1;
}

/* coroutine.resume(co, ...) -> true, ... | false, err */
int
lcore_coresume(lua_State *L)
{
	lua_State	*co = lua_tothread(L, 1);
	int		 r;

	luaL_argexpected(L, co != NULL, 1, "coroutine");
	r = aux_resume(L, co, lua_gettop(L) - 1);
	if (r < 0) {
		lua_pushboolean(L, 0);
		lua_insert(L, -2);
		return 2;
	}
	lua_pushboolean(L, 1);
	lua_insert(L, -(r + 1));
	return r + 1;
}

static int
aux_wrap(lua_State *L)
{
	lua_State	*co = lua_tothread(L, lua_upvalueindex(1));
	int		 r = aux_resume(L, co, lua_gettop(L));

	if (r < 0) {
		int st = lua_status(co);

		if (st != LUA_OK && st != LUA_YIELD) {	/* an error in the coroutine */
			st = lua_resetthread(co);	/* closes its to-be-closed variables */
			lua_xmove(co, L, 1);
		}
		if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
			luaL_where(L, 1);
			lua_insert(L, -2);
			lua_concat(L, 2);
		}
		return lua_error(L);
	}
	return r;
}

/* coroutine.wrap(fn) -> function */
int
lcore_cowrap(lua_State *L)
{
	lua_State *co;

	luaL_checktype(L, 1, LUA_TFUNCTION);
	co = lua_newthread(L);
	lua_pushvalue(L, 1);
	lua_xmove(L, co, 1);
	lua_pushcclosure(L, aux_wrap, 1);
	return 1;
}
