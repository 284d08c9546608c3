/*
 * lua_run.c -- handler coroutines: resumed under an instruction budget.
 *
 * smtp_core.run, smtp_core.call and smtp_core.thread, and the watchdog of
 * the server (lcore_watchdog_enable, lcore_watchdog_tick) that arms the
 * budget of a run still running at its second tick.
 */
#include <limits.h>
#include <signal.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "lua_core.h"
#include "lua_core_impl.h"

_Static_assert(LUA_EXTRASPACE >= sizeof(int), "the budget lives in LUA_EXTRASPACE");

/* ---- handler coroutines: resume under an instruction budget ------------- */

/*
 * The budget of the running resume lives in the coroutine's extra space
 * (LUA_EXTRASPACE, unused otherwise), so the hook needs no upvalue or
 * registry lookup.  Once over budget the hook fires on every instruction:
 * a pcall inside the handler cannot swallow it.
 *
 * Two ways to arm it.  Without the watchdog (the harness: determinism),
 * every resume sets a count hook of budget instructions.  With the watchdog
 * (the server), a resume sets no hook at all: with any count hook set, the
 * VM traces every instruction, which short handlers should not pay for.
 * Instead lcore_watchdog_tick(), called from a CPU-time timer's signal
 * handler, installs the count hook on a run that was already running at
 * the previous tick.  The state it reads is written only by lcore_run.
 */
static volatile sig_atomic_t	 wd_on;		/* the watchdog arms the budget */
static volatile sig_atomic_t	 wd_run;	/* bumped when a run starts or ends */
static volatile sig_atomic_t	 wd_budget;	/* the budget of the innermost run */
static lua_State *volatile	 wd_co;		/* its coroutine; NULL: no run */
static sig_atomic_t		 wd_seen;	/* tick: wd_run at the previous tick */
static sig_atomic_t		 wd_hooked;	/* tick: the wd_run it hooked */

static void
budget_again(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	lua_pushliteral(L, "handler exceeded its instruction budget");
	lua_error(L);
}

static void
budget_hook(lua_State *L, lua_Debug *ar)
{
	int budget;

	(void)ar;
	memcpy(&budget, lua_getextraspace(L), sizeof(budget));
	lua_sethook(L, budget_again, LUA_MASKCOUNT, 1);
	lua_pushfstring(L, "handler exceeded its instruction budget (%d instructions)", budget);
	lua_error(L);
}

void
lcore_watchdog_enable(int on)
{
	wd_on = on != 0;
}

/*
 * Async-signal-safe: only lua_sethook, which stores four fields of the
 * thread and marks its Lua frames to trap (lua.c does the same from SIGINT).
 * A run is hooked once: hooking again would restart its count (and an
 * outer run whose hook already fired keeps it).
 */
void
lcore_watchdog_tick(void)
{
	lua_State	*co = wd_co;
	sig_atomic_t	 run = wd_run;

	if (co != NULL && run == wd_seen && run != wd_hooked && lua_gethook(co) == NULL) {
		wd_hooked = run;
		lua_sethook(co, budget_hook, LUA_MASKCOUNT, wd_budget);
	}
	wd_seen = run;
}

static void
wd_bump(void)
{
	wd_run = wd_run == INT_MAX ? 0 : wd_run + 1;
}

/*
 * Resumes co (its function and n arguments, or n values for a yield, on its
 * stack) under budget: the watchdog's, or a count hook from its first
 * instruction.  lua_resume's status; *nres results are on co's stack.
 */
static int
co_resume(lua_State *L, lua_State *co, int budget, int n, int *nres)
{
	int st;

	memcpy(lua_getextraspace(co), &budget, sizeof(budget));
	if (wd_on) {
		/* runs nest (a handler's decide runs other handlers): keep the outer */
		lua_State	*outer = wd_co;
		int		 outer_budget = wd_budget;

		wd_budget = budget;
		wd_co = co;
		wd_bump();
		st = lua_resume(co, L, n, nres);
		wd_co = outer;
		wd_budget = outer_budget;
		wd_bump();
		if (lua_gethook(co) != NULL)	/* the watchdog hooked this run */
			lua_sethook(co, NULL, 0, 0);
	} else {
		lua_sethook(co, budget_hook, LUA_MASKCOUNT, budget);
		st = lua_resume(co, L, n, nres);
	}
	return st;
}

static int
check_budget(lua_State *L, int idx)
{
	lua_Integer b = luaL_checkinteger(L, idx);

	luaL_argcheck(L, b >= 1, idx, "budget must be positive");
	return b > INT_MAX ? INT_MAX : (int)b;
}

/*
 * smtp_core.run(co, budget, ...) -> true, ... | false, err
 * coroutine.resume(co, ...) under a budget of instructions, counted from
 * this resume: from its first instruction without the watchdog, from the
 * watchdog's second tick within it with the watchdog.
 */
int
lcore_run(lua_State *L)
{
	lua_State	*co = lua_tothread(L, 1);
	int		 budget = check_budget(L, 2);
	int		 n = lua_gettop(L) - 2, nres, st;
	lua_Debug	 ar;

	luaL_argexpected(L, co != NULL, 1, "coroutine");
	st = lua_status(co);
	if (st == LUA_OK && lua_gettop(co) == 0) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot resume dead coroutine");
		return 2;
	}
	if (co == L || (st == LUA_OK && lua_getstack(co, 0, &ar) > 0) ||
	    (st != LUA_OK && st != LUA_YIELD)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "cannot resume non-suspended coroutine");
		return 2;
	}
	if (!lua_checkstack(co, n + 1)) {
		lua_pushboolean(L, 0);
		lua_pushliteral(L, "too many arguments to resume");
		return 2;
	}
	lua_xmove(L, co, n);
	st = co_resume(L, co, budget, n, &nres);
	if (st == LUA_OK || st == LUA_YIELD) {
		if (!lua_checkstack(L, nres + 1)) {
			lua_pop(co, nres);
			lua_pushboolean(L, 0);
			lua_pushliteral(L, "too many results to resume");
			return 2;
		}
		lua_pushboolean(L, 1);
		lua_xmove(co, L, nres);
		return nres + 1;
	}
	lua_pushboolean(L, 0);
	lua_xmove(co, L, 1);		/* the error object */
	return 2;
}

/*
 * smtp_core.call(co, budget, fn, ...) -> true | nil | false, err
 * One handler run on a pooled coroutine, without a trampoline: an idle co
 * (new, or its last function returned) starts fn(...); a co waiting in a
 * yield is resumed with ... instead (fn is ignored).  true: fn returned
 * (its results are dropped and co is idle again, ready for the next call);
 * nil: it waits (yielded); false, err: it failed (co is dead for good).
 * The budget is run's.
 */
int
lcore_call(lua_State *L)
{
	lua_State	*co = lua_tothread(L, 1);
	int		 budget = check_budget(L, 2);
	int		 n = lua_gettop(L) - 3, nres, st;
	lua_Debug	 ar;

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
	st = co_resume(L, co, budget, n, &nres);
	if (st == LUA_OK) {
		lua_settop(co, 0);	/* idle: the next call starts afresh */
		lua_pushboolean(L, 1);
		return 1;
	}
	if (st == LUA_YIELD) {
		lua_pop(co, nres);	/* what the wait yielded: no one reads it */
		return 0;
	}
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

