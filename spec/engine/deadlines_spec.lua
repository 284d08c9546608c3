-- spec/engine/deadlines_spec.lua -- the engine's absolute deadlines on the
-- harness's virtual clock: a command line must be complete commandTimeout
-- after its first octet, message data must keep up minDataRate past
-- dataTimeout of credit, STARTTLS's handshake must be done in time, and no
-- session outlives maxSessionTime.  Octets sent slowly never move a deadline
-- beyond those rules; each expiry is a 421 4.4.2 (none during a handshake)
-- and a log line naming the option.
local support = require "spec.engine.support"

local function server(opts)
  local lines = { "local server = smtp.createServer(function(c)",
    opts.listeners or "", "end)" }
  for k, v in pairs(opts) do
    if k ~= "listeners" and k ~= "globals" then
      lines[#lines + 1] = ("server.%s = %s"):format(k, type(v) == "table" and
        ("{ cert = %q, key = %q }"):format(v.cert, v.key) or tostring(v))
    end
  end
  return support.policy(table.concat(lines, "\n"), { globals = opts.globals })
end

-- A session that said MAIL, RCPT and DATA and read the 354.
local function in_data(h)
  local s = support.helo(h)
  s:send("MAIL FROM:<a@a.example>"):expect(250)
  s:send("RCPT TO:<b@b.example>"):expect(250)
  s:send("DATA"):expect(354)
  return s
end

describe("deadlines: command lines", function()
  it("a line trickled octet by octet gets 421 commandTimeout after its first octet", function()
    local h = server { commandTimeout = 5 }
    local s = support.helo(h)
    local line = ("NOOP "):rep(20)
    for i = 1, 49 do	-- one octet every 0.1 s for 4.9 s
      s:send_raw(line:sub(i, i))
      h.clock:advance(0.1)
    end
    assert.is_false(s:closed())
    s:send_raw(line:sub(50, 50))
    h.clock:advance(0.1)
    s:expect { code = 421, enhanced = "4.4.2", text = "command line not completed in time" }
    assert.is_true(s:closed())
    assert.matches("timeout: command line not complete 5 s after its first octet %(commandTimeout%)", s:log())
  end)

  it("times each line from its own first octet, also one begun with the end of the last", function()
    local h = server { commandTimeout = 5 }
    local s = support.helo(h)
    s:send_raw("NO")
    h.clock:advance(3)
    s:send_raw("OP\r\nNO")	-- the first line ends, the second begins at 3 s
    s:expect(250)
    h.clock:advance(3)	-- 6 s: past the first line's deadline, not the second's
    assert.is_false(s:closed())
    s:send_raw("OP\r\n"):expect(250)
    h.clock:advance(4.9)
    assert.is_false(s:closed())
    h.clock:advance(0.1)
    s:expect { code = 421, enhanced = "4.4.2", text = "timeout exceeded" }
    assert.matches("timeout: no command within 5 s %(commandTimeout%)", s:log())
  end)

  it("an over-long line is timed like any other", function()
    local h = server { commandTimeout = 5 }
    local s = support.helo(h)
    s:send_raw(("x"):rep(2000))
    h.clock:advance(4)
    s:send_raw(("x"):rep(2000))
    h.clock:advance(1)
    s:expect("421 4.4.2 ")
  end)

  it("after a verdict timed out, a silent client still gets commandTimeout", function()
    local h = server { commandTimeout = 5, decisionTimeout = 10,
      listeners = [[c:on("MAIL", function() smtp.sleep(100) end)]] }
    local s = support.helo(h)
    s:send("MAIL FROM:<a@a.example>"):expect_silence()
    h.clock:advance(10)
    s:expect("451 4.3.0 ")
    assert.matches("timeout: no verdict for MAIL within 10 s %(decisionTimeout%)", s:log())
    h.clock:advance(5)
    s:expect("421 4.4.2 ")
    assert.is_true(s:closed())
  end)

  it("a client that keeps sending complete commands is not dropped by commandTimeout", function()
    local h = server { commandTimeout = 5 }
    local s = support.helo(h)
    for _ = 1, 10 do
      h.clock:advance(4)
      s:send("NOOP"):expect(250)
    end
    assert.is_false(s:closed())
  end)
end)

