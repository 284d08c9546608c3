-- scripts/greylist.lua: minutes of waiting, played on the virtual clock.
local testing = require "smtp.testing"

describe("scripts/greylist.lua", function()
  local h
  before_each(function() h = testing.load("scripts/greylist.lua") end)

  local function attempt(addr)
    local s = h:connect { remoteAddress = addr or "198.51.100.20" }
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>")
    return s
  end

  it("holds a first attempt for two minutes, then says 450", function()
    local t0 = os.clock()
    local s = attempt()
    s:expect_silence()
    h.clock:advance(119)
    s:expect_silence()
    h.clock:advance(1)
    s:expect("450 4.7.1 Greylisted")
    assert.is_true(os.clock() - t0 < 0.5, "minutes of policy time must take milliseconds")
  end)

  it("refuses a retry that comes too soon, without the tarpit", function()
    attempt()
    h.clock:advance(120)
    local s = attempt()
    s:expect("450 ")
  end)

  it("lets a retry through after five minutes, and later ones at once", function()
    attempt()
    h.clock:advance(120 + 300)
    attempt():expect(250)
    assert.matches("greylist: b@example.org passed after 420 s", h:log())
    h.clock:advance(3600)
    attempt():expect(250)
  end)

  it("keeps other clients apart", function()
    attempt("198.51.100.20")
    h.clock:advance(420)
    local other = attempt("203.0.113.5")
    other:expect_silence()
    h.clock:advance(120)
    other:expect(450)
  end)
end)
