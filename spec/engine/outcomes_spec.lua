-- Outcomes on the real engine: the engine's answer to MAIL, RCPT, the end of
-- data (and HELO, RSET) reaches Lua with the next call into Lua rather than
-- in a call of its own.  Whatever runs next must see it applied: the next
-- event's handlers, a message's accept/reject listeners before them, a
-- handler that just decided, a timer; and none may be lost, however many
-- pipelined commands pile up before Lua is called again.

local policy = require("spec.engine.support").policy

local function expect_all(s, ...)
  for _, code in ipairs { ... } do s:expect(code) end
end

local function addresses(list)
  local out = {}
  for i, r in ipairs(list) do out[i] = r.address end
  return out
end

describe("outcomes", function()
  it("a pipelined batch: each handler sees the outcomes of the commands before it", function()
    local seen = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          SEEN[#SEEN + 1] = { "RCPT " .. r.address, c.sender and c.sender.address, #c.recipients }
          if r.address:find("^no") then r.valid = false end
        end)
        c:on("DATA", function(m)
          SEEN[#SEEN + 1] = { "DATA", c.sender.address, #c.recipients }
          m:on("end", function() m:accept() end)
        end)
      end)
    ]], { globals = { SEEN = seen } })
    local s = h:connect()
    s:expect(220)
    s:pipeline { "EHLO c.example", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>",
      "RCPT TO:<no@example.org>", "RCPT TO:<c@example.org>", "DATA" }
    expect_all(s, 250, 250, 250, 550, 250, 354)
    assert.same({
      { "RCPT b@example.org", "a@example.net", 0 },
      { "RCPT no@example.org", "a@example.net", 1 },
      { "RCPT c@example.org", "a@example.net", 1 },
      { "DATA", "a@example.net", 2 },
    }, seen)
  end)

  it("more outcomes pile up than are kept pending: none is lost", function()
    local got
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m) GOT(m) ; m:on("end", function() m:accept() end) end)
      end)
    ]], { globals = { GOT = function(m) got = m end } })
    local s = h:connect()
    s:expect(220)
    local batch, want = { "EHLO c.example", "MAIL FROM:<a@example.net>" }, {}
    for i = 1, 40 do	-- no RCPT listener: forty outcomes before the DATA ask
      batch[#batch + 1] = ("RCPT TO:<r%d@example.org>"):format(i)
      want[i] = ("r%d@example.org"):format(i)
    end
    batch[#batch + 1] = "DATA"
    s:pipeline(batch)
    expect_all(s, 250, 250)
    for _ = 1, 40 do s:expect(250) end
    s:expect(354)
    assert.same(want, addresses(got.recipients))
    assert.equal("a@example.net", got.sender.address)
  end)

  it("a message's accept and reject fire before the next command's handlers", function()
    local order = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m) ORDER[#ORDER + 1] = "MAIL " .. m.address end)
        c:on("QUIT", function() ORDER[#ORDER + 1] = "QUIT" end)
        c:on("close", function() ORDER[#ORDER + 1] = "close" end)
        c:on("DATA", function(m)
          m:on("accept", function(_, code) ORDER[#ORDER + 1] = "accept " .. code end)
          m:on("reject", function(_, code) ORDER[#ORDER + 1] = "reject " .. code end)
          m:on("end", function()
            if m.sender.address == "bad@example.net" then m:reject(554) else m:accept() end
          end)
        end)
      end)
    ]], { globals = { ORDER = order } })
    local s = h:connect()
    s:expect(220)
    s:pipeline { "EHLO c.example", "MAIL FROM:<good@example.net>", "RCPT TO:<b@example.org>", "DATA" }
    expect_all(s, 250, 250, 250, 354)
    -- the end of data and the next transaction in one write
    s:send_raw("x\r\n.\r\nMAIL FROM:<bad@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    expect_all(s, 250, 250, 250, 354)
    s:send_raw("y\r\n.\r\nQUIT\r\n")
    expect_all(s, 554, 221)
    assert.same({ "MAIL good@example.net", "accept 250", "MAIL bad@example.net", "reject 554",
      "QUIT", "close" }, order)
  end)

  it("a decision made after a wait: its outcome is applied before the next command's handlers", function()
    local seen, msg = {}, nil
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m)
          SEEN[#SEEN + 1] = { "MAIL " .. m.address, c.currentMessage == nil, #c.recipients }
        end)
        c:on("DATA", function(m)
          MSG(m)
          m:on("accept", function() SEEN[#SEEN + 1] = "accept event" end)
          m:on("end", function()
            smtp.sleep(2)
            m:accept()
          end)
        end)
      end)
    ]], { globals = { SEEN = seen, MSG = function(m) msg = m end } })
    local s = h:connect()
    s:expect(220)
    s:pipeline { "EHLO c.example", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA" }
    expect_all(s, 250, 250, 250, 354)
    s:send_raw("x\r\n.\r\n"):expect_silence()
    h.clock:advance(2)
    s:expect(250)
    assert.is_true(msg.accepted)
    s:send("MAIL FROM:<next@example.net>"):expect(250)
    assert.same({ { "MAIL a@example.net", true, 0 }, "accept event",
      { "MAIL next@example.net", true, 0 } }, seen)
  end)

  it("a timer after the last reply sees the outcome", function()
    local seen = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT", function() smtp.setTimeout(function()
          SEEN[#SEEN + 1] = addresses(c.recipients)
        end, 1000) end)
      end)
    ]], { globals = { SEEN = seen, addresses = addresses } })
    local s = h:connect()
    s:expect(220)
    s:pipeline { "EHLO c.example", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>" }
    expect_all(s, 250, 250, 250)
    h.clock:advance(1)
    assert.same({ { "b@example.org" } }, seen)
  end)
end)