describe("deadlines: message data", function()
  it("data slower than minDataRate gets 421 once dataTimeout's credit is spent", function()
    local h = server { dataTimeout = 10, minDataRate = 100,
      listeners = [[c:on("DATA", function(m) m:on("reject", function(_, why) REASON(why) end) end)]],
      globals = { REASON = function(r) _G.REASON_SEEN = r end } }
    local s = in_data(h)
    -- 10 octets a second: each earns 0.1 s, so the credit runs out near 11.1 s
    local t0 = h.clock:now()
    while not s:closed() and h.clock:now() - t0 < 20 do
      s:send_raw(("x"):rep(8) .. "\r\n")
      h.clock:advance(1)
    end
    local took = h.clock:now() - t0
    assert.is_true(took > 10.5 and took <= 12.5, ("closed after %s s"):format(took))
    s:expect { code = 421, enhanced = "4.4.2", text = "message data too slow" }
    assert.matches("timeout: message data slower than 100 octets/s %(minDataRate%)", s:log())
    assert.equal("timeout", _G.REASON_SEEN)
    _G.REASON_SEEN = nil
  end)

  it("data at minDataRate or faster is delivered however long it takes", function()
    local h = server { dataTimeout = 10, minDataRate = 100,
      listeners = [[c:on("DATA", function(m) m:on("end", function() m:accept() end) end)]] }
    local s = in_data(h)
    for _ = 1, 60 do	-- 120 octets a second for a minute: six dataTimeouts
      s:send_raw(("y"):rep(118) .. "\r\n")
      h.clock:advance(1)
    end
    s:send_raw(".\r\n"):expect(250)
  end)

  it("a client that stops sending data gets 421 after dataTimeout", function()
    local h = server { dataTimeout = 10, minDataRate = 100 }
    local s = in_data(h)
    s:send_raw(("z"):rep(5000) .. "\r\n")	-- well ahead of the rate
    h.clock:advance(9.9)
    assert.is_false(s:closed())
    h.clock:advance(0.1)
    s:expect { code = 421, enhanced = "4.4.2", text = "timeout exceeded" }
    assert.matches("timeout: no message data for 10 s %(dataTimeout%)", s:log())
  end)

  it("minDataRate = 0: only the idle dataTimeout", function()
    local h = server { dataTimeout = 10, minDataRate = 0 }
    local s = in_data(h)
    for _ = 1, 10 do
      s:send_raw("a")
      h.clock:advance(9)
    end
    assert.is_false(s:closed())
    s:send_raw("\r\n.\r\n"):expect(250)
  end)

  it("the time the policy pauses the message is not the client's", function()
    local h = server { dataTimeout = 10, minDataRate = 100, decisionTimeout = 60,
      listeners = [[
        c:on("DATA", function(m)
          local once = false
          m:on("data", function()
            if once then return end
            once = true
            m:pause()
            smtp.setTimeout(function() m:resume() end, 20000)
          end)
          m:on("end", function() m:accept() end)
        end)]] }
    local s = in_data(h)
    s:send_raw("first\r\n")
    h.clock:advance(25)	-- paused for 20 s, then 5 s of the client's own
    assert.is_false(s:closed())
    s:send_raw("second\r\n.\r\n"):expect(250)
  end)

  it("each message of a session gets its own deadline, also when pipelined", function()
    local h = server { dataTimeout = 10, minDataRate = 100 }
    local s = in_data(h)
    h.clock:advance(9)
    s:send_raw("one\r\n.\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n")
    s:expect(250) ; s:expect(250) ; s:expect(250) ; s:expect(354)
    h.clock:advance(9)	-- 18 s after the first 354, 9 s after the second
    assert.is_false(s:closed())
    s:send_raw("two\r\n.\r\n"):expect(250)
  end)
end)

describe("deadlines: STARTTLS", function()
  local TLS = { cert = "c.pem", key = "k.pem" }

  it("a handshake not done within tlsHandshakeTimeout closes, without a reply", function()
    local h = server { tls = TLS, tlsHandshakeTimeout = 3 }
    local s = support.helo(h)
    s:send("STARTTLS"):expect(220)
    h.clock:advance(2.9)
    assert.is_false(s:closed())
    h.clock:advance(0.1)
    assert.is_true(s:closed())
    s:expect_silence()
    assert.matches("timeout: TLS handshake not done within 3 s of STARTTLS %(tlsHandshakeTimeout%)", s:log())
  end)

  it("commandTimeout bounds the handshake too when it is the smaller", function()
    local h = server { tls = TLS, commandTimeout = 0.5 }
    local s = support.helo(h)
    s:send("STARTTLS"):expect(220)
    h.clock:advance(0.5)
    assert.is_true(s:closed())
    assert.matches("TLS handshake not done within 0%.5 s of STARTTLS %(commandTimeout%)", s:log())
  end)

  it("after the handshake, commandTimeout starts over", function()
    local h = server { tls = TLS, tlsHandshakeTimeout = 3, commandTimeout = 5 }
    local s = support.helo(h)
    s:send("STARTTLS"):expect(220)
    h.clock:advance(2)
    s:handshake()
    h.clock:advance(4.9)
    assert.is_false(s:closed())
    s:send("EHLO c.example"):expect(250)
  end)
end)

