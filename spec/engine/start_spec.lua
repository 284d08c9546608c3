-- server:on("start", fn): once per server (each luasmtpd worker), when its
-- event loop runs; timers start there, never while the script loads.

local support = require "spec.engine.support"
local policy, helo = support.policy, support.helo

describe("the 'start' listeners", function()
  it("run once when the harness starts the server, with the server", function()
    local calls = {}
    local h = policy([[
      local server = smtp.createServer()
      server:on("start", function(s) CALL(s == server and "first" or "?") end)
      server:on("start", function() CALL("second") end)
    ]], { globals = { CALL = function(v) calls[#calls + 1] = v end } })
    assert.same({ "first", "second" }, calls)
    h.clock:advance(10)
    helo(h)
    assert.same({ "first", "second" }, calls)
  end)

  it("may start timers; their log lines carry no session id", function()
    local ticks = 0
    local h = policy([[
      local server = smtp.createServer(function(c) end)
      server:on("start", function()
        smtp.setTimeout(function()
          TICK()
          smtp.log("info", "maintenance ran at %d", smtp.now())
        end, 60000)
      end)
    ]], { globals = { TICK = function() ticks = ticks + 1 end } })
    local s = helo(h)
    h.clock:advance(59)
    assert.equal(0, ticks)
    h.clock:advance(1)
    assert.equal(1, ticks)
    assert.matches("info  maintenance ran at 60", h:log(), 1, true)
    assert.not_matches("maintenance", s:log())	-- not the session's line
  end)

  it("may loop with smtp.sleep without holding up sessions or other listeners", function()
    local runs = {}
    local h = policy([[
      local server = smtp.createServer(function(c) end)
      server:on("start", function()
        while true do
          smtp.sleep(30)
          RUN(smtp.now())
        end
      end)
      server:on("start", function() RUN("other") end)
    ]], { globals = { RUN = function(v) runs[#runs + 1] = v end } })
    assert.same({ "other" }, runs)
    helo(h)	-- serving while the first listener sleeps
    h.clock:advance(95)
    assert.same({ "other", 30, 60, 90 }, runs)
  end)

  it("an error is logged, and serving goes on", function()
    local h = policy([[
      local server = smtp.createServer(function(c) end)
      server:on("start", function() error("no database") end)
      server:on("start", function() smtp.sleep(1) error("later") end)
    ]])
    assert.matches("error handler start failed: policy.lua:3: no database", h:log(), 1, true)
    h.clock:advance(1)
    assert.matches("error handler start failed: policy.lua:4: later", h:log(), 1, true)
    helo(h)
  end)

  it("timers are refused while the script loads, naming the start hook", function()
    local ok, err = pcall(policy, [[
      smtp.createServer()
      smtp.setTimeout(function() end, 1000)
    ]])
    assert.is_false(ok)
    assert.matches('policy.lua:3: timers cannot start while the script loads: start them in a '
      .. 'server:on("start", fn) listener or in a handler', err, 1, true)
  end)

  it("is an event name of the server only", function()
    local h = policy([[ smtp.createServer(function(c) c:on("start", function() end) end) ]])
    local s = h:connect()
    s:expect(421)
    assert.matches('unknown event start', s:log(), 1, true)
  end)
end)
