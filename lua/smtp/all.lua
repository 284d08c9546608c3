-- smtp.all -- smtp.all{f1, f2, ...}: run functions concurrently inside one
-- handler and wait for them all.
--
-- Owns nothing but the fan-out: each function runs in a task of its own
-- (smtp.tasks' spawn, on the handler's connection, under the same budgets),
-- so whatever a task waits on (smtp.sleep, smtp.store on Redis, smtp.dns)
-- resumes that task alone; the handler waits until the last one ends.  The
-- results come back in order, one table per function (its return values,
-- table.pack'ed).  The first error ends the wait: the tasks still waiting
-- are dropped (their answers are ignored) and the error is raised in the
-- handler.

local M = {}

-- M.new(I) -> smtp.all (I: the instance's tasks)
function M.new(I)
  local spawn, resume, current_task = I.spawn, I.resume, I.current_task
  local pack = table.pack

  return function(fns)
    if type(fns) ~= "table" then error("smtp.all: a list of functions expected", 2) end
    local n = #fns
    for i = 1, n do
      if type(fns[i]) ~= "function" then
        error(("smtp.all: item %d is a %s, not a function"):format(i, type(fns[i])), 2)
      end
    end
    local task = current_task()
    if not task then error("smtp.all must be called from a handler or a 'start' listener", 2) end
    local gen, conn = task.gen, task.conn
    local results, subs = {}, {}
    local left, failed, waiting = n, nil, false

    local function wake()
      if waiting and task.gen == gen and not task.dead and not task.dropped then
        waiting = false
        resume(task, nil)
      end
    end
    for i = 1, n do
      local f = fns[i]
      local _, _, t = spawn(conn, function() results[i] = pack(f()) end, function(ok, err)
        subs[i] = nil
        left = left - 1
        if not ok and not failed then failed = err end
        if left == 0 or failed then wake() end
      end)
      if left > 0 and results[i] == nil and not failed then subs[i] = t end
      if failed then break end
    end
    while left > 0 and not failed do
      waiting = true
      coroutine.yield()
    end
    waiting = false
    if failed then
      for _, t in pairs(subs) do
        t.dropped = true
        if t.timer then t.timer:cancel() ; t.timer = nil end
      end
      error(failed, 0)
    end
    return table.unpack(results, 1, n)
  end
end

return M
