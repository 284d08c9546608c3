-- Messages on the real engine: data chunks, accept/reject now or later,
-- events, properties, the decision timeout, aborts and flow control.

local support = require "spec.engine.support"
local policy = support.policy

local function to_data(h)
  local s = h:connect()
  s:expect(220)
  s:send("EHLO c.example"):expect(250)
  s:send("MAIL FROM:<alice@example.net>"):expect(250)
  s:send("RCPT TO:<bob@example.org>"):expect(250)
  s:send("RCPT TO:<carol@example.org>"):expect(250)
  s:send("DATA"):expect(354)
  return s
end

describe("messages", function()
  it("'data' gets the message dot-unstuffed with CRLF kept, without the final dot", function()
    local chunks = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("data", function(chunk) CHUNKS[#CHUNKS + 1] = chunk end)
          m:on("end", function() m:accept() end)
        end)
      end)
    ]], { globals = { CHUNKS = chunks } })
    local s = to_data(h)
    s:send_raw("Subject: hi\r\n\r\n..dot\r\nlast\r\n.\r\n"):expect("250 2.0.0 ")
    -- the engine's Received field comes first (in the first chunk)
    local data = table.concat(chunks)
    local received, rest = data:match("^(Received: from c%.example .-\r\n)(Subject: .*)$")
    assert.truthy(received, data)
    assert.equal("Subject: hi\r\n\r\n.dot\r\nlast\r\n", rest)
  end)

  it("without a 'data' listener its chunks never reach Lua; size catches up when one comes", function()
    -- the line of kinds.data in smtp.dispatch, to count its calls
    local path = package.searchpath("smtp.dispatch", package.path)
    local line = 0
    for l in io.lines(path) do
      line = line + 1
      if l:find("function kinds.data(", 1, true) then break end
    end
    local calls = 0
    local m
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(msg)
          MSG(msg)
          msg:on("end", function() msg:accept() end)
        end)
      end)
    ]], { globals = { MSG = function(x) m = x end } })
    local s = to_data(h)
    debug.sethook(function()
      local info = debug.getinfo(2, "S")
      if info.linedefined == line and info.source:find("smtp/dispatch.lua", 1, true) then
        calls = calls + 1
      end
    end, "c")
    s:send_raw("12345\r\n")
    debug.sethook()
    assert.equal(0, calls)
    local chunks = {}
    m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
    assert.truthy(m.size > 7, m.size)	-- the Received field and 12345
    local before = m.size
    s:send_raw("678\r\n.\r\n"):expect(250)
    assert.equal("678\r\n", table.concat(chunks))
    assert.equal(12, m.size)
    assert.truthy(before > 0)
  end)

  it("has sender, recipients (alias receivers), connection, size, accepted", function()
    local m
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(msg)
          MSG(msg)
          msg:on("end", function() msg:accept() end)
        end)
      end)
    ]], { globals = { MSG = function(x) m = x end } })
    local s = to_data(h)
    assert.equal("alice@example.net", m.sender.address)
    assert.equal("Message from alice@example.net", "Message from " .. m.sender)
    assert.equal(2, #m.recipients)
    assert.equal("carol@example.org", m.recipients[2].address)
    assert.equal(m.recipients, m.receivers)
    assert.equal(m, m.connection.currentMessage)
    assert.is_false(m.accepted)
    s:send_raw("12345\r\n.\r\n"):expect(250)
    assert.equal(7, m.size)
    assert.is_true(m.accepted)
    assert.is_nil(m.connection.currentMessage)
  end)

  it("reject() gives 550 by default, or the code and text chosen", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("end", function()
            if m.size > 10 then m:reject(552, "5.3.4 Too long for us") else m:reject() end
          end)
        end)
      end)
    ]])
    local s = to_data(h)
    s:send_raw("short\r\n.\r\n"):expect("550 ")
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("a much longer message\r\n.\r\n"):expect("552 5.3.4 Too long for us")
  end)

  it("reject() with a 4xx is a temporary failure", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m) m:on("end", function() m:reject(451, "4.7.0 later") end) end)
      end)
    ]])
    to_data(h):send_raw("x\r\n.\r\n"):expect("451 4.7.0 later")
  end)

  it("emits 'accept' and 'reject' with the code the client got", function()
    local events = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("accept", function(msg, code) EVENTS[#EVENTS + 1] = "accept " .. code end)
          m:on("reject", function(msg, code) EVENTS[#EVENTS + 1] = "reject " .. code end)
          m:on("end", function()
            if m.recipients[1].address == "bob@example.org" then m:accept() else m:reject(554) end
          end)
        end)
      end)
    ]], { globals = { EVENTS = events } })
    local s = to_data(h)
    s:send_raw("x\r\n.\r\n"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<zed@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(554)
    assert.same({ "accept 250", "reject 554" }, events)
  end)

  it("refuses a wrong code class in accept/reject where it is called", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m) m:on("end", function() m:accept(550) end) end)
      end)
    ]])
    to_data(h):send_raw("x\r\n.\r\n"):expect("451 4.3.0 ")
    assert.matches("accept code must be 2xx, got 550", h:log())
  end)

  it("a message with no DATA listener is accepted", function()
    local h = policy([[ smtp.createServer(function(c) end) ]])
    local s = to_data(h)
    s:send_raw("x\r\n.\r\n"):expect("250 2.0.0 ")
  end)

  it("a message nobody decides gets 451 after decisionTimeout", function()
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m) m:on("data", function() end) end)
      end)
      server.decisionTimeout = 30
    ]])
    local s = to_data(h)
    s:send_raw("x\r\n.\r\n"):expect_silence()
    h.clock:advance(29)
    s:expect_silence()
    h.clock:advance(1)
    s:expect("451 4.3.0 ")
    assert.matches("no verdict for DATA_END", s:log())
    s:send("NOOP"):expect(250)	-- the session goes on
  end)

  it("accept() may come later, from a timer", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("end", function()
            smtp.setTimeout(function() m:accept(250, "2.0.0 Queued as X1") end, 5000)
          end)
        end)
      end)
    ]])
    local s = to_data(h)
    s:send_raw("x\r\n.\r\n"):expect_silence()
    h.clock:advance(4.9)
    s:expect_silence()
    h.clock:advance(0.1)
    s:expect("250 2.0.0 Queued as X1")
  end)

  it("reject() during the DATA handlers refuses the DATA command", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m) m:reject(554, "5.7.1 No mail from you") end)
      end)
    ]])
    local s = support.transaction(h)
    s:send("DATA"):expect("554 5.7.1 No mail from you")
  end)

  it("a message over maxSize is rejected: 552 and a 'reject' event", function()
    local why
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("reject", function(msg, reason) WHY(reason, msg.aborted) end)
          m:on("end", function() m:accept() end)
        end)
      end)
      server.maxSize = 10
    ]], { globals = { WHY = function(r, a) why = { r, a } end } })
    local s = to_data(h)
    s:send_raw(string.rep("x", 40) .. "\r\n.\r\n"):expect("552 ")
    assert.same({ "too big", "too big" }, why)
  end)

  it("a client that disconnects mid-message gives 'reject' then 'close'", function()
    local order = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("reject", function(msg, reason) ORDER[#ORDER + 1] = "reject " .. reason end)
        end)
        c:on("close", function() ORDER[#ORDER + 1] = "close" end)
      end)
    ]], { globals = { ORDER = order } })
    local s = to_data(h)
    s:send_raw("partial line\r\n")
    s:close()
    assert.same({ "reject disconnect", "close" }, order)
  end)

  it("pause() holds the client's data until resume()", function()
    local chunks = {}
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("data", function(chunk)
            CHUNKS[#CHUNKS + 1] = chunk
            m:pause()
            smtp.setTimeout(function() m:resume() end, 1000)
          end)
          m:on("end", function() m:accept() end)
        end)
      end)
      server.receivedHeader = false	-- the client's chunks only
    ]], { globals = { CHUNKS = chunks } })
    local s = to_data(h)
    s:send_raw("one\r\n")
    s:send_raw("two\r\n.\r\n")
    assert.same({ "one\r\n" }, chunks)
    s:expect_silence()
    h.clock:advance(1)
    assert.same({ "one\r\n", "two\r\n" }, chunks)
    h.clock:advance(1)
    s:expect(250)
  end)
end)
