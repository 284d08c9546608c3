-- smtp.tasks -- every handler runs in a coroutine of its own.
--
-- Owns the pooled handler runs of one instance (acquire, resume, spawn,
-- chains of listeners that wait, fire-and-forget listeners), the budgets
-- each run gets (server.handlerBudget, .handlerCpuTime, .handlerMemory) and
-- the time API on top of them: smtp.sleep, smtp.setTimeout,
-- smtp.clearTimeout.  The platform supplies the timers (lua_host.c's
-- libevent ones, or smtp.testing's virtual clock).

local M = {}

-- Coroutines are pooled: smtp_core.call starts a handler on an idle
-- pooled coroutine (its function and arguments pushed from C, no
-- trampoline), and a handler that returns leaves the coroutine idle for
-- the next one, so it costs no coroutine, closure or table allocation and
-- no yield.  A coroutine that failed, or that is still waiting when its
-- task is dropped, never goes back to the pool.  The budgets of a resume
-- (instructions, CPU time, heap growth) are smtp_core.call's: a count
-- hook from the first instruction of a resume (the harness), or the
-- CPU-time watchdog and the allocator of luasmtpd (lua_run.c).

-- the pool: I.current_task, I.set_run_limits, I.spawn, I.spawn1 and
-- I.resume out
local function install_pool(I)
  local core = I.core
  local tasks = setmetatable({}, { __mode = "k" })	-- coroutine -> task

  local function current_task()
    local co = coroutine.running()
    return co and tasks[co]
  end

  -- what smtp_core.call takes for the budgets (install_limits sets it)
  local run_limits
  local function set_run_limits(l) run_limits = l end

  local traceback = debug.traceback
  local POOL_MAX = 32
  local pool, npool = {}, 0

  -- call(co, limits, fn | nil, ...) -> true (returned) | nil (waiting) |
  -- false, err: starts fn(...) on an idle co, or resumes a waiting one
  local call, newco = core.call, core.thread

  -- What a task opened and must not outlive it (smtp.tcp's sockets):
  -- task.owned is false or a set of objects with :close(), closed when the
  -- task returns, fails or is dropped.
  local function release(task)
    local owned = task.owned
    if owned then
      task.owned = false
      for obj in pairs(owned) do obj:close() end
    end
  end

  -- A task for conn; on_finish(ok, err) is called when it ends after having
  -- waited (or at once, if given here).
  local function acquire(conn, on_finish)
    local task
    if npool > 0 then
      task = pool[npool]
      pool[npool] = nil
      npool = npool - 1
    else
      local co = newco()
      task = { co = co, gen = 0, conn = false, on_finish = false, dead = false,
        dropped = false, timer = false, owned = false, sleeping = false, wake = false }
      tasks[co] = task
    end
    task.conn, task.on_finish, task.dead, task.dropped = conn, on_finish or false, false, false
    task.gen = task.gen + 1
    return task
  end

  -- Runs task (fn(...) on an idle one, a waiting one without fn) until it
  -- returns, fails or waits: true | false, traceback | nil (waiting).
  -- task.on_finish, if set, is called when it ends.
  local function after(task, ok, r)
    if ok then
      task.dead = true
      if task.owned then release(task) end
      local cb = task.on_finish
      task.conn, task.on_finish = false, false	-- false, not nil: the keys stay set
      if npool < POOL_MAX then
        npool = npool + 1
        pool[npool] = task
      end
      if cb then cb(true) end
      return true
    end
    if ok == nil then return nil end	-- waiting: the budget restarts at the next resume
    local co = task.co
    task.dead = true
    if task.owned then release(task) end
    tasks[co] = nil
    local err = traceback(co, tostring(r))
    if task.on_finish then task.on_finish(false, err) end
    return false, err
  end
  local function resume(task, fn, ...)
    return after(task, call(task.co, run_limits, fn, ...))
  end

  -- Starts fn(...) in a task: resume()'s result and the task.
  local function spawn(conn, fn, on_finish, ...)
    local task = acquire(conn, on_finish)
    local ok, err = resume(task, fn, ...)
    return ok, err, task
  end

  -- spawn(conn, fn, nil, arg): one argument, no on_finish, acquire and
  -- resume inline when the pool has a coroutine (every handler run of an
  -- ask, every data chunk)
  local function spawn1(conn, fn, arg)
    if npool == 0 then return spawn(conn, fn, nil, arg) end
    local task = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    task.conn, task.on_finish, task.dead, task.dropped = conn, false, false, false
    task.gen = task.gen + 1
    local ok, err = call(task.co, run_limits, fn, arg)
    if ok then	-- after()'s, inline (on_finish is set only once a task waits)
      task.dead, task.conn = true, false
      if task.owned then release(task) end
      if npool < POOL_MAX then
        npool = npool + 1
        pool[npool] = task
      end
      return true
    end
    ok, err = after(task, ok, err)
    return ok, err, task
  end

  I.current_task, I.set_run_limits, I.release = current_task, set_run_limits, release
  I.spawn, I.spawn1, I.resume = spawn, spawn1, resume
end

-- the budgets of a handler run: I.set_limit out
local function install_limits(I)
  local core, set_run_limits = I.core, I.set_run_limits
  -- the engine's defaults until the script sets them; a stub core (no
  -- core.limits) runs no handler
  local DEFAULT_BUDGET, DEFAULT_CPU = core.HANDLER_BUDGET, core.HANDLER_CPU
  local handler_budget, handler_cpu, handler_memory = DEFAULT_BUDGET, DEFAULT_CPU, 0
  local function set_limits()
    set_run_limits(core.limits and core.limits(handler_budget, handler_cpu, handler_memory))
  end
  set_limits()

  -- set_limit(option, v): server.handlerBudget, .handlerCpuTime or
  -- .handlerMemory was set (nil: back to the default)
  local function set_limit(k, v)
    if k == "handlerBudget" then handler_budget = v or DEFAULT_BUDGET
    elseif k == "handlerCpuTime" then handler_cpu = v or DEFAULT_CPU
    elseif k == "handlerMemory" then handler_memory = v or 0
    else return end
    set_limits()
  end
  I.set_limit = set_limit
end

-- chains of listeners and fire-and-forget ones: I.run_chain and
-- I.emit_detached out
local function install_chains(I)
  local log, spawn, release = I.log, I.spawn, I.release

  -- a waiting task that will not be resumed (its chain was cancelled)
  local function drop(task)
    task.dropped = true
    if task.timer then task.timer:cancel() ; task.timer = nil end
    if task.owned then release(task) end
  end

  -- A chain runs fns[i], fns[i+1], ... one after the other, each in its
  -- own task, the first one (task) already started and waiting.  The
  -- chain is the caller's table (its fields made by the constructor, so
  -- that nothing here grows it): conn, fns, i, arg (each listener's
  -- argument), done, current and cancelled; done(chain, ok, err) is called
  -- once.  What a chain costs beyond its table is one closure (the
  -- on_finish of its tasks).
  local function chain_step(chain, ok, err)
    if chain.cancelled then return end
    chain.current = false
    if not ok then return chain.done(chain, false, err) end
    local conn, fns, arg, i = chain.conn, chain.fns, chain.arg, chain.i
    while true do
      i = i + 1
      chain.i = i
      if fns[i] == nil then return chain.done(chain, true) end
      local ok2, err2, t = spawn(conn, fns[i], nil, arg)
      if ok2 == nil then
        chain.current = t
        t.on_finish = chain.step
        return
      end
      if not ok2 then return chain.done(chain, false, err2) end
    end
  end
  local function run_chain(chain, task)
    local function step(ok, err) return chain_step(chain, ok, err) end
    chain.step, chain.current = step, task
    task.on_finish = step
  end

  -- a chain's waiting task is dropped, and no later listener runs
  local function cancel_chain(chain)
    chain.cancelled = true
    local t = chain.current
    if t then drop(t) end
  end

  -- fire-and-forget listeners (data, close, accept, reject, timers)
  local function emit_detached(conn, what, fns, ...)
    for i = 1, #fns do
      local ok, err, task = spawn(conn, fns[i], nil, ...)
      if ok == false then
        log("warn", conn and conn.id, "handler %s failed: %s", what, err)
      elseif ok == nil then
        task.on_finish = function(ok2, err2)
          if not ok2 then log("warn", conn and conn.id, "handler %s failed: %s", what, err2) end
        end
      end
    end
  end

  I.run_chain, I.cancel_chain, I.emit_detached = run_chain, cancel_chain, emit_detached
