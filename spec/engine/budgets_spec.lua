-- The budgets of a handler run beyond its instruction count, under the
-- harness as in luasmtpd: CPU time (a loop of expensive C calls runs few
-- instructions), heap growth (a memory bomb), and the coroutines a handler
-- makes or resumes (hooks are per thread).  Each stops the handler with 451
-- and a log line, even under pcall, and the session goes on.

local support = require "spec.engine.support"
local policy, helo = support.policy, support.helo

describe("handler budgets", function()
  it("a loop of expensive C calls is stopped by its CPU time", function()
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if r.address == "rep@example.org" then
            -- some 20 GB of string.rep in 100000 instructions: long, unless stopped
            for _ = 1, 20000 do local s = string.rep("x", 1048576) end
            r.message = "2.1.5 the CPU time went unbounded"
          end
        end)
      end)
      server.handlerCpuTime = 0.2
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<rep@example.org>"):expect("451 4.3.0 ")
    assert.matches("handler rcpt failed: handler exceeded its CPU time budget %(200 ms%)", s:log())
    s:send("RCPT TO:<ok@example.org>"):expect(250)
  end)

  it("a memory bomb is stopped by its heap budget, even under pcall, and collected", function()
    local heap = {}
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if r.address == "bomb@example.org" then
            for _ = 1, 100 do
              pcall(function()
                local t = {}
                for i = 1, 2000 do t[i] = string.rep("x", 65536) end	-- 128 MiB, unless stopped
              end)
            end
            error("pcall swallowed the memory budget")
          end
        end)
      end)
      server.handlerMemory = 8 * 1024 * 1024
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    collectgarbage()
    local before = collectgarbage("count")
    s:send("RCPT TO:<bomb@example.org>"):expect("451 4.3.0 ")
    assert.matches("handler rcpt failed: handler exceeded its memory budget %(8 MiB%)", s:log())
    assert.not_matches("pcall swallowed", s:log())
    collectgarbage()
    heap[1] = collectgarbage("count") - before
    assert.is_true(heap[1] < 1024, ("%.0f KiB left after the bomb"):format(heap[1]))
    s:send("RCPT TO:<ok@example.org>"):expect(250)
  end)

  it("a coroutine made or resumed by a handler is within its budgets", function()
    local h = policy([[
      local made = coroutine.create(function() while true do end end)	-- before any run
      local server = smtp.createServer(function(c)
        c:on("RCPT", function(r)
          local who = r.address:match("^(.-)@")
          if who == "wrap" then coroutine.wrap(function() while true do end end)() end
          if who == "made" then coroutine.resume(made) ; error("the loop went unbounded") end
          if who == "gen" then
            local g = coroutine.wrap(function() while true do coroutine.yield() end end)
            while true do g() end
          end
        end)
      end)
      server.handlerBudget = 100000
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    for _, who in ipairs { "wrap", "made", "gen" } do
      s:send("RCPT TO:<" .. who .. "@example.org>"):expect("451 4.3.0 ")
      s:send("RCPT TO:<ok@example.org>"):expect(250)
    end
    local _, n = s:log():gsub("handler rcpt failed: [^\n]*handler exceeded its instruction budget", "")
    assert.equal(3, n, s:log())
  end)
end)
