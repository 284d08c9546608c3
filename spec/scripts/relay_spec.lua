-- scripts/relay.lua and scripts/lmtp.lua on fake next hops (h.nexthop), on
-- the virtual clock (spec/e2e/forward_spec.lua has the real client).
local testing = require "smtp.testing"

local function session(h, from)
  local s = h:connect()
  s:expect(220)
  s:send("EHLO client.example"):expect(250)
  s:send("MAIL FROM:<" .. (from or "alice@example.net") .. ">")
  h.clock:advance(0)
  return s
end

local function data(h, s, body)
  s:send("DATA")
  h.clock:advance(0)
  s:expect(354)
  s:send_raw(body .. ".\r\n")
  h.clock:advance(0)
  return s:reply()
end

describe("scripts/relay.lua", function()
  local ENV = { RELAY_DOMAINS = "example.org, example.com", RELAY_NEXTHOP = "smarthost.example:2525",
    RELAY_TLS = "none" }

  it("accepts its domains only and hands each message to the smarthost", function()
    local h = testing.load("scripts/relay.lua", { env = ENV })
    local hub = h.nexthop:listen("smarthost.example", 2525, { replies = { ["end"] = "250 2.0.0 Ok: queued as 7F" } })
    local s = session(h)
    s:expect(250)
    s:send("RCPT TO:<bob@Example.ORG>"):expect(250)
    s:send("RCPT TO:<eve@elsewhere.example>"):expect("550 5.7.1 Relaying denied")
    local r = data(h, s, "Subject: hi\r\n\r\nhello\r\n")
    assert.equal(250, r.code)
    assert.matches("Ok: queued as 7F", r.text, 1, true)
    assert.same({ "bob@Example.ORG" }, hub.messages[1].to)
    local got = hub.messages[1].body	-- our Received field on top, for the one recipient
    assert.matches("^Received: from client%.example .- for <bob@Example%.ORG>;", got)
    assert.equal("Subject: hi\r\n\r\nhello\r\n", got:match("\r\n(Subject:.*)$"))
  end)

  it("tells the client to retry when the smarthost is down", function()
    local h = testing.load("scripts/relay.lua", { env = ENV })
    local s = session(h)
    s:expect(250)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    s:send("DATA")
    h.clock:advance(0)
    s:expect("451 4.4.1")
    assert.matches("not relayed: 451 Next hop smarthost.example:2525: connection refused", h:log(), 1, true)
  end)

  it("refuses to start without its settings", function()
    assert.has_error(function() testing.load("scripts/relay.lua", { env = { RELAY_NEXTHOP = "x:25" } }) end)
  end)
end)

describe("scripts/lmtp.lua", function()
  local ENV = { LMTP_ADDRESS = "127.0.0.1:24", LMTP_DOMAINS = "example.org" }
  local function dovecot(h)
    return h.nexthop:listen("127.0.0.1", 24, { replies = {
      rcpt = function(a)
        if a:match("^nobody@") then return "550 5.1.1 <" .. a .. "> User doesn't exist: " .. a end
        return "250 2.1.5 OK"
      end,
      ["end"] = function(a) return "250 2.0.0 <" .. a .. "> Saved" end,
    } })
  end

  it("has the LMTP server check recipients at RCPT and deliver", function()
    local h = testing.load("scripts/lmtp.lua", { env = ENV })
    local lmtp = dovecot(h)
    local s = session(h)
    s:expect(250)
    s:send("RCPT TO:<nobody@example.org>")
    h.clock:advance(0)
    s:expect("550 5.1.1 <nobody@example.org> User doesn't exist")
    s:send("RCPT TO:<bob@example.org>")
    h.clock:advance(0)
    s:expect(250)
    s:send("RCPT TO:<other@elsewhere.example>"):expect("550 5.7.1 Not a domain of ours")
    local r = data(h, s, "Subject: hi\r\n\r\nhello\r\n")
    assert.equal(250, r.code)
    assert.matches("<bob@example.org> Saved", r.text, 1, true)
    assert.same({ "bob@example.org" }, lmtp.messages[1].to)
    assert.equal("LHLO mx.test.example", lmtp.commands[1])
  end)

  it("takes one recipient per transaction: the second gets 452 and comes again", function()
    local h = testing.load("scripts/lmtp.lua", { env = ENV })
    local lmtp = dovecot(h)
    local s = session(h)
    s:expect(250)
    s:send("RCPT TO:<a@example.org>")
    h.clock:advance(0)
    s:expect(250)
    s:send("RCPT TO:<b@example.org>")
    h.clock:advance(0)
    s:expect("452 4.5.3")
    assert.equal(250, data(h, s, "x\r\n").code)
    s:send("MAIL FROM:<alice@example.net>")
    h.clock:advance(0)
    s:expect(250)
    s:send("RCPT TO:<b@example.org>")
    h.clock:advance(0)
    s:expect(250)
    assert.equal(250, data(h, s, "x\r\n").code)
    assert.equal(2, #lmtp.messages)
    assert.same({ "b@example.org" }, lmtp.messages[2].to)
  end)
end)