end

-- ---- time ------------------------------------------------------------------

-- smtp.sleep, smtp.setTimeout and smtp.clearTimeout
local function install_time(I)
  local platform, smtp = I.platform, I.smtp
  local current_task, resume, emit_detached = I.current_task, I.resume, I.emit_detached

  -- The script's top level runs before any event loop (luasmtpd --check,
  -- the validation before the workers start): timers start in handlers and
  -- in 'start' listeners, never while loading (I.loaded: smtp._policy() ran).
  local function timer(seconds, fn)
    if not I.loaded then
      error("timers cannot start while the script loads: start them in a "
        .. "server:on(\"start\", fn) listener or in a handler", 3)
    end
    if not platform.timer then
      error("no event loop: timers run in luasmtpd or smtp.testing", 3)
    end
    return platform.timer(seconds, fn)
  end

  -- the timer function of a task's sleeps, made once per pooled task:
  -- task.sleeping is the generation of the handler run that sleeps
  local function waker(task)
    local function wake()
      task.timer = nil
      if task.sleeping == task.gen and not task.dead and not task.dropped then
        task.sleeping = false
        resume(task, nil)
      end
    end
    task.wake = wake
    return wake
  end

  -- smtp.sleep(seconds): the handler waits; its session's reply waits with it
  function smtp.sleep(seconds)
    if type(seconds) ~= "number" or seconds < 0 then error("sleep: seconds must be a number >= 0", 2) end
    local task = current_task()
    if not task then error("smtp.sleep must be called from a handler or a 'start' listener", 2) end
    task.sleeping = task.gen
    task.timer = timer(seconds, task.wake or waker(task))
    coroutine.yield()
  end

  -- smtp.setTimeout(fn, ms) -> timer; fn runs in its own coroutine
  function smtp.setTimeout(fn, ms)
    if type(fn) ~= "function" then error("setTimeout: a function expected", 2) end
    if type(ms) ~= "number" or ms < 0 then error("setTimeout: ms must be a number >= 0", 2) end
    local task = current_task()
    local conn = task and task.conn
    local t = { cancelled = false }
    t.handle = timer(ms / 1000, function()
      if t.cancelled then return end
      emit_detached(conn, "timer", { fn })
    end)
    return t
  end

  -- smtp.clearTimeout(timer)
  function smtp.clearTimeout(t)
    if type(t) == "table" and t.handle and not t.cancelled then
      t.cancelled = true
      t.handle:cancel()
    end
  end
end

-- install(I): I.core, I.platform, I.smtp and I.log in; the task functions
-- out (I.current_task, I.spawn, I.spawn1, I.resume, I.run_chain,
-- I.cancel_chain, I.emit_detached, I.set_limit, I.set_run_limits, I.release)
function M.install(I)
  install_pool(I)
  install_limits(I)
  install_chains(I)
  install_time(I)
end

return M
