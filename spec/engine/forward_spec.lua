-- message:forward and connection:proxy on smtp.testing's fake next hops
-- (h.nexthop), on the virtual clock: what the next hop gets, the replies
-- the client gets from it, and every way a forward ends without a final
-- dot.  spec/e2e/forward_spec.lua has the real client (nexthop.c) against
-- Postfix's smtp-sink and misbehaving peers.
local support = require "spec.engine.support"

local FORWARD = [[
smtp.createServer(function(conn)
  conn:on("DATA", function(m)
    local ok, err = m:forward(TARGET)
    if not ok then conn:log("info", "not forwarded: %s", err) end
    m:on("data", function(chunk)
      if chunk:find("REJECT-ME", 1, true) then m:reject(550, "5.7.1 Not this one") end
    end)
  end)
end)
]]

local function forward_policy(target)
  return support.policy((FORWARD:gsub("TARGET", target)))
end

-- runs a sendmail whose steps wait for the fake: the clock advances until done
local function send(h, m)
  local s = h:connect()
  s:expect(220)
  s:send("EHLO c.example"):expect(250)
  s:send("MAIL FROM:<" .. (m.from or "a@example.net") .. ">" .. (m.mail_params or ""))
  h.clock:advance(0)
  local r = { mail = s:reply(), rcpt = {} }
  if r.mail.code >= 400 then return r, s end
  for i, a in ipairs(m.to or { "b@example.org" }) do
    s:send("RCPT TO:<" .. a .. ">")
    h.clock:advance(0)
    r.rcpt[i] = s:reply()
  end
  s:send("DATA")
  h.clock:advance(m.advance or 0)
  r.data = s:reply()
  if r.data.code ~= 354 then return r, s end
  s:send_raw((m.data or "Subject: t\r\n\r\nhello\r\n"):gsub("\r\n%.", "\r\n..") .. ".\r\n")
  h.clock:advance(m.advance or 0)
  r.done = s:reply()
  return r, s
end

