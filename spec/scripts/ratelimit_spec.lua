-- scripts/ratelimit.lua: minutes and hours of traffic played on the virtual
-- clock, with smtp.store in memory (it follows the clock).
local testing = require "smtp.testing"

describe("scripts/ratelimit.lua", function()
  local h
  before_each(function() h = testing.load("scripts/ratelimit.lua") end)

  local function session(addr)
    local s = h:connect { remoteAddress = addr or "198.51.100.20" }
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    return s
  end

  -- n transactions from s (MAIL then RSET), each expected to get code
  local function mails(s, n, from, code)
    for i = 1, n do
      local r = s:send("MAIL FROM:<" .. (from or ("u" .. i .. "@example.net")) .. ">"):expect(code)
      s:send("RSET"):expect(250)
      if i == n then return r end
    end
  end

  it("takes 30 messages a minute from one client, then says 451 until the next minute", function()
    local s = session()
    mails(s, 30, nil, 250)
    local r = s:send("MAIL FROM:<late@example.net>"):expect(451)
    assert.equal("4.7.1", r.enhanced)
    assert.matches("Too many messages from 198.51.100.20: at most 30 a minute, try again in 60 s",
      r.text, 1, true)
    assert.matches("ratelimit: client 198.51.100.20 over 30 messages a minute", h:log(), 1, true)
    -- another client has its own count
    mails(session("203.0.113.5"), 1, nil, 250)
    h.clock:advance(45)
    s:send("MAIL FROM:<late@example.net>"):expect(451)
    h.clock:advance(15)
    s:send("MAIL FROM:<late@example.net>"):expect(250)
  end)

  it("counts an IPv6 client by its /64", function()
    mails(session("2001:db8:1:2::25"), 20, nil, 250)
    mails(session("2001:db8:1:2:ffff::1"), 10, nil, 250)
    session("2001:db8:1:2::99"):send("MAIL FROM:<x@example.net>"):expect(451)
    session("2001:db8:1:3::25"):send("MAIL FROM:<x@example.net>"):expect(250)
  end)

  it("takes 100 messages an hour from one sender, from any client, then says 452", function()
    for i = 1, 4 do mails(session("198.51.100." .. i), 25, "Bulk@Example.net", 250) end
    local r = session("198.51.100.9"):send("MAIL FROM:<bulk@example.net>"):expect(452)
    assert.equal("4.7.1", r.enhanced)
    assert.matches("Too many messages from sender bulk@example.net: at most 100 an hour, try again in 60 min",
      r.text, 1, true)
    -- other senders and bounces go on
    session("198.51.100.9"):send("MAIL FROM:<other@example.net>"):expect(250)
    mails(session("198.51.100.10"), 3, "", 250)
    h.clock:advance(3599)
    session("198.51.100.11"):send("MAIL FROM:<bulk@example.net>"):expect(452)
    h.clock:advance(1)
    session("198.51.100.11"):send("MAIL FROM:<bulk@example.net>"):expect(250)
  end)

  it("does not count for the sender a message the client's rate refused", function()
    local s = session()
    mails(s, 30, "one@example.net", 250)
    mails(s, 10, "one@example.net", 451)
    h.clock:advance(60)
    -- 30 counted for one@example.net so far: 70 more pass, then 452
    for i = 1, 3 do mails(session("203.0.113." .. i), 20, "one@example.net", 250) end
    mails(session("203.0.113.9"), 10, "one@example.net", 250)
    session("203.0.113.10"):send("MAIL FROM:<one@example.net>"):expect(452)
  end)
end)
