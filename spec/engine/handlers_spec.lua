-- Handlers that fail, run away or wait: 451 on error, the instruction
-- budget, smtp.sleep and timers on the virtual clock, logs.

local support = require "spec.engine.support"
local policy, helo = support.policy, support.helo

describe("handler failures", function()
  it("a Lua error gives 451 4.3.0, a log line with the traceback, and the session goes on", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if r.address == "boom@example.org" then error("boom") end
        end)
      end)
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<boom@example.org>"):expect("451 4.3.0 ")
    assert.matches("handler rcpt failed: policy.lua:4: boom", s:log())
    assert.matches("stack traceback:", s:log())
    s:send("RCPT TO:<fine@example.org>"):expect(250)
  end)

  it("an error in a later listener stops the chain with 451", function()
    local ran = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function() RAN[#RAN + 1] = 1 ; error({ "a table" }) end)
        c:on("MAIL", function() RAN[#RAN + 1] = 2 end)
      end)
    ]], { globals = { RAN = ran } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect("451 4.3.0 ")
    assert.same({ 1 }, ran)
    assert.matches("handler mail failed: table:", s:log())
  end)

  it("a runaway handler is stopped by the budget, even inside pcall, and others are served", function()
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("MAIL", function(m)
          if m.address == "loop@example.net" then
            for _ = 1, 100 do pcall(function() while true do end end) end
            LEAKED()	-- never reached
          end
        end)
      end)
      server.handlerBudget = 100000
    ]], { globals = { LEAKED = function() error("pcall swallowed the budget error") end } })
    local a = helo(h)
    local b = helo(h, { remoteAddress = "192.0.2.77" })
    local t0 = os.clock()
    a:send("MAIL FROM:<loop@example.net>"):expect("451 4.3.0 ")
    assert.is_true(os.clock() - t0 < 2)
    assert.matches("handler mail failed: handler exceeded its instruction budget", a:log())
    assert.not_matches("pcall swallowed", a:log())
    b:send("MAIL FROM:<ok@example.net>"):expect(250)
    a:send("MAIL FROM:<ok@example.net>"):expect(250)
  end)

  it("the budget counts per resume: a handler that sleeps between work is fine", function()
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("MAIL", function()
          for _ = 1, 5 do
            for _ = 1, 20000 do end
            smtp.sleep(1)
          end
        end)
      end)
      server.handlerBudget = 200000
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect_silence()
    h.clock:advance(5)
    s:expect(250)
  end)
end)

describe("handlers that wait", function()
  it("smtp.sleep holds the reply; a wait of minutes takes no real time", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          smtp.sleep(300)
          r.valid, r.code, r.message = false, 450, "4.7.1 waited " .. smtp.now()
        end)
      end)
    ]])
    local t0 = os.clock()
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect_silence()
    h.clock:advance(299.5)
    s:expect_silence()
    h.clock:advance(0.5)
    s:expect("450 4.7.1 waited 300")
    assert.is_true(os.clock() - t0 < 0.5)
  end)

  it("pipelined commands wait behind a sleeping handler, in order", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function() smtp.sleep(10) end)
      end)
    ]])
    local s = helo(h)
    s:pipeline { "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "NOOP" }
    s:expect_silence()
    h.clock:advance(10)
    s:expect("250 2.1.0 ")
    s:expect("250 2.1.5 ")
    s:expect("250 2.0.0 ")
  end)

  it("one session waiting does not hold another", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m) if m.address == "slow@example.net" then smtp.sleep(60) end end)
      end)
    ]])
    local slow = helo(h)
    local fast = helo(h, { remoteAddress = "192.0.2.99" })
    slow:send("MAIL FROM:<slow@example.net>"):expect_silence()
    fast:send("MAIL FROM:<fast@example.net>"):expect(250)
    fast:send("QUIT"):expect(221)
    h.clock:advance(60)
    slow:expect(250)
  end)

  it("listeners of one event run one after another, each waiting its turn", function()
    local order = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function() smtp.sleep(5) ; ORDER[#ORDER + 1] = "first " .. smtp.now() end)
        c:on("MAIL", function() ORDER[#ORDER + 1] = "second " .. smtp.now() end)
      end)
    ]], { globals = { ORDER = order } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>")
    h.clock:advance(5)
    s:expect(250)
    assert.same({ "first 5", "second 5" }, order)
  end)

  it("a handler that waits past decisionTimeout: 451, and its late verdict is dropped", function()
    local late = false
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("MAIL", function(m) smtp.sleep(100) ; LATE() ; m.valid = false end)
      end)
      server.decisionTimeout = 10
    ]], { globals = { LATE = function() late = true end } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect_silence()
    h.clock:advance(10)
    s:expect("451 4.3.0 ")
    h.clock:advance(200)
    assert.is_false(late)	-- the coroutine was dropped with its timer
    s:expect_silence()
    s:send("MAIL FROM:<a@example.net>"):expect_silence()	-- a new ask: sleeps again
    h.clock:advance(10)
    s:expect("451 ")
  end)

  it("a decision after the client left is a no-op", function()
    local result
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("end", function()
            smtp.setTimeout(function() RESULT(m:accept()) end, 1000)
          end)
        end)
      end)
    ]], { globals = { RESULT = function(...) result = { ... } end } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect_silence()
    s:close()
    h.clock:advance(1)
    assert.same({ true }, result)	-- recorded; the closed session ignores it
    assert.not_matches("error", h:log())
  end)

  it("clearTimeout cancels a timer", function()
    local fired = false
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function()
          local t = smtp.setTimeout(function() FIRE() end, 1000)
          smtp.clearTimeout(t)
        end)
      end)
    ]], { globals = { FIRE = function() fired = true end } })
    helo(h)
    h.clock:advance(5)
    assert.is_false(fired)
  end)

  it("an error in a timer is logged with the session id", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function() smtp.setTimeout(function() error("tick") end, 10) end)
      end)
    ]])
    local s = helo(h)
    h.clock:advance(1)
    assert.matches("handler timer failed: policy.lua:3: tick", s:log())
  end)
end)

describe("logging", function()
  it("smtp.log and connection:log carry the session id", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function(helo)
          smtp.log("info", "hello from %s", helo.name)
          c:log("warn", "remote %s", c.remoteAddress)
        end)
      end)
    ]])
    local s = helo(h)
    assert.matches("info  %[" .. s.id .. "%] hello from c.example", s:log())
    assert.matches("warn  %[" .. s.id .. "%] remote 192.0.2.1", s:log())
  end)

  it("logs a template that does not fit its arguments, with the arguments and the error", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function()
          c:log("info", "after %d s", 2.5)
          smtp.log("warn", "%s of %s", "one")
          smtp.log("info", "100% sure")
        end)
      end)
    ]])
    local s = helo(h)	-- the handler did not fail: 250
    local log = s:log()
    assert.matches("info  [" .. s.id .. "] after %d s [2.5] (format error: argument 1: "
      .. "number has no integer representation)", log, 1, true)
    assert.matches('warn  [' .. s.id .. '] %s of %s ["one"] (format error: argument 2: no value)',
      log, 1, true)
    assert.matches("100% sure [] (format error: argument 1: no value)", log, 1, true)
  end)

  it("refuses an unknown level", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function() smtp.log("loud", "x") end)
      end)
    ]])
    local s = h:connect()
    s:expect(220)
    s:send("HELO c.example"):expect(451)
    assert.matches("error, warn, info or debug expected", s:log())
  end)
end)