describe("message:forward (fake next hop)", function()
  it("hands envelope and body to the next hop; the client gets its reply", function()
    local h = forward_policy([[{ host = "hub.example", port = 2525, tls = "none" }]])
    local peer = h.nexthop:listen("hub.example", 2525, { replies = { ["end"] = "250 2.0.0 Ok: queued as ABC" } })
    local body = "Subject: t\r\n\r\n.leading dot\r\n\195\169t\195\169\r\n"
    local r = send(h, { to = { "b@example.org", "c@example.org" }, data = body })
    assert.equal(354, r.data.code)
    assert.equal(250, r.done.code)
    assert.matches("2.0.0 Ok: queued as ABC", r.done.raw[1], 1, true)
    assert.equal(1, #peer.messages)
    assert.equal("a@example.net", peer.messages[1].from)
    assert.same({ "b@example.org", "c@example.org" }, peer.messages[1].to)
    -- the engine's trace field on top (server.receivedHeader), then the client's octets
    local got = peer.messages[1].body
    assert.matches("^Received: from c%.example %(%[192%.0%.2%.1%]%) by mx%.test%.example", got)
    assert.equal(body, got:sub(-#body))
    assert.equal(1, select(2, got:gsub("\nReceived: ", "")) + (got:find("^Received: ") and 1 or 0))
    assert.matches("forwarded to hub.example:2525: 250 2.0.0 Ok: queued as ABC", h:log(), 1, true)
  end)

  it("asks the server's name (EHLO's default) once, not per message", function()
    -- the harness reads opts.hostname each time the server's name is asked
    -- (luasmtpd: a blocking getaddrinfo)
    local asked = 0
    local opts = setmetatable({}, { __index = function(_, k)
      if k == "hostname" then asked = asked + 1 end
    end })
    local h = support.policy((FORWARD:gsub("TARGET", [[{ host = "hub.example", port = 2525, tls = "none" }]])), opts)
    local peer = h.nexthop:listen("hub.example", 2525)
    local before = asked
    local r1 = send(h, {})
    local r2 = send(h, {})
    assert.equal(250, r1.done.code)
    assert.equal(250, r2.done.code)
    assert.equal(2, #peer.messages)
    assert.truthy(asked - before <= 1, asked - before)
  end)

  it("answers 451 4.4.1 when the next hop is down, and never says 354", function()
    local h = forward_policy([[{ host = "down.example", port = 25 }]])
    local r = send(h, {})
    assert.equal(451, r.data.code)
    assert.matches("4.4.1", r.data.raw[1], 1, true)
    assert.matches("not forwarded: 451 Next hop down.example:25: connection refused", h:log(), 1, true)
  end)

  it("passes the next hop's 5xx at the end of data on", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25, { replies = { ["end"] = "554 5.7.1 Spam, go away" } })
    local r = send(h, {})
    assert.equal(554, r.done.code)
    assert.matches("5.7.1 Spam, go away", r.done.raw[1], 1, true)
    assert.equal(0, #peer.messages)
  end)

  it("answers 451 4.4.2 when the next hop is slower than the timeout, the transaction aborted", function()
    local h = forward_policy([[{ host = "hub.example", timeout = 5 }]])
    local peer = h.nexthop:listen("hub.example", 25, { slow = { finish = 60 } })
    local r = send(h, { advance = 10 })
    assert.equal(451, r.done.code)
    assert.matches("4.4.2 Next hop hub.example:25: timed out (finish)", r.done.raw[1], 1, true)
    assert.equal(0, #peer.messages)
    assert.equal("aborted", peer.transactions[1].state)
  end)

  it("never completes the next hop's transaction when the policy rejects during the data", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25)
    local r = send(h, { data = "Subject: x\r\n\r\nREJECT-ME\r\n" })
    assert.equal(550, r.done.code)
    assert.matches("5.7.1 Not this one", r.done.raw[1], 1, true)
    assert.equal(0, #peer.messages)
    assert.equal("aborted", peer.transactions[1].state)
    for _, c in ipairs(peer.commands) do assert.not_equal(".", c) end
  end)

  it("refuses the whole message when the next hop refuses one of its recipients", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25, { replies = {
      rcpt = function(a) return a:match("^nobody@") and "550 5.1.1 No such user" or "250 2.1.5 Ok" end } })
    local r = send(h, { to = { "b@example.org", "nobody@example.org" } })
    assert.equal(554, r.data.code)
    assert.matches("Next hop refused <nobody@example.org>: 550 No such user", r.data.raw[1], 1, true)
    assert.equal(0, #peer.messages)
    assert.equal("aborted", peer.transactions[1].state)
  end)

  it("refuses early, naming the next hop's SIZE, a message declared larger", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25, { ext = { SIZE = 1000 } })
    local r = send(h, { mail_params = " SIZE=5000" })
    assert.equal(552, r.data.code)
    assert.matches("5.3.4 Message size exceeds the next hop's limit of 1000 octets", r.data.raw[1], 1, true)
    assert.equal(0, #peer.transactions)
  end)

  it("forwards a message sent by BDAT, dot-stuffed for the next hop's DATA", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25)
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("Subject: b\r\n\r\n.one")
    h.clock:advance(0)
    s:expect(250)
    s:bdat("\r\n.two\r\n", true)
    h.clock:advance(0)
    s:expect(250)
    assert.equal("Subject: b\r\n\r\n.one\r\n.two\r\n", peer.messages[1].body:match("\r\n(Subject:.*)$"))
  end)

  it("refuses a BINARYMIME message: its octets cannot go over DATA", function()
    local h = forward_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25)
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net> BODY=BINARYMIME"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("\0\1binary", true)
    h.clock:advance(0)
    s:expect("554 5.6.1 The next hop takes no BINARYMIME")
    assert.equal(0, #peer.transactions)
  end)

  it("checks a target table again once the policy changed it", function()
    -- the checked target is kept per table; a changed field (or a new one) is seen
    local h = support.policy([[
local target = { host = "hub.example", port = 2525, tls = "none" }
local n = 0
smtp.createServer(function(conn)
  conn:on("DATA", function(m)
    n = n + 1
    if n == 3 then target.port = 2526 end
    if n == 4 then target.colour = "blue" end
    m:forward(target)
  end)
end)
]])
    local a = h.nexthop:listen("hub.example", 2525)
    local b = h.nexthop:listen("hub.example", 2526)
    assert.equal(250, send(h, {}).done.code)
    assert.equal(250, send(h, {}).done.code)
    assert.equal(250, send(h, {}).done.code)
    assert.equal(2, #a.messages)
    assert.equal(1, #b.messages)
    assert.equal(451, send(h, {}).data.code)
    assert.matches('unknown target field "colour"', h:log(), 1, true)
  end)

  it("raises for a bad target: the client gets 451, the log the reason", function()
    local h = forward_policy([[{ host = "hub.example", protocol = "uucp" }]])
    local r = send(h, {})
    assert.equal(451, r.data.code)
    assert.matches('target.protocol must be "smtp" or "lmtp"', h:log(), 1, true)
  end)
end)

describe("connection:proxy (fake next hop)", function()
  local PROXY = [[
smtp.createServer(function(conn)
  conn:on("MAIL", function(sender)
    conn:proxy(TARGET)
  end)
  conn:on("DATA", function(m) end)
end)
]]
  local function proxy_policy(target) return support.policy((PROXY:gsub("TARGET", target))) end
  local function users(a)
    return a:match("^unknown@") and "550 5.1.1 <" .. a .. "> User unknown" or "250 2.1.5 Ok"
  end

  it("gives each RCPT the next hop's verdict and forwards to those it took", function()
    local h = proxy_policy([[{ host = "hub.example" }]])
    local peer = h.nexthop:listen("hub.example", 25, { replies = { rcpt = users } })
    local r = send(h, { to = { "b@example.org", "unknown@example.org" } })
    assert.equal(250, r.rcpt[1].code)
    assert.equal(550, r.rcpt[2].code)
    assert.matches("5.1.1 <unknown@example.org> User unknown", r.rcpt[2].raw[1], 1, true)
    assert.equal(250, r.done.code)
    assert.same({ "b@example.org" }, peer.messages[1].to)
  end)

  it("passes the next hop's MAIL refusal on", function()
    local h = proxy_policy([[{ host = "hub.example" }]])
    h.nexthop:listen("hub.example", 25, { replies = { mail = "553 5.7.1 Sender rejected" } })
    local r = send(h, {})
    assert.equal(553, r.mail.code)
    assert.matches("5.7.1 Sender rejected", r.mail.raw[1], 1, true)
  end)

  it("LMTP: one recipient per transaction, so no message has mixed results", function()
    local h = proxy_policy([[{ host = "lmtp.example", protocol = "lmtp" }]])
    local peer = h.nexthop:listen("lmtp.example", 24, { replies = {
      ["end"] = function(a) return "452 4.2.2 <" .. a .. "> Mailbox full" end } })
    local r = send(h, { to = { "b@example.org", "c@example.org" } })
    assert.equal(250, r.rcpt[1].code)
    assert.equal(452, r.rcpt[2].code)
    assert.matches("4.5.3", r.rcpt[2].raw[1], 1, true)
    assert.equal(452, r.done.code)
    assert.matches("4.2.2 <b@example.org> Mailbox full", r.done.raw[1], 1, true)
    assert.equal(1, #peer.transactions)
    assert.same({ "b@example.org" }, peer.transactions[1].to)
  end)
end)
