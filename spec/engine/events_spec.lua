-- The Lua API on the real engine: every connection event, its object and
-- the connection's properties, driven through smtp.testing.
local testing = require "smtp.testing"

local policy = require("spec.engine.support").policy

local function greeted(h, peer)
  local s = h:connect(peer)
  s:expect(220)
  return s
end

describe("connection events", function()
  it("'connection' gets a connection with its peer and id", function()
    local seen
    local h = policy([[
      smtp.createServer(function(c) SEEN(c) end)
    ]], { globals = { SEEN = function(c) seen = c end } })
    local s = greeted(h, { remoteAddress = "198.51.100.7", remotePort = 40001, localPort = 2525 })
    assert.equal("198.51.100.7", seen.remoteAddress)
    assert.equal(40001, seen.remotePort)
    assert.equal("127.0.0.1", seen.localAddress)
    assert.equal(2525, seen.localPort)
    assert.equal(s.id, seen.id)
    assert.matches("^%x+$", seen.id)
    assert.equal("greeted", seen.state)
  end)

  it("HELO and EHLO carry name, extended and valid; valid = false refuses", function()
    local got = {}
    local h = policy([[
      smtp.createServer(function(c)
        local f = function(helo)
          GOT[#GOT + 1] = { name = helo.name, extended = helo.extended, valid = helo.valid }
          if helo.name:find("bad") then helo.valid = false end
        end
        c:on("HELO", f)
        c:on("EHLO", f)
      end)
    ]], { globals = { GOT = got } })
    local s = greeted(h)
    s:send("HELO bad.example"):expect("550 5.7.1 ")
    s:send("HELO good.example"):expect(250)
    s:send("EHLO good.example"):expect(250)
    assert.same({
      { name = "bad.example", extended = false, valid = true },
      { name = "good.example", extended = false, valid = true },
      { name = "good.example", extended = true, valid = true },
    }, got)
  end)

  it("connection.helo is what the client was last told 250 for", function()
    local conn
    local h = policy([[
      smtp.createServer(function(c)
        CONN(c)
        c:on("EHLO", function(e) if e.name == "no.example" then e.valid = false end end)
      end)
    ]], { globals = { CONN = function(c) conn = c end } })
    local s = greeted(h)
    assert.is_nil(conn.helo)
    s:send("EHLO yes.example"):expect(250)
    assert.same({ name = "yes.example", extended = true }, conn.helo)
    s:send("EHLO no.example"):expect(550)
    assert.same({ name = "yes.example", extended = true }, conn.helo)
    s:send("HELO other.example"):expect(250)	-- no HELO listener: tracked all the same
    assert.same({ name = "other.example", extended = false }, conn.helo)
  end)

  it("MAIL (alias 'MAIL FROM'): address without brackets, '' for <>, params", function()
    local got = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL FROM", function(m) GOT[#GOT + 1] = m end)
      end)
    ]], { globals = { GOT = got } })
    local s = greeted(h)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<Alice@Example.ORG> SIZE=1234 BODY=8BITMIME"):expect("250 2.1.0")
    s:send("RSET"):expect(250)
    s:send("MAIL FROM:<>"):expect(250)
    assert.equal("Alice@Example.ORG", got[1].address)
    assert.equal("Alice", got[1].localPart)
    assert.equal("Example.ORG", got[1].domain)
    assert.same({ SIZE = "1234", BODY = "8BITMIME" }, got[1].params)
    assert.equal("Alice@Example.ORG", tostring(got[1]))
    assert.equal("", got[2].address)
  end)

  it("MAIL valid = false refuses the sender and keeps the session usable", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m) if m.address:find("spam") then m.valid = false end end)
      end)
    ]])
    local s = greeted(h)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<spam@x.example>"):expect("550 5.7.1 ")
    s:send("MAIL FROM:<ham@x.example>"):expect(250)
  end)

  it("RCPT (alias 'RCPT TO'): a custom code and message", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT TO", function(r)
          if r.address == "grey@example.org" then
            r.valid, r.code, r.message = false, 450, "4.7.1 greylisted, try later"
          elseif r.address:find("invalid") then
            r.valid = false
          end
        end)
      end)
    ]])
    local s = greeted(h)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    local r = s:send("RCPT TO:<grey@example.org>"):expect(450)
    assert.equal("4.7.1", r.enhanced)
    assert.same({ "greylisted, try later" }, r.lines)
    s:send("RCPT TO:<invalid@example.org>"):expect("550 5.7.1 ")
    s:send("RCPT TO:<ok@example.org>"):expect("250 2.1.5 ")
  end)

  it("sender and recipients are what the client was told yes to", function()
    local conn
    local h = policy([[
      smtp.createServer(function(c)
        CONN(c)
        c:on("RCPT", function(r) if r.address:find("^no") then r.valid = false end end)
      end)
    ]], { globals = { CONN = function(c) conn = c end } })
    local s = greeted(h)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    assert.equal("a@example.net", conn.sender.address)	-- no MAIL listener: still known
    s:send("RCPT TO:<yes1@example.org>"):expect(250)
    s:send("RCPT TO:<no@example.org>"):expect(550)
    s:send("RCPT TO:<yes2@example.org>"):expect(250)
    local addrs = {}
    for i, r in ipairs(conn.recipients) do addrs[i] = r.address end
    assert.same({ "yes1@example.org", "yes2@example.org" }, addrs)
    s:send("RSET"):expect(250)
    assert.is_nil(conn.sender)
    assert.same({}, conn.recipients)
  end)

  it("a 2xx code with valid = false is refused with 451 and a log line", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RCPT", function(r) r.valid = false ; r.code = 250 end)
      end)
    ]])
    local s = greeted(h)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect("451 4.3.0 ")
    assert.matches("handler rcpt failed: refused verdict: code 250 with valid = false", s:log())
  end)

  it("a code that is not a number is a handler error (451)", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m) m.valid = false ; m.code = "550" end)
      end)
    ]])
    local s = greeted(h)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect("451 4.3.0 ")
    assert.matches("reply code must be an integer from 200 to 599", s:log())
  end)

  it("RSET and QUIT listeners run and may choose the text", function()
    local calls = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("RSET", function(e) CALLS[#CALLS + 1] = "RSET" end)
        c:on("QUIT", function(e) CALLS[#CALLS + 1] = "QUIT" ; e.message = "2.0.0 See you" end)
      end)
    ]], { globals = { CALLS = calls } })
    local s = greeted(h)
    s:send("RSET"):expect(250)
    local r = s:send("QUIT"):expect(221)
    assert.same({ "See you" }, r.lines)
    assert.same({ "RSET", "QUIT" }, calls)
    assert.is_true(s:closed())
  end)

  it("VRFY and EXPN get the argument and may answer", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("VRFY", function(v)
          if v.argument == "postmaster" then v.code = 250 ; v.message = "Postmaster <postmaster@example.org>" end
        end)
        c:on("EXPN", function(e) e.valid = false ; e.code = 550 ; e.message = "5.5.0 No lists here" end)
      end)
    ]])
    local s = greeted(h)
    s:send("VRFY postmaster"):expect({ code = 250, text = "Postmaster <postmaster@example.org>" })
    s:send("VRFY someone"):expect(252)
    s:send("EXPN staff"):expect("550 5.5.0 No lists here")
  end)

  it("'close' runs last, always, after QUIT or a dropped client", function()
    local order = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("QUIT", function() ORDER[#ORDER + 1] = "QUIT" end)
        c:on("close", function(conn) ORDER[#ORDER + 1] = "close " .. conn.state end)
      end)
    ]], { globals = { ORDER = order } })
    local s = greeted(h)
    s:send("QUIT"):expect(221)
    assert.same({ "QUIT", "close closed" }, order)
    local s2 = greeted(h)
    s2:close()
    assert.same({ "QUIT", "close closed", "close closed" }, order)
  end)

  it("once, off and several listeners in order", function()
    local calls = {}
    local h = policy([[
      smtp.createServer(function(c)
        local function second() CALLS[#CALLS + 1] = "second" end
        c:on("HELO", function() CALLS[#CALLS + 1] = "first" end)
        c:on("HELO", second)
        c:once("HELO", function() CALLS[#CALLS + 1] = "once" end)
        c:on("RSET", function() c:off("HELO", second) end)
      end)
    ]], { globals = { CALLS = calls } })
    local s = greeted(h)
    s:send("HELO a.example"):expect(250)
    s:send("HELO a.example"):expect(250)
    s:send("RSET"):expect(250)
    s:send("HELO a.example"):expect(250)
    assert.same({ "first", "second", "once", "first", "second", "first" }, calls)
  end)

  it("registering an unknown event is an error at registration", function()
    local h = policy([[
      smtp.createServer(function(c) c:on("RCTP", function() end) end)
    ]])
    local s = h:connect()	-- the 'connection' handler failed: 421, and a log line
    s:expect("421 4.3.0 ")
    assert.matches('handler connect failed: policy.lua:2: unknown event RCTP', s:log())
  end)

  it("a connection handler may refuse the connection", function()
    local h = policy([[
      smtp.createServer(function(c)
        if c.remoteAddress == "203.0.113.9" then
          c.valid, c.code, c.message = false, 554, "5.7.1 You are listed"
        end
      end)
    ]])
    local s = h:connect { remoteAddress = "203.0.113.9" }
    s:expect("554 ")
    local ok = h:connect { remoteAddress = "192.0.2.10" }
    ok:expect(220)
  end)
end)
