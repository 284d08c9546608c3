-- scripts/dnsbl.lua on smtp.testing's fake resolver: listed clients refused
-- before the greeting with the list's reason, clean ones greeted, lookup
-- failures let through or told 421 (DNSBL_ON_FAILURE), every zone asked at
-- once.  spec/e2e/dns_spec.lua runs it in the real server against knotd.
local testing = require "smtp.testing"

local function load(env)
  env = env or {}
  env.DNSBL_ZONES = env.DNSBL_ZONES or "zen.example,bl.example"
  return testing.load("scripts/dnsbl.lua", { env = env })
end

describe("scripts/dnsbl.lua", function()
  it("refuses a listed client before the greeting, with the list's TXT reason", function()
    local h = load()
    h.dns:add("2.0.0.127.bl.example", "A", "127.0.0.2")
    h.dns:add("2.0.0.127.bl.example", "TXT", "Listed: see https://bl.example/127.0.0.2")
    local s = h:connect { remoteAddress = "127.0.0.2" }
    s:expect("554 5.7.1 mx.test.example Service unavailable; client [127.0.0.2] blocked using bl.example; "
      .. "Listed: see https://bl.example/127.0.0.2")
    assert.matches("dnsbl: 127.0.0.2 listed by bl.example %(127.0.0.2%)", h:log())
  end)

  it("greets a client no zone lists, after asking every zone at once", function()
    local h = load()
    h.dns:delay("9.2.0.192.zen.example", 1):delay("9.2.0.192.bl.example", 1)
    local s = h:connect { remoteAddress = "192.0.2.9" }
    s:expect_silence()
    h.clock:advance(1)
    s:expect(220)
    assert.same({ "9.2.0.192.zen.example A", "9.2.0.192.bl.example A" }, h.dns.queries)
  end)

  it("looks up IPv6 clients by nibbles", function()
    local h = load()
    h.dns:add(require("smtp.dns").reverse("2001:db8::5") .. ".zen.example", "A", "127.0.0.4")
    h:connect({ remoteAddress = "2001:db8::5" }):expect("554 5.7.1 mx.test.example Service unavailable; client [2001:db8::5] "
      .. "blocked using zen.example")
  end)

  it("lets a client in when a zone times out, by default, and logs it", function()
    local h = load()
    h.dns:fail("9.2.0.192.zen.example", "timeout")
    local s = h:connect { remoteAddress = "192.0.2.9" }
    h.clock:advance(4)	-- dnsTimeout 2 s, one retry
    s:expect(220)
    assert.matches("dnsbl: zen.example: timeout", h:log())
  end)

  it("says 421 on a failed lookup with DNSBL_ON_FAILURE=tempfail", function()
    local h = load { DNSBL_ON_FAILURE = "tempfail" }
    h.dns:fail("9.2.0.192.bl.example", "servfail")
    h:connect({ remoteAddress = "192.0.2.9" }):expect("421 4.7.1 mx.test.example Cannot check your address now")
    assert.matches("dnsbl: bl.example: servfail %(SERVFAIL%)", h:log())
  end)

  it("still refuses a listed client when another zone fails", function()
    local h = load { DNSBL_ON_FAILURE = "tempfail" }
    h.dns:fail("9.2.0.192.zen.example", "servfail")
    h.dns:add("9.2.0.192.bl.example", "A", "127.0.0.2")
    h:connect({ remoteAddress = "192.0.2.9" }):expect(554)
  end)

  it("keeps a list's reason fit for a reply line", function()
    local h = load()
    h.dns:add("2.0.0.127.zen.example", "A", "127.0.0.2")
    h.dns:add("2.0.0.127.zen.example", "TXT", "bad\r\nline " .. ("x"):rep(1000))
    local s = h:connect { remoteAddress = "127.0.0.2" }
    local r = s:expect(554)
    assert.matches("bad  line x+%.%.%.$", r.lines[1])
    assert.is_true(#r.lines[1] < 512)
  end)

  it("asks again only when the cached answer's TTL has passed", function()
    local h = load()
    h.dns:add("2.0.0.127.zen.example", "A", "127.0.0.2", 60)
    h:connect({ remoteAddress = "127.0.0.2" }):expect(554)
    local n = #h.dns.queries
    h:connect({ remoteAddress = "127.0.0.2" }):expect(554)
    -- zen's A came from the cache; bl.example's NXDOMAIN and zen's missing
    -- TXT are not cached (only answers with records are)
    assert.equal(n + 2, #h.dns.queries)
    h.clock:advance(61)
    h:connect({ remoteAddress = "127.0.0.2" }):expect(554)
    assert.equal(n + 5, #h.dns.queries)
  end)

  it("refuses a bad DNSBL_ON_FAILURE when it loads", function()
    assert.has_error(function() load { DNSBL_ON_FAILURE = "maybe" } end)
  end)
end)
