-- scripts/greylist.lua: minutes and days of waiting, played on the virtual
-- clock, with smtp.store in memory (the LMDB side: spec/e2e/store_spec.lua).
local testing = require "smtp.testing"

describe("scripts/greylist.lua", function()
  local h
  before_each(function() h = testing.load("scripts/greylist.lua") end)

  local function attempt(addr, rcpt)
    local s = h:connect { remoteAddress = addr or "198.51.100.20" }
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<" .. (rcpt or "b@example.org") .. ">")
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

  it("counts a retry from another address of the same /24 (and /64) as the same sender", function()
    attempt("198.51.100.20")
    h.clock:advance(420)
    attempt("198.51.100.77"):expect(250)
    attempt("2001:db8:1:2::25")
    h.clock:advance(420)
    attempt("2001:db8:1:2:ffff::1"):expect(250)
    local other = attempt("2001:db8:1:3::25")
    h.clock:advance(120)
    other:expect(450)
  end)

  it("allowlists the client's network once a triplet passed", function()
    attempt()
    h.clock:advance(420)
    attempt():expect(250)
    attempt("198.51.100.30", "new@example.org"):expect(250)	-- no greylisting now
    local other = attempt("203.0.113.5", "new@example.org")
    h.clock:advance(120)
    other:expect(450)
  end)

  it("forgets a first attempt after a day, and a pass after 35 idle days", function()
    attempt()
    h.clock:advance(24 * 3600 + 1)
    local s = attempt()	-- a first attempt again: the tarpit
    s:expect_silence()
    h.clock:advance(120)
    s:expect(450)
    h.clock:advance(300)
    attempt():expect(250)
    h.clock:advance(35 * 24 * 3600)
    s = attempt()
    s:expect_silence()
    h.clock:advance(120)
    s:expect(450)
  end)
end)
