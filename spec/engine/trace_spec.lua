-- Trace fields on the real engine: the Received field on top of the 'data'
-- stream (DATA and BDAT), message:addHeader, and the hop limit (RFC 5321
-- 4.4, 6.3).

local support = require "spec.engine.support"
local policy = support.policy
local core = require "smtp_core"

-- Records the message as its 'data' listeners got it; extra runs in 'DATA'.
local function recording(extra, options)
  local got = {}
  local h = policy([[
    local server = smtp.createServer(function(c)
      c:on("DATA", function(m)
        local chunks = {}
        ]] .. (extra or "") .. [[
        m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
        m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
        m:on("abort", function(_, why) GOT.abort = why end)
      end)
    end)
  ]] .. (options or ""), { globals = { GOT = got } })
  return h, got
end

-- The values of the Received fields of text's header section, unfolded.
local function received_fields(text)
  local fields = {}
  local t = "\r\n" .. text
  local header = t:match("^(.-\r\n)\r\n") or t
  for field in header:gsub("\r\n[ \t]", " "):gmatch("\r\n[Rr][Ee][Cc][Ee][Ii][Vv][Ee][Dd]: ?([^\r]*)") do
    fields[#fields + 1] = field
  end
  return fields
end

describe("the Received field", function()
  it("is the first thing the 'data' stream carries, with the RFC 5321 4.4 clauses", function()
    local h, got = recording(nil, "server.hostname = 'mx.example.org'")
    local s = h:connect { remoteAddress = "198.51.100.7" }
    local r = s:sendmail { helo = "client.example", from = "a@example.net", to = "bob@example.org",
      data = "Subject: hi\r\n\r\nbody\r\n" }
    assert.is_true(r.ok, s:transcript())
    local top, rest = got.text:match("^(Received: .-\r\n)(Subject: hi\r\n\r\nbody\r\n)$")
    assert.truthy(top, got.text)
    local f = received_fields(top)[1]
    assert.matches("^from client%.example %(%[198%.51%.100%.7%]%) by mx%.example%.org %(luasmtpd%) "
      .. "with ESMTP id " .. s.handle:id() .. " for <bob@example%.org>; "
      .. "%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d %+0000$", f)
    for line in top:gmatch("([^\r]*)\r\n") do assert.is_true(#line <= 78, line) end
    assert.equal("", rest:sub(#rest + 1))
  end)

  it("names the protocol (RFC 3848), IPv6 literals, the reverse name; no 'for' with two recipients", function()
    local h, got = recording()
    local s = h:connect { remoteAddress = "2001:db8::25" }
    assert.is_true(s.handle:setReverseName("mail.client.example"))
    assert.is_nil(s.handle:setReverseName("bad name"))
    s:expect(220)
    s:send("HELO client.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("RCPT TO:<c@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    local f = received_fields(got.text)[1]
    assert.matches("^from client%.example %(mail%.client%.example %[IPv6:2001:db8::25%]%) by mx%.test%.example "
      .. "%(luasmtpd%) with SMTP id %x+; ", f)
  end)

  it("says ESMTPSA after STARTTLS and AUTH, LMTP on an LMTP session", function()
    local got = {}
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("AUTH", function(a) a.valid = true end)
        c:on("DATA", function(m)
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
        end)
      end)
    ]], { globals = { GOT = got }, config = { auth_methods = core.AUTH.PLAIN, starttls = true } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:starttls()
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN AGFsaWNlAHNlY3JldA=="):expect(235)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    assert.matches(" with ESMTPSA id ", received_fields(got.text)[1])

    h = policy([[
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m)
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
        end)
      end)
    ]], { globals = { GOT = got }, config = { lmtp = true } })
    s = h:connect()
    s:expect(220)
    s:send("LHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    assert.matches(" with LMTP id ", received_fields(got.text)[1])
  end)

  it("tops BDAT messages too, and is not counted in the message's size", function()
    local size, got = nil, {}
    local h = policy([[
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m)
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() GOT.text = table.concat(chunks) ; SIZE(m.size) ; m:accept() end)
        end)
      end)
      server.maxSize = 10
    ]], { globals = { GOT = got, SIZE = function(n) size = n end } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("12345"):expect(250)
    s:bdat("67890", true):expect(250)	-- 10 octets: within maxSize, the field aside
    assert.equal(10, size)
    assert.matches("^Received: from c%.example .*\r\n1234567890$", got.text)
  end)

  it("is left out with server.receivedHeader = false", function()
    local h, got = recording(nil, "server.receivedHeader = false")
    local s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "x\r\n" }.ok)
    assert.equal("x\r\n", got.text)
  end)
end)