describe("deadlines: maxSessionTime", function()
  it("ends a busy session with 421 4.4.2 when its time is up", function()
    local h = server { maxSessionTime = 60, commandTimeout = 30 }
    local s = support.helo(h)
    for _ = 1, 2 do
      h.clock:advance(20)
      s:send("NOOP"):expect(250)
    end
    h.clock:advance(19.9)
    assert.is_false(s:closed())
    h.clock:advance(0.1)
    s:expect { code = 421, enhanced = "4.4.2", text = "connection time limit exceeded" }
    assert.is_true(s:closed())
    assert.matches("timeout: connection open for 60 s %(maxSessionTime%)", s:log())
  end)

  it("cancels a handler still deciding when the time is up", function()
    local cancelled = {}
    local h = server { maxSessionTime = 30, decisionTimeout = 600,
      listeners = [[c:on("RCPT", function() smtp.sleep(100) ; DONE() end)
        c:on("close", function() CLOSED() end)]],
      globals = { DONE = function() cancelled.done = true end,
        CLOSED = function() cancelled.closed = true end } }
    local s = support.helo(h)
    s:send("MAIL FROM:<a@a.example>"):expect(250)
    s:send("RCPT TO:<b@b.example>"):expect_silence()
    h.clock:advance(30)
    s:expect("421 4.4.2 ")
    assert.is_true(s:closed())
    h.clock:advance(100)
    assert.is_nil(cancelled.done)
    assert.is_true(cancelled.closed)
  end)

  it("ends a session waiting for a TLS handshake, without a reply", function()
    local h = server { tls = { cert = "c.pem", key = "k.pem" }, maxSessionTime = 10 }
    local s = support.helo(h)
    h.clock:advance(9)
    s:send("STARTTLS"):expect(220)
    h.clock:advance(1)
    assert.is_true(s:closed())
    s:expect_silence()
    assert.matches("maxSessionTime", s:log())
  end)

  it("is an hour by default, and 0 means no limit", function()
    local h = server {}
    local s = support.helo(h)
    for _ = 1, 17 do
      h.clock:advance(200)
      s:send("NOOP"):expect(250)
    end
    h.clock:advance(200)	-- 3600 s
    s:expect("421 4.4.2 ")
    h = server { maxSessionTime = 0 }
    s = support.helo(h)
    for _ = 1, 30 do
      h.clock:advance(200)
      s:send("NOOP"):expect(250)
    end
    assert.is_false(s:closed())
  end)
end)

describe("deadlines: options", function()
  local testing = require "smtp.testing"

  local function load_error(src)
    local ok, err = pcall(testing.load_string, "local server = require('smtp').createServer()\n" .. src)
    assert.is_false(ok)
    return tostring(err)
  end

  it("checks values, and names the unit", function()
    assert.matches("server.tlsHandshakeTimeout must be a number of seconds", load_error("server.tlsHandshakeTimeout = 0"))
    assert.matches("server.minDataRate must be an integer in %[0, 1e9%] %(octets per second",
      load_error("server.minDataRate = 12.5"))
    assert.matches("server.minDataRate must be", load_error("server.minDataRate = -1"))
    assert.matches("server.maxSessionTime must be 0 %(no limit%) or a number of seconds",
      load_error("server.maxSessionTime = -1"))
    assert.matches("server.maxSessionTime must be", load_error("server.maxSessionTime = 1e6"))
  end)

  it("reach the engine in its units", function()
    local h = testing.load_string([[
      local server = require("smtp").createServer()
      server.tlsHandshakeTimeout = 2.5
      server.minDataRate = 0
      server.maxSessionTime = 0.25
    ]])
    assert.equal(2500, h.policy.config.timeout_tls_ms)
    assert.equal(0, h.policy.config.min_data_rate)
    assert.equal(250, h.policy.config.max_session_ms)
    local d = testing.load_string("require('smtp').createServer()").policy.config
    assert.equal(30000, d.timeout_tls_ms)
    assert.equal(500, d.min_data_rate)
    assert.equal(3600000, d.max_session_ms)
  end)
end)
