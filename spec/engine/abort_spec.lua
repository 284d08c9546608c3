-- A message whose fate is sealed (a handler error, reject(), a limit, a bad
-- line, the client or the server gone) runs no later 'data' or 'end'
-- listener, and 'abort' fires once with the reason; never after 'accept'.

local support = require "spec.engine.support"
local policy = support.policy

-- The policy every spec here starts from: it records what its message
-- listeners saw in EVENTS and stores in 'end' (as a delivery would).
-- Body lines "fail", "reject" and "late fail" make the 'data' listener act.
local RECORDING = [[
  local server = smtp.createServer(function(c)
    c:on("DATA", function(m)
      m:on("data", function(chunk)
        EVENTS[#EVENTS + 1] = "data"
        if chunk:find("late fail", 1, true) then smtp.sleep(1) error("late boom") end
        if chunk:find("fail", 1, true) then error("boom") end
        if chunk:find("reject", 1, true) then m:reject(554, "5.7.1 Refused while reading") end
      end)
      m:on("data", function() EVENTS[#EVENTS + 1] = "data 2" end)
      m:on("end", function()
        EVENTS[#EVENTS + 1] = "end (stored " .. m.size .. " octets)"
        if m.sender.address:find("refuse", 1, true) then return m:reject() end
        if m.sender.address:find("crash", 1, true) then error("end boom") end
        if m.sender.address:find("never", 1, true) then return end
        m:accept()
      end)
      m:on("abort", function(msg, reason)
        assert(msg == m)
        EVENTS[#EVENTS + 1] = "abort " .. reason
      end)
      m:on("accept", function(_, code) EVENTS[#EVENTS + 1] = "accept " .. code end)
      m:on("reject", function(_, why) EVENTS[#EVENTS + 1] = "reject " .. why end)
    end)
  end)
  server.maxSize = 2000
  server.receivedHeader = false	-- 'data' events count the client's chunks only
  server.decisionTimeout = 30
  server.dataTimeout = 60
]]

local function start(from)
  local events = {}
  local h = policy(RECORDING, { globals = { EVENTS = events } })
  local s = h:connect()
  s:expect(220)
  s:send("EHLO c.example"):expect(250)
  s:send("MAIL FROM:<" .. (from or "a@example.net") .. ">"):expect(250)
  s:send("RCPT TO:<b@example.org>"):expect(250)
  s:send("DATA"):expect(354)
  return h, s, events
end

describe("a sealed message", function()
  it("after a 'data' listener failed: no later 'data' or 'end' listener, 451, 'abort' once", function()
    local h, s, events = start()
    s:send_raw("first\r\n")
    s:send_raw("fail here\r\n")
    s:send_raw("more\r\nand more\r\n.\r\n"):expect("451 4.3.0 ")
    assert.same({ "data", "data 2", "data", "abort error", "reject 451" }, events)
    assert.matches("handler data failed: policy.lua:%d+: boom", s:log())
    -- the session goes on, and the next message is a fresh one
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("fine\r\n.\r\n"):expect(250)
    assert.same("end (stored 6 octets)", events[#events - 1])
    assert.same("accept 250", events[#events])
    h:close()
  end)

  it("after a 'data' listener failed once it waited: no later listener", function()
    local h, s, events = start()
    s:send_raw("late fail\r\n")
    h.clock:advance(1)	-- it fails now
    assert.same({ "data", "data 2", "abort error" }, events)
    s:send_raw("more\r\n.\r\n"):expect("451 4.3.0 ")
    assert.same({ "data", "data 2", "abort error", "reject 451" }, events)
  end)

  it("a 'data' listener failing while the end of data waits for a decision: 451 at once", function()
    local h, s, events = start("never@example.net")
    s:send_raw("late fail\r\n.\r\n"):expect_silence()	-- 'end' ran and did not decide
    h.clock:advance(1)
    s:expect("451 4.3.0 ")	-- not after decisionTimeout
    assert.same({ "data", "data 2", "end (stored 11 octets)", "abort error", "reject 451" }, events)
  end)

  it("after reject() in a 'data' listener: the reply is the rejection", function()
    local _, s, events = start()
    s:send_raw("please reject\r\n")
    s:send_raw("ignored\r\n.\r\n"):expect("554 5.7.1 Refused while reading")
    assert.same({ "data", "abort rejected", "reject 554" }, events)
  end)

  it("over maxSize", function()
    local _, s, events = start()
    s:send_raw(string.rep(string.rep("x", 98) .. "\r\n", 30) .. ".\r\n"):expect("552 ")
    assert.same({ "abort too big", "reject too big" }, events)
  end)

  it("with a bare LF", function()
    local _, s, events = start()
    s:send_raw("one\ntwo\r\n.\r\n"):expect("550 5.6.0 ")
    assert.same({ "abort bare newline", "reject bare newline" }, events)
  end)

  it("with a line over maxTextLineLength", function()
    local _, s, events = start()
    s:send_raw(string.rep("y", 1200) .. "\r\n.\r\n"):expect("550 5.6.0 ")
    assert.same({ "abort line too long", "reject line too long" }, events)
  end)

  it("when the client disconnects", function()
    local _, s, events = start()
    s:send_raw("partial\r\n")
    s:close()
    assert.same({ "data", "data 2", "abort disconnect", "reject disconnect" }, events)
  end)

  it("when the client stops sending (dataTimeout)", function()
    local h, s, events = start()
    s:send_raw("partial\r\n")
    h.clock:advance(60)
    s:expect("421 4.4.2 ")
    assert.same({ "data", "data 2", "abort timeout", "reject timeout" }, events)
  end)

  it("when the server shuts down", function()
    local _, s, events = start()
    s:send_raw("partial\r\n")
    s:shutdown()
    s:expect("421 4.3.2 ")
    assert.same({ "data", "data 2", "abort shutdown", "reject shutdown" }, events)
  end)

  it("rejected in 'end': 'abort' then 'reject'", function()
    local _, s, events = start("refuse@example.net")
    s:send_raw("x\r\n.\r\n"):expect("550 ")
    assert.same({ "data", "data 2", "end (stored 3 octets)", "abort rejected", "reject 550" }, events)
  end)

  it("after an error in 'end'", function()
    local _, s, events = start("crash@example.net")
    s:send_raw("x\r\n.\r\n"):expect("451 4.3.0 ")
    assert.same({ "data", "data 2", "end (stored 3 octets)", "abort error", "reject 451" }, events)
  end)

  it("when no decision comes within decisionTimeout", function()
    local h, s, events = start("never@example.net")
    s:send_raw("x\r\n.\r\n"):expect_silence()
    h.clock:advance(30)
    s:expect("451 4.3.0 ")
    assert.same({ "data", "data 2", "end (stored 3 octets)", "abort decision timeout",
      "reject 451" }, events)
  end)

  it("refused at DATA by reject() in the 'DATA' listener", function()
    local events = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("abort", function(_, why) EVENTS[#EVENTS + 1] = "abort " .. why end)
          m:on("end", function() EVENTS[#EVENTS + 1] = "end" end)
          m:reject(554, "5.7.1 Not from you")
          m:reject(554, "5.7.1 Twice")	-- already decided: no second 'abort'
        end)
      end)
    ]], { globals = { EVENTS = events } })
    local s = support.transaction(h)
    s:send("DATA"):expect("554 5.7.1 Not from you")
    assert.same({ "abort rejected" }, events)
  end)

  it("refused at DATA by an error in the 'DATA' listener", function()
    local events = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("abort", function(_, why) EVENTS[#EVENTS + 1] = "abort " .. why end)
          error("no spool")
        end)
      end)
    ]], { globals = { EVENTS = events } })
    local s = support.transaction(h)
    s:send("DATA"):expect("451 4.3.0 ")
    assert.same({ "abort error" }, events)
  end)

  it("when the client leaves while the 'DATA' listener waits", function()
    local events = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("abort", function(_, why) EVENTS[#EVENTS + 1] = "abort " .. why end)
          m:on("reject", function(_, why) EVENTS[#EVENTS + 1] = "reject " .. why end)
          smtp.sleep(10)
        end)
      end)
    ]], { globals = { EVENTS = events } })
    local s = support.transaction(h)
    s:send("DATA"):expect_silence()
    s:close()
    assert.same({ "abort disconnect", "reject disconnect" }, events)
    h.clock:advance(10)
    assert.same({ "abort disconnect", "reject disconnect" }, events)
  end)

  it("never fires 'abort' for an accepted message, nor after 'accept'", function()
    local events = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("data", function() smtp.sleep(5) error("too late") end)
          m:on("end", function() m:accept() end)
          m:on("abort", function(_, why) EVENTS[#EVENTS + 1] = "abort " .. why end)
          m:on("accept", function() EVENTS[#EVENTS + 1] = "accept" end)
        end)
      end)
    ]], { globals = { EVENTS = events } })
    local s = support.transaction(h)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    h.clock:advance(5)	-- the 'data' listener fails after the client was told 250
    s:close()
    assert.same({ "accept" }, events)
  end)
end)
