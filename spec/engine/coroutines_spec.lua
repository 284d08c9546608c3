-- Handler coroutines are pooled (smtp.instance): a handler that returns
-- hands its coroutine to the next one.  Reuse must be invisible: every
-- handler still runs in a coroutine of its own, a waiting handler keeps
-- its coroutine, and a failed one is never reused.

local support = require "spec.engine.support"
local policy, helo = support.policy, support.helo

describe("handler coroutines", function()
  it("every handler runs in a coroutine, never the main thread", function()
    local seen = {}
    local h = policy([[
      smtp.createServer(function(c)
        local function note() local co, main = coroutine.running() ; SEEN[#SEEN + 1] = main end
        c:on("MAIL", note) ; c:on("MAIL", note) ; c:on("RCPT", note)
      end)
    ]], { globals = { SEEN = seen } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    assert.same({ false, false, false }, seen)
  end)

  it("a waiting handler keeps its coroutine while others run and finish", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m)
          if m.address == "slow@example.net" then
            local co = coroutine.running()
            smtp.sleep(5)
            assert(coroutine.running() == co, "resumed on another coroutine")
            m.valid, m.code, m.message = false, 550, "5.7.1 slow and checked"
          end
        end)
      end)
    ]])
    local a = helo(h)
    local b = helo(h, { remoteAddress = "192.0.2.77" })
    a:send("MAIL FROM:<slow@example.net>")
    for i = 1, 5 do
      b:send("MAIL FROM:<f" .. i .. "@example.net>"):expect(250)
      b:send("RSET"):expect(250)
    end
    h.clock:advance(5)
    a:expect("550 5.7.1 slow and checked")
  end)

  it("handlers after a failed or over-budget one run normally, with a fresh budget", function()
    local ran = 0
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if r.address == "boom@example.org" then error("boom") end
          if r.address == "loop@example.org" then while true do end end
          for _ = 1, 20000 do end	-- a fifth of the budget, each time
          RAN()
        end)
      end)
      server.handlerBudget = 100000
    ]], { globals = { RAN = function() ran = ran + 1 end } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    for _, rcpt in ipairs { "boom", "ok1", "loop", "ok2", "boom", "ok3", "ok4", "ok5", "ok6" } do
      local reply = (rcpt == "boom" or rcpt == "loop") and "451 4.3.0 " or 250
      s:send("RCPT TO:<" .. rcpt .. "@example.org>"):expect(reply)
    end
    assert.equal(6, ran)
    assert.matches("handler exceeded its instruction budget %(100000 instructions%)", s:log())
  end)

  it("a handler's arguments are exactly what it is given (no padding by the pool)", function()
    local counts = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(...) COUNTS[#COUNTS + 1] = select("#", ...) end)
        c:on("close", function(...) COUNTS[#COUNTS + 1] = select("#", ...) end)
      end)
    ]], { globals = { COUNTS = counts } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("QUIT"):expect(221)
    s:close()
    assert.same({ 1, 1 }, counts)
  end)
end)
