-- XCLIENT (Postfix): a peer in server.xclientFrom names the client it
-- relays; the session starts over with a 220 and the policy sees the named
-- client in connection.remoteAddress, .remotePort, .remoteName, .user and
-- .helo.  Others are not offered it and are refused.
local policy = require("spec.engine.support").policy

local function harness()
  local seen = {}
  local h = policy([[
    local server = smtp.createServer(function(c)
      c:on("VRFY", function(v)
        SEEN.addr, SEEN.port, SEEN.name = c.remoteAddress, c.remotePort, c.remoteName
        SEEN.local_addr, SEEN.local_port = c.localAddress, c.localPort
        SEEN.user, SEEN.helo = c.user, c.helo and c.helo.name
      end)
    end)
    server.xclientFrom = { "10.0.0.0/8", "2001:db8:ffff::/48" }
  ]], { globals = { SEEN = seen } })
  return h, seen
end

local function ehlo_lines(s)
  s:send("EHLO proxy.example")
  return table.concat(s:expect(250).lines, "\n")
end

describe("XCLIENT", function()
  it("is offered and applied for a peer in xclientFrom, and the session starts over", function()
    local h, seen = harness()
    local s = h:connect { remoteAddress = "10.1.2.3", remotePort = 40000 }
    s:expect(220)
    assert.matches("XCLIENT NAME ADDR PORT PROTO HELO LOGIN", ehlo_lines(s), 1, true)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("XCLIENT ADDR=192.0.2.1"):expect(503)	-- not inside a transaction
    s:send("RSET"):expect(250)
    local r = s:send("XCLIENT ADDR=192.0.2.77 PORT=4567 NAME=mail.example HELO=relay.example "
      .. "LOGIN=bob+40example.org PROTO=ESMTP DESTADDR=198.51.100.25 DESTPORT=25"):expect(220)
    assert.matches("ESMTP", r.lines[1])
    s:send("VRFY x")
    s:expect(252)
    assert.same({ addr = "192.0.2.77", port = 4567, name = "mail.example", user = "bob@example.org",
      helo = "relay.example", local_addr = "198.51.100.25", local_port = 25 }, seen)
    -- HELO/EHLO is needed again before MAIL: the session started over
    s:send("MAIL FROM:<a@example.net>"):expect(503)
    assert.matches("XCLIENT", ehlo_lines(s), 1, true)	-- offered again: the real peer decides
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    assert.matches("XCLIENT: client 192%.0%.2%.77 port 4567 name mail%.example helo relay%.example "
      .. "login bob@example%.org", s:log())
  end)

  it("takes IPV6: addresses, [UNAVAILABLE] and [TEMPUNAVAIL]", function()
    local h, seen = harness()
    local s = h:connect { remoteAddress = "2001:db8:ffff:1::5" }
    s:expect(220)
    s:send("XCLIENT NAME=a.example LOGIN=carol"):expect(220)
    s:send("xclient addr=IPV6:2001:DB8::0:1 name=[UNAVAILABLE] port=[TEMPUNAVAIL] login=[UNAVAILABLE]")
    s:expect(220)
    s:send("VRFY x"):expect(252)
    assert.equal("2001:db8::1", seen.addr)
    assert.equal(0, seen.port)
    assert.is_nil(seen.name)
    assert.is_nil(seen.user)
    s:send("XCLIENT ADDR=[TEMPUNAVAIL]"):expect(220)
    s:send("VRFY x"):expect(252)
    assert.equal("unknown", seen.addr)
  end)

  it("refuses a bad argument whole, with 501, and changes nothing", function()
    local h, seen = harness()
    local s = h:connect { remoteAddress = "10.0.0.1", remotePort = 1000 }
    s:expect(220)
    for _, arg in ipairs {
      "", "ADDR", "FOO=bar", "ADDR=192.0.2.1 ADDR=192.0.2.2", "ADDR=999.0.0.1",
      "ADDR=2001:db8::1", "ADDR=IPV6:192.0.2.1", "PORT=65536", "PORT=-1", "PROTO=LMTP",
      "NAME=a+2", "NAME=a+zz", "NAME=a+0Db", "HELO=" .. ("x"):rep(256), "NAME=a+20b",
      "ADDR=192.0.2.9 PORT=x",
    } do
      s:send("XCLIENT " .. arg):expect("501 5.5.4 ", arg)
    end
    s:send("VRFY x"):expect(252)
    assert.equal("10.0.0.1", seen.addr)
    assert.equal(1000, seen.port)
  end)

  it("is neither offered nor accepted from other peers", function()
    local h, seen = harness()
    local s = h:connect { remoteAddress = "192.0.2.1" }
    s:expect(220)
    assert.not_matches("XCLIENT", ehlo_lines(s))
    s:send("XCLIENT ADDR=10.9.9.9"):expect("550 5.7.0 Error: insufficient authorization")
    s:send("VRFY x"):expect(252)
    assert.equal("192.0.2.1", seen.addr)
    -- a server without xclientFrom offers it to nobody
    local h2 = policy("smtp.createServer()")
    local s2 = h2:connect { remoteAddress = "10.0.0.1" }
    s2:expect(220)
    assert.not_matches("XCLIENT", ehlo_lines(s2))
  end)

  it("checks server.xclientFrom", function()
    assert.has_error(function() policy('smtp.createServer().xclientFrom = { "mx.example" }') end)
    assert.has_error(function() policy('smtp.createServer().xclientFrom = "10.0.0.0/8"') end)
  end)
end)
