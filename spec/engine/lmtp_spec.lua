-- LMTP (RFC 2033) on the real engine: a {lmtp = true} listener speaks LHLO
-- and answers the end of a message once per accepted recipient, with one
-- verdict for all (accept/reject) or one each (message:settle()).

local support = require "spec.engine.support"
local policy = support.policy

local function lmtp(src, globals)
  return policy(src .. ":listen(24, '127.0.0.1', { lmtp = true })", { globals = globals })
end

local function lhlo_transaction(h, rcpts)
  local s = h:connect({ localPort = 24 })
  s:expect("220 mx.test.example LMTP")
  s:send("LHLO c.example"):expect(250)
  s:send("MAIL FROM:<a@example.net>"):expect(250)
  for _, r in ipairs(rcpts) do s:send("RCPT TO:<" .. r .. ">"):expect(250) end
  return s
end

describe("LMTP", function()
  it("LHLO is the 'EHLO' event with connection.lmtp; HELO and EHLO get 500", function()
    local seen = {}
    local h = lmtp([[smtp.createServer(function(c)
      c:on("EHLO", function(helo) SEEN[#SEEN + 1] = helo.name .. " " .. tostring(c.lmtp) end)
    end)]], { SEEN = seen })
    local s = h:connect({ localPort = 24 })
    s:expect(220)
    s:send("EHLO c.example"):expect("500 5.5.1 This is LMTP: send LHLO")
    s:send("HELO c.example"):expect(500)
    s:send("MAIL FROM:<a@example.net>"):expect("503 5.5.1 Send LHLO first")
    local r = s:send("LHLO c.example"):expect(250)
    assert.matches("\nPIPELINING\n", table.concat(r.lines, "\n"))
    assert.same({ "c.example true" }, seen)
    -- the same script's SMTP port: no LHLO, connection.lmtp false
    s = h:connect({ localPort = 25 })
    s:expect("220 mx.test.example ESMTP")
    s:send("LHLO c.example"):expect("500 5.5.2 ")
    s:send("EHLO c.example"):expect(250)
    assert.same({ "c.example true", "c.example false" }, seen)
  end)

  it("one verdict for all by default: a reply per accepted recipient, in RCPT order", function()
    local h = lmtp([[smtp.createServer(function(c)
      c:on("RCPT", function(r) if r.address:find("^nobody") then r.valid = false end end)
      c:on("DATA", function(m) m:on("end", function() m:reject(452, "4.2.2 Try later") end) end)
    end)]])
    local s = lhlo_transaction(h, { "b@example.org", "c@example.org" })
    s:send("RCPT TO:<nobody@example.org>"):expect(550)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n")
    s:expect("452 4.2.2 Try later")
    s:expect("452 4.2.2 Try later")
    s:expect_silence()
  end)

  it("message:settle() replies per recipient from valid/code/message, later too", function()
    local got = {}
    local h = lmtp([[smtp.createServer(function(c)
      c:on("DATA", function(m)
        m:on("end", function()
          smtp.setTimeout(function()
            local r = m.recipients
            r[2].valid, r[2].code, r[2].message = false, 552, "5.2.2 Over quota"
            r[3].valid = false
            m:settle(250, "2.0.0 Delivered")
          end, 1000)
        end)
        m:on("accept", function(_, code) GOT[#GOT + 1] = "accept " .. code end)
      end)
    end)]], { GOT = got })
    local s = lhlo_transaction(h, { "b@example.org", "c@example.org", "d@example.org" })
    s:bdat("x\r\n", true):expect_silence()
    h.clock:advance(1)
    s:expect("250 2.0.0 Delivered")
    s:expect("552 5.2.2 Over quota")
    s:expect("550 5.7.1 Message rejected")
    assert.same({ "accept 250" }, got)
    s:send("NOOP"):expect(250)
  end)

  it("settle() with every recipient refused rejects the message; accept() ignores the fields", function()
    local why = {}
    local h = lmtp([[smtp.createServer(function(c)
      c:on("DATA", function(m)
        m:on("end", function()
          for _, r in ipairs(m.recipients) do r.valid, r.code = false, 450 end
          if m.recipients[1].address:find("^all") then m:accept() else m:settle() end
        end)
        m:on("abort", function(_, reason) WHY[#WHY + 1] = reason end)
      end)
    end)]], { WHY = why })
    local s = lhlo_transaction(h, { "b@example.org", "c@example.org" })
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n")
    s:expect("450 4.7.1 ")
    s:expect("450 4.7.1 ")
    assert.same({ "rejected" }, why)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<all@example.org>"):expect(250)
    s:send("RCPT TO:<c@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n")
    s:expect("250 2.0.0 Message accepted")
    s:expect("250 2.0.0 Message accepted")
  end)

  it("a bad per-recipient code is a load-time-style error in the handler: 451 for all", function()
    local h = lmtp([[smtp.createServer(function(c)
      c:on("DATA", function(m)
        m:on("end", function() m.recipients[1].valid, m.recipients[1].code = false, 250 ; m:settle() end)
      end)
    end)]])
    local s = lhlo_transaction(h, { "b@example.org", "c@example.org" })
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n")
    s:expect("451 4.3.0 ")
    s:expect("451 4.3.0 ")
    assert.matches("code must be 4xx or 5xx", s:log())
  end)

  it("listens on a unix socket's path; a bad path is an error at the listen line", function()
    local h = policy([[
      local s = smtp.createServer()
      s:listen("/run/luasmtpd/lmtp.sock", { lmtp = true })
      s:listen(2525)
    ]])
    assert.same({ port = 0, host = "/run/luasmtpd/lmtp.sock", path = "/run/luasmtpd/lmtp.sock",
      lmtp = true }, h.listening[1])
    local s = h:connect({ socket = "/run/luasmtpd/lmtp.sock" })
    s:expect("220 mx.test.example LMTP")
    s = h:connect({ localPort = 2525 })
    s:expect("220 mx.test.example ESMTP")
    for _, bad in ipairs { '"run/x.sock"', '"/" .. ("x"):rep(107)', '"/x.sock", "127.0.0.1"' } do
      local ok, err = pcall(policy, "smtp.createServer():listen(" .. bad .. ")")
      assert.is_false(ok)
      assert.matches("policy.lua:2: listen: ", err)
    end
  end)
end)
