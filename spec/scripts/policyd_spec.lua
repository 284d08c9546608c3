-- scripts/policyd.lua against a fake policy delegation service (h.tcp), on
-- the virtual clock (spec/e2e/tcp_spec.lua has a real one over TCP).
local testing = require "smtp.testing"

-- a fake service: reads a request, answers answer(attrs) (a string, or
-- nil for no answer at all)
local function service(h, answer, opts)
  h.tcp:listen("127.0.0.1", 10040, function(peer)
    while true do
      local attrs = {}
      while true do
        local line = peer:receive()
        if not line then return end
        if line == "" then break end
        local k, v = line:match("^([^=]*)=(.*)$")
        attrs[k] = v
      end
      h.requests[#h.requests + 1] = attrs
      local a = answer(attrs)
      if a == nil then return peer:receive() end	-- silent
      peer:send("action=" .. a .. "\n\n")
    end
  end, opts)
end

local function load(env)
  local h = testing.load("scripts/policyd.lua", { env = env or {} })
  h.requests = {}
  return h
end

local function rcpt(h, to)
  local s = h:connect { remoteAddress = "198.51.100.7", remotePort = 40000 }
  s:expect(220)
  s:send("EHLO client.example"):expect(250)
  s:send("MAIL FROM:<alice@example.net> SIZE=1234"):expect(250)
  s:send("RCPT TO:<" .. to .. ">")
  return s
end

describe("scripts/policyd.lua", function()
  it("sends Postfix's request attributes, ended by a blank line", function()
    local h = load()
    service(h, function() return "DUNNO" end)
    rcpt(h, "bob@example.org"):expect(250)
    local r = h.requests[1]
    assert.equal("smtpd_access_policy", r.request)
    assert.equal("RCPT", r.protocol_state)
    assert.equal("ESMTP", r.protocol_name)
    assert.equal("198.51.100.7", r.client_address)
    assert.equal("40000", r.client_port)
    assert.equal("client.example", r.helo_name)
    assert.equal("alice@example.net", r.sender)
    assert.equal("bob@example.org", r.recipient)
    assert.equal("1234", r.size)
    assert.equal("0", r.recipient_count)
  end)

  local cases = {
    { "OK", "250 " },
    { "DUNNO", "250 " },
    { "DEFER_IF_REJECT maybe", "250 " },
    { "PREPEND X-Policy: yes", "250 " },
    { "REJECT", "550 5.7.1 Access denied" },
    { "REJECT Not welcome here", "550 5.7.1 Not welcome here" },
    { "reject lower case", "550 5.7.1 lower case" },
    { "DEFER", "450 4.7.1 Try again later" },
    { "DEFER_IF_PERMIT Greylisted, see http://example.org", "450 4.7.1 Greylisted, see http://example.org" },
    { "554 5.7.2 Go away", "554 5.7.2 Go away" },
    { "421 Closing", "421 4.7.1 Closing" },
    { "450 5.7.1 mismatched class", "450 4.7.1 mismatched class" },
    { "WHATEVER", "451 4.3.5 Policy service error" },
  }
  for _, c in ipairs(cases) do
    it(("maps action=%s to %s"):format(c[1], c[2]), function()
      local h = load()
      service(h, function() return c[1] end)
      rcpt(h, "bob@example.org"):expect(c[2])
    end)
  end

  it("answers 451 when the service is down, slow or silent, by default", function()
    local h = load { POLICYD_TIMEOUT = "3" }
    rcpt(h, "bob@example.org"):expect("451 4.3.5 Policy service unavailable")	-- refused
    assert.matches("policyd 127.0.0.1:10040: connection refused %(tempfail%)", h:log())
    service(h, function() return nil end)	-- reads, never answers
    local s = rcpt(h, "bob@example.org")
    h.clock:advance(2.9)
    s:expect_silence()
    h.clock:advance(0.2)
    s:expect("451 4.3.5 Policy service unavailable")
    assert.matches("policyd 127.0.0.1:10040: timeout", h:log())
    assert.equal(0, h.tcp.open)
  end)

  it("waits for a slow service within its timeout", function()
    local h = load { POLICYD_TIMEOUT = "3" }
    service(h, function(a) return a.recipient:match("^no") and "REJECT" or "OK" end, { delay = 2 })
    local s = rcpt(h, "nobody@example.org")
    h.clock:advance(4)	-- connect 2 s, answer 2 s: each step within 3 s
    s:expect("550 5.7.1 Access denied")
  end)

  it("accepts or rejects on failure as POLICYD_ON_FAILURE says", function()
    local h = load { POLICYD_ON_FAILURE = "accept" }
    rcpt(h, "bob@example.org"):expect(250)
    h = load { POLICYD_ON_FAILURE = "reject" }
    rcpt(h, "bob@example.org"):expect("550 5.7.1 Policy service unavailable")
  end)

  it("refuses a bad configuration when it loads", function()
    assert.has_error(function() load { POLICYD_ON_FAILURE = "maybe" } end)
    assert.has_error(function() load { POLICYD_ADDRESS = "nohostport" } end)
  end)
end)
