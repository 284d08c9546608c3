-- The envelope is the engine's: connection.helo, .sender and .recipients
-- (and a message's) are what the client was told 250 for, the same whether
-- or not the script listens to HELO, MAIL or RCPT.
local policy = require("spec.engine.support").policy

-- plain data of what the connection says now
local function envelope(c)
  local out = { recipients = {} }
  if c.helo then out.helo = { name = c.helo.name, extended = c.helo.extended } end
  local s = c.sender
  if s then
    local params = {}
    for k, v in pairs(s.params) do params[k] = v end
    out.sender = { address = s.address, localPart = s.localPart, domain = s.domain,
      utf8 = s.utf8, params = params }
  end
  for i, r in ipairs(c.recipients) do out.recipients[i] = r.address end
  return out
end

-- Plays one dialogue against a policy (listeners: whether it listens to
-- EHLO, MAIL and RCPT) and returns what the connection said at each step.
local function play(listeners)
  local conn
  local h = policy([[
    local server = smtp.createServer(function(c)
      CONN(c)
      if LISTEN then
        c:on("EHLO", function() end)
        c:on("MAIL", function() end)
        c:on("RCPT", function() end)
      end
    end)
    server.maxRecipients = 2
  ]], { globals = { CONN = function(c) conn = c end, LISTEN = listeners } })
  local s = h:connect()
  s:expect(220)
  local seen = {}
  s:send("EHLO c.example"):expect(250)
  s:send("MAIL FROM:<jörg@bü.example> SMTPUTF8 BODY=8BITMIME"):expect(250)
  s:send("RCPT TO:<a@example.org>"):expect(250)
  s:send("RCPT TO:<b@example.org>"):expect(250)
  s:send("RCPT TO:<c@example.org>"):expect(452)	-- refused: not kept
  seen.transaction = envelope(conn)
  s:send("RSET"):expect(250)
  seen.rset = envelope(conn)
  s:send("MAIL FROM:<x@example.net> SIZE=100"):expect(250)
  s:send("RCPT TO:<d@example.org>"):expect(250)
  seen.second = envelope(conn)
  s:send("EHLO d.example"):expect(250)
  seen.ehlo = envelope(conn)
  return seen
end

describe("the envelope", function()
  it("is the same with and without listeners: params, utf8, after RSET, EHLO, a refused RCPT", function()
    local with, without = play(true), play(false)
    assert.same(with, without)
    local t = without.transaction
    assert.same({ address = "jörg@bü.example", localPart = "jörg", domain = "bü.example",
      utf8 = true, params = { SMTPUTF8 = true, BODY = "8BITMIME" } }, t.sender)
    assert.same({ "a@example.org", "b@example.org" }, t.recipients)
    assert.same({ name = "c.example", extended = true }, t.helo)
    assert.is_nil(without.rset.sender)
    assert.same({}, without.rset.recipients)
    assert.same({ SIZE = "100" }, without.second.sender.params)
    assert.same({ "d@example.org" }, without.second.recipients)
    assert.is_nil(without.ehlo.sender)
    assert.same({}, without.ehlo.recipients)
    assert.same({ name = "d.example", extended = true }, without.ehlo.helo)
  end)

  it("keeps the objects the listeners saw, and leaves out the ones they refused", function()
    local conn, msg
    local h = policy([[
      smtp.createServer(function(c)
        CONN(c)
        c:on("MAIL", function(m) m.data.seen = true end)
        c:on("RCPT", function(r)
          if r.address:find("^no") then r.valid = false else r.data.seen = r.address end
        end)
        c:on("DATA", function(m) MSG(m) ; m:accept() end)
      end)
    ]], { globals = { CONN = function(c) conn = c end, MSG = function(m) msg = m end } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<yes1@example.org>"):expect(250)
    s:send("RCPT TO:<no@example.org>"):expect(550)
    s:send("RCPT TO:<yes2@example.org>"):expect(250)
    assert.is_true(conn.sender.data.seen)
    assert.equal(conn.sender, conn.sender)	-- one object per path, not one per read
    assert.same({ "yes1@example.org", "yes2@example.org" }, envelope(conn).recipients)
    assert.equal("yes2@example.org", conn.recipients[2].data.seen)
    s:send("DATA"):expect(354)
    s:send("hi\r\n."):expect(250)
    assert.is_true(msg.sender.data.seen)
    assert.equal("yes1@example.org", msg.recipients[1].data.seen)
    assert.is_nil(conn.sender)		-- the transaction ended
    assert.same({}, conn.recipients)
    assert.has_error(function() conn.sender = false end, "connection.sender is read-only")
  end)

  it("is forgotten by STARTTLS, the HELO name too (RFC 3207 4.2)", function()
    local conn
    local h = policy([[
      local server = smtp.createServer(function(c) CONN(c) end)
      server.tls = { cert = "c.pem", key = "k.pem" }
    ]], { globals = { CONN = function(c) conn = c end } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    assert.same({ name = "c.example", extended = true }, conn.helo)
    s:starttls()
    assert.is_nil(conn.helo)
    s:send("EHLO d.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    assert.equal("a@example.net", conn.sender.address)
    assert.same({ name = "d.example", extended = true }, conn.helo)
  end)
end)