describe("message:addHeader", function()
  it("adds fields after the Received field, in call order, folded", function()
    local long = ("word "):rep(30) .. "end"
    local h, got = recording([[
        assert(m:addHeader("X-Spam-Score", "1.5"))
        assert(m:addHeader("X-Long", "]] .. long .. [["))
    ]])
    local s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "Subject: s\r\n\r\nb\r\n" }.ok,
      s:transcript())
    local after = got.text:match("^Received: .-\r\n(X%-.*)$")
    assert.truthy(after, got.text)
    local spam, xlong, rest = after:match("^(X%-Spam%-Score: 1%.5\r\n)(X%-Long: .-\r\n)(Subject: s\r\n\r\nb\r\n)$")
    assert.truthy(rest, after)
    for line in xlong:gmatch("([^\r]*)\r\n") do assert.is_true(#line <= 78, line) end
    assert.equal("X-Long: " .. long .. "\r\n", xlong:gsub("\r\n ", " "))
    assert.truthy(spam)
  end)

  it("raises for a CR or LF in the value, a bad name, or once the data began: 451", function()
    for _, call in ipairs {
      [[m:addHeader("X-A", "v\r\nBcc: evil@example.com")]],
      [[m:addHeader("X-A", "v\nx")]],
      [[m:addHeader("X A", "v")]],
      [[m:addHeader("X:A", "v")]],
      [[m:addHeader("X-A", 5)]],
    } do
      local h, got = recording(call)
      local s = h:connect()
      local r = s:sendmail { from = "a@example.net", to = "b@example.org", data = "x\r\n" }
      assert.equal(451, r.data.code, call)
      assert.matches("handler %a+ failed: .*addHeader", s:log())
      assert.is_nil(got.text)
    end
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("data", function() m:addHeader("X-Late", "1") end)
          m:on("end", function() m:accept() end)
        end)
      end)
    ]])
    local s = h:connect()
    local r = s:sendmail { from = "a@example.net", to = "b@example.org", data = "x\r\n" }
    assert.equal(451, r.done.code)
    assert.matches("handler data failed: .*addHeader: no message, or its data began", s:log())
  end)

  it("returns fail past the size bound; what was added stays", function()
    local h, got = recording([[
        local n, ok, why = 0, true, nil
        while ok do
          n = n + 1
          ok, why = m:addHeader("X-N" .. n, ("v"):rep(70))
        end
        GOT.why, GOT.n = why, n
    ]])
    local s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "x\r\n" }.ok)
    assert.matches("too long", got.why)
    assert.is_true(got.n > 100)
    assert.truthy(got.text:find("X-N" .. (got.n - 1) .. ": ", 1, true))
    assert.falsy(got.text:find("X-N" .. got.n .. ":", 1, true))
  end)

  it("works for every message of a session, by DATA and by BDAT", function()
    local texts = {}
    local h = policy([[
      local n = 0
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          n = n + 1
          assert(m:addHeader("X-Message", tostring(n)))
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() TEXTS[n] = table.concat(chunks) ; m:accept() end)
        end)
      end)
    ]], { globals = { TEXTS = texts } })
    local s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "one\r\n" }.ok)
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "two\r\n" }.ok)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("three\r\n", true):expect(250)
    assert.matches("\r\nX%-Message: 1\r\none\r\n$", texts[1])
    assert.matches("\r\nX%-Message: 2\r\ntwo\r\n$", texts[2])
    assert.matches("\r\nX%-Message: 3\r\nthree\r\n$", texts[3])
  end)

  it("belongs to one message: a refused DATA drops what it added", function()
    local got = {}
    local h = policy([[
      local try = 0
      local server = smtp.createServer(function(c)
        c:on("DATA", function(m)
          try = try + 1
          assert(m:addHeader("X-Try", tostring(try)))
          if try == 1 then m.valid, m.code = false, 451 return end
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
        end)
      end)
    ]], { globals = { GOT = got } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(451)
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    assert.matches("\r\nX%-Try: 2\r\nx\r\n$", got.text)
    assert.falsy(got.text:find("X-Try: 1", 1, true))
  end)
end)

describe("server.maxHops", function()
  local function hops(n, folded)
    local t = {}
    for i = 1, n do
      t[#t + 1] = (i % 2 == 0 and "received:" or "Received: ") .. "from h" .. i .. "\r\n"
      if folded then t[#t + 1] = "\tby x; date\r\n" end
    end
    return table.concat(t) .. "Subject: s\r\n\r\nReceived: in the body\r\n"
  end

  it("lets 100 Received fields through, refuses 101 with 554 5.4.6; 'abort' says why", function()
    local h, got = recording()
    local s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = hops(100, true) }.ok)
    assert.equal(101, #received_fields(got.text))	-- ours on top
    got.text = nil
    local r = s:sendmail { from = "a@example.net", to = "b@example.org", data = hops(101) }
    assert.equal(554, r.done.code)
    assert.equal("5.4.6", r.done.enhanced)
    assert.matches("Too many hops", r.done.text)
    assert.equal("too many hops", got.abort)
    assert.is_nil(got.text)
    assert.matches("message refused while receiving: too many hops", s:log())
  end)

  it("counts across chunk boundaries, over BDAT too; 0 turns it off", function()
    local h, got = recording(nil, "server.maxHops = 3")
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    local text = hops(4)
    local cut = text:find("eceived", 30, true)	-- inside the fourth name... or any: the sum counts
    s:bdat(text:sub(1, cut)):expect(250)
    s:bdat(text:sub(cut + 1), true):expect("554 5.4.6 ")
    assert.equal("too many hops", got.abort)

    h, got = recording(nil, "server.maxHops = 0")
    s = h:connect()
    assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = hops(300) }.ok)
  end)

  it("is checked as an option", function()
    assert.has_error(function() policy("smtp.createServer().maxHops = -1") end)
    assert.has_error(function() policy("smtp.createServer().receivedHeader = 'yes'") end)
  end)
end)
