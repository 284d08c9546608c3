-- smtp.tcp on smtp.testing's fake peers (h.tcp), on the virtual clock:
-- the socket API, its errors, its deadlines, sockets closed with their
-- handler or session, and the per-worker limit.  spec/e2e/tcp_spec.lua has
-- the real sockets (lua_tcp.c).
local support = require "spec.engine.support"

-- a policy whose RCPT listener runs body(recipient) with `tcp` in scope;
-- what it returns (a string) is the RCPT's 550 text, for the spec to read
local function rcpt_policy(body, opts)
  return support.policy([[
local tcp = smtp.tcp
smtp.createServer(function(conn)
  conn:on("RCPT", function(rcpt)
    local text = (function() ]] .. body .. [[ end)()
    rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.7.1 " .. tostring(text)
  end)
end)
]], opts)
end

local function rcpt(h)
  local s = support.helo(h)
  s:send("MAIL FROM:<a@example.net>"):expect(250)
  s:send("RCPT TO:<b@example.org>")
  return s
end

describe("smtp.tcp (fake peers)", function()
  it("connects, sends, receives lines, counts and all, on a peer that answers at once", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("127.0.0.1", 10040))
      assert(s:send("hello\r\n"))
      local l1 = s:receive()
      local n = s:receive(3)
      local l2 = s:receive("*l")
      local rest = s:receive("*a")
      s:close()
      return table.concat({ l1, n, l2, rest }, "|")
    ]])
    h.tcp:listen("127.0.0.1", 10040, function(peer)
      local line = peer:receive()
      peer:send("got " .. line .. "\r\nabcdef\nlast")
      peer:close()
    end)
    rcpt(h):expect("550 5.7.1 got hello|abc|def|last")
    assert.equal("hello\r\n", h.tcp.peers[1].received)
  end)

  it("waits for a delayed peer on the virtual clock, other sessions going on", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("10.0.0.1", 7, { timeout = 5 }))
      s:send("x\n")
      return s:receive()
    ]])
    h.tcp:listen("10.0.0.1", 7, function(peer) peer:send(peer:receive() .. "!\n") end, { delay = 2 })
    local s = rcpt(h)
    s:expect_silence()
    local other = support.helo(h)	-- the worker is not blocked
    other:send("NOOP"):expect(250)
    h.clock:advance(3.9)
    s:expect_silence()
    h.clock:advance(0.2)
    s:expect("550 5.7.1 x!")
  end)

  it("times out a receive on a silent peer; the socket stays usable", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("10.0.0.1", 7, { timeout = 1 }))
      local a, err = s:receive()
      s:send("wake\n")
      local b = s:receive()
      return tostring(a) .. "," .. err .. "," .. b
    ]])
    h.tcp:listen("10.0.0.1", 7, function(peer)
      peer:send(peer:receive() .. "d\n")
    end)
    local s = rcpt(h)
    h.clock:advance(0.99)
    s:expect_silence()
    h.clock:advance(0.02)
    s:expect("550 5.7.1 nil,timeout,waked")
  end)

  it("says connection refused, timeout for a peer that never accepts, and names TLS failures", function()
    local h = rcpt_policy([[
      local out = {}
      local function try(...) local s, err = tcp.connect(...) out[#out + 1] = s and "ok" or err end
      try("10.0.0.9", 25)
      try("10.0.0.2", 25, { timeout = 3 })
      try("10.0.0.3", 465, { tls = true })
      try("10.0.0.3", 465, { tls = true, servername = "other.example" })
      try("10.0.0.3", 465, { tls = true, servername = "other.example", verify = false })
      try("10.0.0.4", 465, { tls = true })
      return table.concat(out, ";")
    ]])
    h.tcp:listen("10.0.0.2", 25, function() end, { accept = false })
    h.tcp:listen("10.0.0.3", 465, function() end, { tls = true })
    h.tcp:listen("10.0.0.4", 465, function() end, { tls = { trusted = false } })
    local s = rcpt(h)
    h.clock:advance(3)
    s:expect("550 5.7.1 connection refused;timeout;ok;tls: certificate verify failed: hostname mismatch;ok;"
      .. "tls: certificate verify failed: self-signed certificate")
    assert.equal(0, h.tcp.open)
  end)

  it("upgrades with starttls and drops the plaintext read ahead", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("10.0.0.5", 25))
      local greeting = s:receive()
      s:send("STARTTLS\r\n")
      local ok = s:receive()
      assert(s:starttls("mx.example"))
      s:send("EHLO me\r\n")
      return greeting .. "/" .. ok .. "/" .. s:receive()
    ]])
    h.tcp:listen("10.0.0.5", 25, function(peer)
      peer:send("220 hi\r\n")
      assert(peer:receive() == "STARTTLS")
      peer:send("220 go\r\nsmuggled\r\n")
      local l = peer:receive()
      peer:send((peer.tls and "250 tls " or "250 plain ") .. l .. "\r\n")
    end, { tls = { names = { "mx.example" } } })
    rcpt(h):expect("550 5.7.1 220 hi/220 go/250 tls EHLO me")
  end)

  it("bounds lines and *a", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("10.0.0.6", 1, { maxLine = 10 }))
      local a, e1 = s:receive()
      local b, e2 = s:receive()
      local s2 = assert(tcp.connect("10.0.0.6", 2, { maxSize = 5 }))
      local c, e3 = s2:receive("*a")
      return tostring(a) .. "," .. e1 .. "," .. tostring(b) .. "," .. e2 .. "," .. tostring(c) .. "," .. e3
    ]])
    h.tcp:listen("10.0.0.6", 1, function(peer) peer:send(("x"):rep(11) .. "\n") end)
    h.tcp:listen("10.0.0.6", 2, function(peer) peer:send("123456") peer:close() end)
    rcpt(h):expect("550 5.7.1 nil,line too long,nil,closed,nil,too large")
  end)

  it("returns closed and the partial data when the peer goes away", function()
    local h = rcpt_policy([[
      local s = assert(tcp.connect("10.0.0.7", 1))
      local a, err, partial = s:receive()
      return tostring(a) .. "," .. err .. "," .. partial
    ]])
    h.tcp:listen("10.0.0.7", 1, function(peer) peer:send("half") peer:close() end)
    rcpt(h):expect("550 5.7.1 nil,closed,half")
  end)

  it("closes a socket when its handler returns, and when its session goes away", function()
    local h = support.policy([[
      smtp.createServer(function(conn)
        conn:on("MAIL", function() assert(smtp.tcp.connect("10.0.0.8", 1)) end)
        conn:on("RCPT", function()
          local s = assert(smtp.tcp.connect("10.0.0.8", 1))
          s:receive()	-- the peer never answers
        end)
      end)
    ]])
    h.tcp:listen("10.0.0.8", 1, function(peer) peer:receive() end)
    local s = support.helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    assert.equal(0, h.tcp.open)
    assert.is_true(h.tcp.peers[1].eof)	-- the peer saw the close
    s:send("RCPT TO:<b@example.org>")
    assert.equal(1, h.tcp.open)
    s:close()
    assert.equal(0, h.tcp.open)
    assert.is_true(h.tcp.peers[2].eof)
    h.clock:advance(20)	-- the dropped handler's deadline does nothing
    assert.equal(0, h.tcp.open)
  end)

  it("limits open sockets per worker with server.maxSockets", function()
    local h = support.policy([[
      local server = smtp.createServer(function(conn)
        conn:on("RCPT", function(rcpt)
          local a = assert(smtp.tcp.connect("10.0.0.8", 1))
          local b = assert(smtp.tcp.connect("10.0.0.8", 1))
          local c, err = smtp.tcp.connect("10.0.0.8", 1)
          b:close()
          local d = smtp.tcp.connect("10.0.0.8", 1)
          rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.7.1 " .. tostring(c) .. "," .. err
            .. "," .. tostring(d ~= nil)
        end)
      end)
      server.maxSockets = 2
    ]])
    h.tcp:listen("10.0.0.8", 1, function() end)
    rcpt(h):expect("550 5.7.1 nil,too many sockets,true")
    assert.equal(0, h.tcp.open)
  end)

  it("refuses waiting outside handlers, and bad arguments, with clear errors", function()
    local h = support.policy([[
      smtp.createServer(function(conn)
        conn:on("RCPT", function(rcpt)
          local ok, err = pcall(smtp.tcp.connect, "10.0.0.8", 0)
          local ok2, err2 = pcall(smtp.tcp.connect, "10.0.0.8", 1, { tls = "yes" })
          local ok3, err3 = pcall(smtp.tcp.connect, "10.0.0.8", 1, { colour = 1 })
          rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.7.1 " .. err .. "|" .. err2 .. "|" .. err3
        end)
      end)
    ]])
    local text = rcpt(h):expect(550).lines[1]
    assert.truthy(text:find("a port in [1, 65535] expected", 1, true))
    assert.truthy(text:find("opts.tls must be a boolean", 1, true))
    assert.truthy(text:find('unknown option "colour"', 1, true))
    local ok, err = pcall(h.smtp.tcp.connect, "10.0.0.8", 1)
    assert.is_false(ok)
    assert.matches("called from handlers and 'start' listeners only", err)
    assert.has_error(function()
      support.policy([[ smtp.createServer().maxSockets = 0 ]])
    end)
  end)

  it("times out a connect that never completes, then a peer slower than the timeout", function()
    local h = rcpt_policy([[
      local s, err = tcp.connect("10.0.0.9", 9, { timeout = 2 })
      return tostring(s) .. "," .. err
    ]])
    h.tcp:listen("10.0.0.9", 9, function() end, { delay = 5 })
    local s = rcpt(h)
    h.clock:advance(1.5)
    s:expect_silence()
    h.clock:advance(0.5)
    s:expect("550 5.7.1 nil,timeout")
    h.clock:advance(10)	-- the late connect finds the socket closed
    assert.equal(0, h.tcp.open)
  end)
end)
