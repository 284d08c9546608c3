-- The client's name where the engine writes it: connection.hostname (a
-- forward-confirmed lookup) and XCLIENT NAME= become the session's reverse
-- name, so the Received field says "from HELO (name [ip])" and the summary
-- lines carry name=.  smtp.testing's fake resolver and virtual clock.
local support = require "spec.engine.support"

local function harness(read_hostname)
  local got, opt = {}, { read = read_hostname }
  local h = support.policy([[
    local server = smtp.createServer(function(c)
      c:on("HELO", function() if OPT.read then GOT.hostname = c.hostname end end)
      c:on("DATA", function(m)
        local chunks = {}
        m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
        m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
      end)
    end)
    server.xclientFrom = { "10.0.0.0/8" }
  ]], { globals = { GOT = got, OPT = opt } })
  return h, got, opt
end

-- HELO, answered once the fake resolver has (the clock advanced a second at a time)
local function helo(h, s)
  s:send("HELO client.example")
  for _ = 1, 60 do
    if pcall(s.expect, s, 250) then return end
    h.clock:advance(1)
  end
  error("HELO never answered")
end

local function mail(s)
  s:send("MAIL FROM:<a@example.net>"):expect(250)
  s:send("RCPT TO:<b@example.org>"):expect(250)
  s:send("DATA"):expect(354)
  s:send_raw("x\r\n.\r\n"):expect(250)
end

local function received(text)
  return (text:match("^Received: (.-)\r\n[^ \t]"):gsub("\r\n[ \t]", " "))
end

local function lines(log, event)
  local t = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("%] " .. event .. " client=") then t[#t + 1] = line end
  end
  return t
end

describe("the client's reverse name", function()
  it("is connection.hostname once a handler looked it up: Received field and summary lines", function()
    local h, got = harness(true)
    h.dns:add("192.0.2.7", "PTR", "mail.example"):add("mail.example", "A", "192.0.2.7")
    local s = h:connect { remoteAddress = "192.0.2.7" }
    s:expect(220)
    helo(h, s)
    assert.equal("mail.example", got.hostname)
    mail(s)
    assert.matches("^from client%.example %(mail%.example %[192%.0%.2%.7%]%) by ", received(got.text))
    s:send("QUIT"):expect(221)
    local tx, conn = lines(s:log(), "transaction"), lines(s:log(), "connection")
    assert.equal(1, #tx, s:log())
    assert.matches(" client=192%.0%.2%.7 name=mail%.example port=", tx[1])
    assert.matches(" client=192%.0%.2%.7 name=mail%.example port=", conn[1])
  end)

  it("is in every Received field when the 'connection' listener reads it (docs/API.md's recipe)", function()
    local got = {}
    local h = support.policy([[
      smtp.createServer(function(c)
        local _ = c.hostname
        c:on("DATA", function(m)
          local chunks = {}
          m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
          m:on("end", function() GOT.text = table.concat(chunks) ; m:accept() end)
        end)
      end)
    ]], { globals = { GOT = got } })
    h.dns:add("192.0.2.7", "PTR", "mail.example"):add("mail.example", "A", "192.0.2.7")
    local s = h:connect { remoteAddress = "192.0.2.7" }
    for _ = 1, 60 do
      if pcall(s.expect, s, 220) then break end
      h.clock:advance(1)
    end
    s:send("HELO client.example"):expect(250)
    mail(s)
    assert.matches("^from client%.example %(mail%.example %[192%.0%.2%.7%]%) by ", received(got.text))
  end)

  it("is left out when the name does not confirm, or nobody asked", function()
    for _, read in ipairs { true, false } do
      local h, got = harness(read)
      h.dns:add("192.0.2.7", "PTR", "liar.example"):add("liar.example", "A", "192.0.2.70")
      local s = h:connect { remoteAddress = "192.0.2.7" }
      s:expect(220)
      helo(h, s)
      mail(s)
      assert.matches("^from client%.example %(%[192%.0%.2%.7%]%) by ", received(got.text))
      s:send("QUIT"):expect(221)
      assert.not_matches(" name=", lines(s:log(), "transaction")[1])
    end
  end)

  it("is XCLIENT NAME= (as Postfix): in the Received field, the summary, connection.hostname", function()
    local h, got = harness(true)
    local s = h:connect { remoteAddress = "10.1.2.3" }
    s:expect(220)
    s:send("XCLIENT ADDR=192.0.2.77 NAME=relayed.example"):expect(220)
    helo(h, s)
    assert.equal("relayed.example", got.hostname)
    assert.same({}, h.dns.queries)	-- the proxy's name is trusted: no lookup
    mail(s)
    assert.matches("^from client%.example %(relayed%.example %[192%.0%.2%.77%]%) by ", received(got.text))
    s:send("QUIT"):expect(221)
    assert.matches(" client=192%.0%.2%.77 name=relayed%.example port=", lines(s:log(), "transaction")[1])
  end)

  it("follows XCLIENT ADDR=: looked up again for the new address, else forgotten", function()
    local h, got, opt = harness(true)
    h.dns:add("10.1.2.3", "PTR", "proxy.example"):add("proxy.example", "A", "10.1.2.3")
    h.dns:add("192.0.2.78", "PTR", "other.example"):add("other.example", "A", "192.0.2.78")
    local s = h:connect { remoteAddress = "10.1.2.3" }
    s:expect(220)
    helo(h, s)
    assert.equal("proxy.example", got.hostname)
    s:send("XCLIENT ADDR=192.0.2.78"):expect(220)
    helo(h, s)
    assert.equal("other.example", got.hostname)
    mail(s)
    assert.matches("^from client%.example %(other%.example %[192%.0%.2%.78%]%) by ", received(got.text))
    -- the handler does not ask this time: the old name must not stay
    opt.read = false
    s:send("XCLIENT ADDR=192.0.2.79"):expect(220)
    helo(h, s)
    mail(s)
    assert.matches("^from client%.example %(%[192%.0%.2%.79%]%) by ", received(got.text))
    s:send("QUIT"):expect(221)
    local tx, conn = lines(s:log(), "transaction"), lines(s:log(), "connection")
    assert.equal(2, #tx, s:log())
    assert.matches(" client=192%.0%.2%.78 name=other%.example port=%d+ proxy=10%.1%.2%.3 proxy_port=%d+ helo=", tx[1])
    assert.matches(" client=192%.0%.2%.79 port=%d+ proxy=10%.1%.2%.3 proxy_port=%d+ helo=", tx[2])
    assert.matches(" client=192%.0%.2%.79 port=%d+ proxy=10%.1%.2%.3 .* xclients=2 ", conn[1])
  end)
end)
