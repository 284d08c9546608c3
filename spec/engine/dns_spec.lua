-- smtp.dns, smtp.dnsbl, smtp.all and connection.hostname on smtp.testing's
-- fake resolver (h.dns) and virtual clock: records by type, failures told
-- apart, deadlines, the cache and its TTLs, the implicit MX, DNSBL names,
-- FCrDNS.  spec/e2e/dns_spec.lua runs the same API against a real knotd.
local support = require "spec.engine.support"
local dns = require "smtp.dns"

-- A harness whose HELO handler runs fn(smtp, connection); out.r has what it
-- returned (table.pack'ed), out.err what it raised.
local function harness(fn, src)
  local out = {}
  local h = support.policy(src or [[
local server = smtp.createServer(function(c)
  c:on("HELO", function() probe(smtp, c) end)
end)
server:listen(25)
]], { globals = { probe = function(smtp, c)
    local ok, err = pcall(function() out.r = table.pack(fn(smtp, c)) end)
    if not ok then out.err = err end
  end } })
  return h, out
end

-- says HELO and waits until it is answered (advancing the clock by step
-- seconds at a time, at most limit): the seconds it took
local function helo(h, peer, step, limit)
  local s = h:connect(peer)
  s:expect(220)
  s:send("HELO c.example")
  local waited = 0
  while true do
    local ok = pcall(s.expect, s, 250)
    if ok then return waited, s end
    assert(waited < (limit or 60), "HELO never answered")
    h.clock:advance(step or 1)
    waited = waited + (step or 1)
  end
end

describe("smtp.dns.query", function()
  it("gives A, AAAA, MX, TXT, PTR, CNAME and TLSA records with their TTLs", function()
    local h, out = harness(function(smtp)
      return {
        a = smtp.dns.query("mx.example", "A"), aaaa = smtp.dns.query("mx.example", "aaaa"),
        mx = smtp.dns.query("example", "MX"), txt = smtp.dns.query("example", "TXT"),
        ptr = smtp.dns.query("2.2.0.192.in-addr.arpa", "PTR"),
        cname = smtp.dns.query("www.example", "CNAME"),
        tlsa = smtp.dns.query("_25._tcp.mx.example", "TLSA"),
        byn = smtp.dns.query("_25._tcp.mx.example", 52),
      }
    end)
    h.dns:add("mx.example", "A", "192.0.2.10", 60):add("mx.example", "A", "192.0.2.11")
    h.dns:add("mx.example", "AAAA", "2001:db8::10")
    h.dns:add("example", "MX", "10 mx.example"):add("example", "TXT", { "v=spf1 ", "-all" })
    h.dns:add("192.0.2.2", "PTR", "host.example")
    h.dns:add("www.example", "CNAME", "mx.example")
    h.dns:add("_25._tcp.mx.example", "TLSA", { 3, 1, 1, "00ff" })
    helo(h)
    local r = out.r[1]
    assert.same({ { type = "A", address = "192.0.2.10", ttl = 60 },
      { type = "A", address = "192.0.2.11", ttl = 300 } }, r.a)
    assert.same({ { type = "AAAA", address = "2001:db8::10", ttl = 300 } }, r.aaaa)
    assert.same({ { type = "MX", preference = 10, exchange = "mx.example", ttl = 300 } }, r.mx)
    assert.same({ { type = "TXT", text = "v=spf1 -all", strings = { "v=spf1 ", "-all" }, ttl = 300 } }, r.txt)
    assert.same({ { type = "PTR", name = "host.example", ttl = 300 } }, r.ptr)
    assert.same({ { type = "CNAME", name = "mx.example", ttl = 300 } }, r.cname)
    assert.same({ type = "TLSA", usage = 3, selector = 1, matchingType = 1, data = "\0\255", hex = "00ff",
      ttl = 300 }, r.tlsa[1])
    assert.same(r.tlsa, r.byn)
  end)

  it("tells a name that does not exist from no data, a server failure and a timeout", function()
    local h, out = harness(function(smtp)
      local res = {}
      for _, n in ipairs { "none.example", "mx.example", "broken.example", "refusing.example", "silent.example" } do
        res[#res + 1] = { smtp.dns.query(n, "A", { timeout = 5 }) }
      end
      return res
    end)
    h.dns:add("mx.example", "MX", "10 mx.example")
    h.dns:fail("broken.example", "servfail"):fail("refusing.example", "refused"):fail("silent.example", "timeout")
    local waited = helo(h)
    assert.same({ { nil, "nxdomain", "NXDOMAIN" }, { nil, "nodata", "NOERROR" }, { nil, "servfail", "SERVFAIL" },
      { nil, "refused", "REFUSED" }, { nil, "timeout" } }, out.r[1])
    assert.equal(5, waited)	-- only the silent one waited, for its deadline
  end)

  it("waits on the clock for a slow answer while other sessions go on", function()
    local h, out = harness(function(smtp) return smtp.dns.query("slow.example", "A") end)
    h.dns:add("slow.example", "A", "192.0.2.1"):delay("slow.example", 3)
    local s1 = h:connect() ; s1:expect(220)
    s1:send("HELO a.example")
    local s2 = h:connect() ; s2:expect(220)
    s2:send("NOOP"):expect(250)	-- the other session is not held up
    h.clock:advance(2)
    assert.is_nil(out.r)
    h.clock:advance(1)
    s1:expect(250)
    assert.equal("192.0.2.1", out.r[1][1].address)
  end)

  it("times out at dnsTimeout x (dnsRetries + 1) by default", function()
    local h, out = harness(function(smtp) return smtp.dns.query("silent.example", "A") end, [[
local server = smtp.createServer(function(c) c:on("HELO", function() probe(smtp, c) end) end)
server.dnsTimeout = 1.5
server.dnsRetries = 2
server:listen(25)
]])
    h.dns:fail("silent.example", "timeout")
    local waited = helo(h, nil, 0.5)
    assert.equal(4.5, waited)
    assert.same({ nil, "timeout", nil, n = 3 }, out.r)
  end)

  it("caches answers for their smallest TTL, and asks again after", function()
    local h, out = harness(function(smtp)
      local a = smtp.dns.query("c.example", "A")
      return a[1].ttl
    end)
    h.dns:add("c.example", "A", "192.0.2.1", 30):add("c.example", "A", "192.0.2.2", 20)
    helo(h)
    helo(h)
    assert.equal(1, #h.dns.queries)
    h.clock:advance(15)
    helo(h)
    assert.equal(1, #h.dns.queries)
    assert.equal(5, out.r[1])	-- what is left of the TTL
    h.clock:advance(6)
    helo(h)
    assert.equal(2, #h.dns.queries)
    assert.equal(30, out.r[1])
  end)

  it("keeps at most dnsCacheSize answers, the last ones, and none with 0", function()
    local names
    local h = harness(function(smtp)
      for _, n in ipairs(names) do smtp.dns.query(n, "A") end
    end, [[
local server = smtp.createServer(function(c) c:on("HELO", function() probe(smtp, c) end) end)
server.dnsCacheSize = 2
server:listen(25)
]])
    for i = 1, 5 do h.dns:add("n" .. i .. ".example", "A", "192.0.2." .. i) end
    h.dns:add("zero.example", "A", "192.0.2.9", 0)
    names = { "n1.example", "n2.example", "n3.example", "n4.example", "n5.example" }
    helo(h)
    assert.equal(5, #h.dns.queries)
    names = { "n5.example", "n4.example" }
    helo(h)
    assert.equal(5, #h.dns.queries)
    names = { "n1.example", "zero.example", "zero.example" }
    helo(h)
    assert.equal(8, #h.dns.queries)
  end)

  it("refuses a lookup outside a handler and an unknown type", function()
    local h = support.policy([[
local ok, err = pcall(smtp.dns.query, "x.example", "A")
assert(not ok and err:find("handlers"), err)
smtp.createServer(function(c) c:on("HELO", function() smtp.dns.query("x.example", "BOGUS") end) end):listen(25)
]])
    local s = h:connect() ; s:expect(220)
    s:send("HELO c.example"):expect(451)
    assert.matches("unknown record type BOGUS", h:log())
  end)

  it("answers a bad name with nil, err, without asking", function()
    local h, out = harness(function(smtp) return smtp.dns.query("bad name", "A") end)
    helo(h)
    assert.same({ nil, "bad name", n = 2 }, out.r)
    assert.equal(0, #h.dns.queries)
  end)

  it("lets a handler abandoned by decisionTimeout go, and its late answer change nothing", function()
    local h, out = harness(function(smtp) return smtp.dns.query("slow.example", "A") end, [[
local server = smtp.createServer(function(c) c:on("HELO", function() probe(smtp, c) end) end)
server.decisionTimeout = 2
server:listen(25)
]])
    h.dns:add("slow.example", "A", "192.0.2.1"):delay("slow.example", 5)
    local s = h:connect() ; s:expect(220)
    s:send("HELO c.example")
    h.clock:advance(2)
    s:expect(451)
    h.clock:advance(5)
    assert.is_nil(out.r)
    s:send("NOOP"):expect(250)
  end)
end)

describe("smtp.dns.mx", function()
  it("sorts by preference", function()
    local h, out = harness(function(smtp) return smtp.dns.mx("example") end)
    h.dns:add("example", "MX", "20 b.example"):add("example", "MX", "10 a.example")
    helo(h)
    assert.same({ "a.example", "b.example" }, { out.r[1][1].exchange, out.r[1][2].exchange })
  end)

  it("takes the domain itself when it has an address and no MX (RFC 5321 5.1)", function()
    local h, out = harness(function(smtp)
      return { smtp.dns.mx("a.example") }, { smtp.dns.mx("v6.example") }, { smtp.dns.mx("txt.example") }
    end)
    h.dns:add("a.example", "A", "192.0.2.1", 60)
    h.dns:add("v6.example", "AAAA", "2001:db8::1")
    h.dns:add("txt.example", "TXT", "no mail here")
    helo(h)
    assert.same({ { { type = "MX", preference = 0, exchange = "a.example", ttl = 60, implicit = true } } }, out.r[1])
    assert.equal("v6.example", out.r[2][1][1].exchange)
    assert.same({ nil, "nodata", "NOERROR" }, out.r[3])
  end)

  it("says a null MX (RFC 7505) means no mail, and passes failures on", function()
    local h, out = harness(function(smtp)
      return { smtp.dns.mx("null.example") }, { smtp.dns.mx("none.example") }, { smtp.dns.mx("bad.example") }
    end)
    h.dns:add("null.example", "MX", "0 .")
    h.dns:fail("bad.example", "servfail")
    helo(h)
    assert.same({ nil, "null MX", "NOERROR" }, out.r[1])
    assert.same({ nil, "nxdomain", "NXDOMAIN" }, out.r[2])
    assert.same({ nil, "servfail", "SERVFAIL" }, out.r[3])
  end)
end)

describe("smtp.dns.reverse and .ptr", function()
  it("reverses IPv4 and IPv6 (nibbles) and refuses what is not an address", function()
    assert.equal("4.3.2.1", dns.reverse("1.2.3.4"))
    assert.equal("255.0.10.192", dns.reverse("192.10.0.255"))
    assert.equal("1.0.0.127", dns.reverse("127.000.00.01"))	-- leading zeros dropped
    assert.equal("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2", dns.reverse("2001:db8::1"))
    assert.equal("4.0.3.0.2.0.1.0.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0", dns.reverse("::ffff:1.2.3.4"))
    assert.equal(("0."):rep(31) .. "0", dns.reverse("::"))
    for _, bad in ipairs { "1.2.3", "1.2.3.256", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "host.example", "12345::" } do
      assert.is_nil(dns.reverse(bad), bad)
    end
  end)

  it("gives the PTR names of an address", function()
    local h, out = harness(function(smtp) return smtp.dns.ptr("2001:db8::1") end)
    h.dns:add("2001:db8::1", "PTR", "v6.example.")
    helo(h)
    assert.same({ "v6.example" }, out.r[1])
  end)
end)

describe("smtp.all", function()
  it("runs waiting functions at once and returns their results in order", function()
    local h, out = harness(function(smtp)
      local t0 = smtp.now()
      local a, b, c = smtp.all {
        function() smtp.sleep(3) return "slept", 3 end,
        function() return smtp.dns.query("slow.example", "A")[1].address end,
        function() return nil, "plain" end,
      }
      return a, b, c, smtp.now() - t0
    end)
    h.dns:add("slow.example", "A", "192.0.2.9"):delay("slow.example", 2)
    local waited = helo(h)
    assert.same({ "slept", 3, n = 2 }, out.r[1])
    assert.same({ "192.0.2.9", n = 1 }, out.r[2])
    assert.same({ nil, "plain", n = 2 }, out.r[3])
    assert.equal(3, out.r[4])	-- concurrently: the longest, not the sum
    assert.equal(3, waited)
  end)

  it("raises the first error and drops the functions still waiting", function()
    local later = false
    local h, out = harness(function(smtp)
      return smtp.all {
        function() smtp.sleep(5) later = true end,
        function() smtp.sleep(1) error("zone down") end,
      }
    end)
    helo(h)
    assert.matches("zone down", out.err)
    h.clock:advance(10)
    assert.is_false(later)
  end)

  it("returns at once with no waiting function, and refuses what is not a function", function()
    local h, out = harness(function(smtp)
      local r = { smtp.all {} }
      local ok, err = pcall(smtp.all, { function() end, 42 })
      return #r, ok, err, smtp.all { function() return 1 end }
    end)
    helo(h)
    assert.equal(0, out.r[1])
    assert.is_false(out.r[2])
    assert.matches("item 2 is a number", out.r[3])
    assert.same({ 1, n = 1 }, out.r[4])
  end)
end)

describe("smtp.dnsbl", function()
  it("asks every zone at once and gives listings with codes and TXT reasons", function()
    local h, out = harness(function(smtp)
      return smtp.dnsbl("192.0.2.99", { "zen.example", "bl.example", "clean.example" })
    end)
    h.dns:add("99.2.0.192.zen.example", "A", "127.0.0.4"):add("99.2.0.192.zen.example", "A", "127.0.0.2")
    h.dns:add("99.2.0.192.zen.example", "TXT", "https://zen.example/query/ip/192.0.2.99")
    h.dns:add("99.2.0.192.bl.example", "A", "127.0.0.2")
    for _, z in ipairs { "zen.example", "bl.example", "clean.example" } do h.dns:delay("99.2.0.192." .. z, 1) end
    local waited = helo(h)
    assert.equal(2, waited)	-- A then TXT: two rounds, every zone in each
    assert.same({
      { zone = "zen.example", codes = { "127.0.0.2", "127.0.0.4" }, reason = "https://zen.example/query/ip/192.0.2.99" },
      { zone = "bl.example", codes = { "127.0.0.2" } },
    }, out.r[1])
    assert.same({}, out.r[2])
  end)

  it("uses nibbles for IPv6 and reports failures and answers outside 127/8", function()
    local h, out = harness(function(smtp)
      return smtp.dnsbl("2001:db8::1", { "v6.example", "down.example", "odd.example" })
    end)
    local rev = dns.reverse("2001:db8::1")
    h.dns:add(rev .. ".v6.example", "A", "127.0.0.3")
    h.dns:fail(rev .. ".down.example", "timeout")
    h.dns:add(rev .. ".odd.example", "A", "192.0.2.1")
    helo(h)
    assert.same({ { zone = "v6.example", codes = { "127.0.0.3" } } }, out.r[1])
    assert.equal(2, #out.r[2])
    assert.same({ zone = "down.example", err = "timeout" }, out.r[2][1])
    assert.matches("outside 127", out.r[2][2].err)
  end)

  it("refuses zones that are not names", function()
    local h, out = harness(function(smtp) return smtp.dnsbl("192.0.2.1", { "ok.example", 5 }) end)
    helo(h)
    assert.matches("zone 2 is not a domain name", out.err)
  end)
end)

describe("connection.hostname", function()
  it("is the PTR name whose addresses include the client's, looked up once", function()
    local h, out = harness(function(_, c) return c.hostname, c.hostname end)
    h.dns:add("192.0.2.7", "PTR", "other.example"):add("192.0.2.7", "PTR", "mail.example")
    h.dns:add("other.example", "A", "192.0.2.8")
    h.dns:add("mail.example", "A", "192.0.2.7")
    helo(h, { remoteAddress = "192.0.2.7" })
    assert.same({ "mail.example", "mail.example", n = 2 }, out.r)
    assert.same({ "7.2.0.192.in-addr.arpa PTR", "other.example A", "mail.example A" }, h.dns.queries)
  end)

  it("is nil when the name does not confirm, or there is none; IPv6 asks AAAA", function()
    local h, out = harness(function(_, c) return c.hostname end)
    h.dns:add("192.0.2.7", "PTR", "liar.example"):add("liar.example", "A", "192.0.2.70")
    h.dns:add("2001:db8::7", "PTR", "v6.example"):add("v6.example", "AAAA", "2001:DB8:0:0::7")
    helo(h, { remoteAddress = "192.0.2.7" })
    assert.same({ n = 1 }, out.r)
    helo(h, { remoteAddress = "192.0.2.8" })
    assert.same({ n = 1 }, out.r)
    helo(h, { remoteAddress = "2001:db8::7" })
    assert.same({ "v6.example", n = 1 }, out.r)
  end)

  it("cannot be set", function()
    local h, out = harness(function(_, c) c.hostname = "x" end)
    helo(h)
    assert.matches("hostname", out.err)
  end)
end)

describe("the DNS server options", function()
  it("refuse bad resolvers, timeouts, retries and cache sizes", function()
    for _, src in ipairs { 'server.resolvers = {"dns.example"}', "server.resolvers = {}",
      'server.resolvers = {"127.0.0.1:65536"}', 'server.resolvers = {"[::1]:0"}',
      'server.resolvers = "127.0.0.1"', "server.dnsTimeout = 0", "server.dnsRetries = -1",
      "server.dnsCacheSize = 1.5" } do
      local ok, err = pcall(support.policy, "local server = smtp.createServer()\n" .. src .. "\nserver:listen(25)")
      assert.is_false(ok, src)
      assert.matches("server%.%a+ must be", err)
    end
    assert(pcall(support.policy, "local server = smtp.createServer()\n"
      .. 'server.resolvers = {"127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1", "2001:db8::0"}\nserver:listen(25)'))
  end)
end)

describe("the negative cache", function()
  it("keeps a name error and no data for the SOA's negative TTL, a server failure not at all", function()
    local h, out = harness(function(smtp)
      return { smtp.dns.query("none.example", "A") }, { smtp.dns.query("mx.example", "A") },
        { smtp.dns.query("bad.example", "A") }
    end)
    h.dns.negativeTtl = 30
    h.dns:add("mx.example", "MX", "10 mx.example"):fail("bad.example", "servfail")
    helo(h)
    helo(h)
    assert.same({ "none.example A", "mx.example A", "bad.example A", "bad.example A" }, h.dns.queries)
    assert.same({ nil, "nxdomain", "NXDOMAIN" }, out.r[1])	-- the same from the cache
    assert.same({ nil, "nodata", "NOERROR" }, out.r[2])
    h.clock:advance(30)
    helo(h)
    assert.equal(7, #h.dns.queries)
  end)
end)

describe("smtp.dnsbl and the cache", function()
  it("keeps the zones' name errors and no data, which smtp.dns.query then finds, until the negative TTL", function()
    local zones = { "zen.example", "bl.example", "clean.example" }
    local h, out = harness(function(smtp)
      return { smtp.dnsbl("192.0.2.7", zones) }, { smtp.dns.query("7.2.0.192.bl.example", "A") },
        { smtp.dns.query("7.2.0.192.clean.example", "A") }
    end)
    h.dns.negativeTtl = 30
    h.dns:add("7.2.0.192.bl.example", "TXT", "not an A")	-- bl.example: no data
    h.dns:fail("7.2.0.192.clean.example", "servfail")
    helo(h)
    assert.same({ "7.2.0.192.zen.example A", "7.2.0.192.bl.example A", "7.2.0.192.clean.example A",
      "7.2.0.192.clean.example A" }, h.dns.queries)	-- the server failure not kept
    assert.same({ {}, { { zone = "clean.example", err = "servfail", rcode = "SERVFAIL" } } }, out.r[1])
    assert.same({ nil, "nodata", "NOERROR" }, out.r[2])
    helo(h)	-- zen and bl from the cache: clean alone asked (twice: dnsbl, query)
    assert.equal(6, #h.dns.queries)
    assert.same({ nil, "nodata", "NOERROR" }, out.r[2])
    h.clock:advance(30)
    helo(h)
    assert.equal(10, #h.dns.queries)
    assert.same({ "7.2.0.192.zen.example A", "7.2.0.192.bl.example A", "7.2.0.192.clean.example A",
      "7.2.0.192.clean.example A" }, { table.unpack(h.dns.queries, 7, 10) })
  end)
end)

describe("the cache's bounds", function()
  it("keeps at most dnsCacheSize entries, the newest, with its bookkeeping bounded too", function()
    local names = {}
    local h = harness(function(smtp)
      for _, n in ipairs(names) do smtp.dns.query(n, "A") end
    end, [[
local server = smtp.createServer(function(c) c:on("HELO", function() probe(smtp, c) end) end)
server.dnsCacheSize = 50
server:listen(25)
]])
    for i = 1, 1000 do
      h.dns:add("n" .. i .. ".example", "A", "192.0.2.1", 10 + i % 7)
    end
    for round = 0, 9 do
      names = {}
      for i = 1, 100 do names[i] = "n" .. (round * 100 + i) .. ".example" end
      helo(h)
      h.clock:advance(3)	-- some expire, some are put again
      local n, places = h.smtp.dns._cache_size()
      assert.is_true(n <= 50, "entries " .. n)
      assert.is_true(places <= 2 * 50 + 16, "places " .. places)
    end
    -- the newest are the ones kept
    local asked = #h.dns.queries
    names = { "n1000.example" }
    helo(h)
    assert.equal(asked, #h.dns.queries)
    names = { "n1.example" }
    helo(h)
    assert.equal(asked + 1, #h.dns.queries)
  end)
end)

describe("names too long", function()
  it("are a bad name in a DNSBL failure, not a Lua error", function()
    local zone = ("z"):rep(60) .. "." .. ("y"):rep(60) .. "." .. ("x"):rep(62) .. ".example"
    local h, out = harness(function(smtp) return smtp.dnsbl("2001:db8::1", { zone, "ok.example" }) end)
    helo(h)
    assert.same({}, out.r[1])
    assert.same({ { zone = zone, err = "bad name" } }, out.r[2])
  end)
end)
