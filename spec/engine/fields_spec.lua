-- Event objects refuse fields they do not have: a typo in a decision field
-- is an error naming the field and the nearest one (the client gets 451),
-- never a field nobody reads.  User data goes in the data tables.

local support = require "spec.engine.support"
local policy, helo = support.policy, support.helo

-- A session of a policy whose listener for `event` runs `body` (with the
-- event object as `o`), up to that event's command.
local function run(event, body)
  local listen = event == "connection" and "do local o = c ; %s end"
    or "c:on(%q, function(o) %s end)"
  local h = policy(([[
    local server = smtp.createServer(function(c)
      ]] .. listen .. [[

    end)
    server.authMethods = { "PLAIN" }
  ]]):format(event == "connection" and body or event, event ~= "connection" and body or nil),
    { config = { auth_without_tls = true } })
  local s = h:connect()
  if event == "connection" then return s end
  s:expect(220)
  if event == "HELO" then return s:send("HELO c.example") end
  s:send("EHLO c.example"):expect(250)
  if event == "AUTH" then return s:send("AUTH PLAIN AGFsaWNlAHNlY3JldA==") end
  if event == "VRFY" then return s:send("VRFY bob") end
  if event == "RSET" then return s:send("RSET") end
  if event == "QUIT" then return s:send("QUIT") end
  s:send("MAIL FROM:<a@example.net>")
  if event == "MAIL" then return s end
  s:expect(250)
  s:send("RCPT TO:<b@example.org>")
  if event == "RCPT" then return s end
  s:expect(250)
  return s:send("DATA")
end

describe("event objects", function()
  local typos = {
    { "RCPT", "o.vaild = false", "no field 'vaild' on recipient (did you mean 'valid'?)" },
    { "MAIL", "o.mesage = '5.7.1 no'", "no field 'mesage' on sender (did you mean 'message'?)" },
    { "MAIL", "o.Code = 550", "no field 'Code' on sender (did you mean 'code'?)" },
    { "RCPT", "o.adress = 'x@y'", "no field 'adress' on recipient (did you mean 'address'?)" },
    { "HELO", "o.vlaid = false", "no field 'vlaid' on HELO object (did you mean 'valid'?)" },
    { "AUTH", "o.vaild = true", "no field 'vaild' on AUTH object (did you mean 'valid'?)" },
    { "VRFY", "o.cod = 250", "no field 'cod' on VRFY object (did you mean 'code'?)" },
    { "RSET", "o.mesage = 'ok'", "no field 'mesage' on RSET object (did you mean 'message'?)" },
    { "DATA", "o.vaild = false", "no field 'vaild' on message (did you mean 'valid'?)" },
    { "connection", "o.vaild = false", "no field 'vaild' on connection (did you mean 'valid'?)" },
  }
  for _, t in ipairs(typos) do
    local event, body, msg = t[1], t[2], t[3]
    it("a typo on the " .. event .. " object is a 451 naming the field: " .. body, function()
      local s = run(event, body)
      -- (a connection refused with a 4xx is a 421; RSET cannot be refused)
      s:expect(event == "connection" and 421 or event == "RSET" and 250 or 451)
      local log = s:log()
      assert.matches("policy.lua:3: " .. msg, log, 1, true)
    end)
  end

  it("names every field when none is near, and where user data goes", function()
    local s = run("RCPT", "o.mailbox = '/var/mail/b'")
    s:expect(451)
    assert.matches("no field 'mailbox' on recipient (its fields: address, code, data, domain, "
      .. "localPart, message, params, utf8, valid; your own data goes in recipient.data)",
      s:log(), 1, true)
    s = run("HELO", "o.seen = true")
    s:expect(451)
    assert.matches("your own data goes in connection.data", s:log(), 1, true)
    s = run("DATA", "o.data = {}")
    s:expect(451)
    assert.matches("your own data goes in locals of the 'DATA' listener or connection.data",
      s:log(), 1, true)
  end)

  it("refuses read-only and method names on the connection and the message", function()
    local s = run("DATA", "o.accept = true")
    s:expect(451)
    assert.matches("'accept' is a method of message, not a field", s:log(), 1, true)
    local h = policy([[
      smtp.createServer(function(c)
        c:on("HELO", function() c.user = "mallory" end)
        c:on("EHLO", function() c.on = nil end)
      end)
    ]])
    s = h:connect()
    s:expect(220)
    s:send("HELO c.example"):expect(451)
    assert.matches("connection.user is read-only", s:log(), 1, true)
    s:send("EHLO c.example"):expect(451)
    assert.matches("'on' is a method of connection, not a field", s:log(), 1, true)
  end)

  it("takes every decision field, set or not yet set", function()
    local h = policy([[
      smtp.createServer(function(c)
        c.code, c.message = 220, "welcome"
        c:on("EHLO", function(e) e.valid, e.code, e.message = false, 550, "5.7.1 no EHLO" end)
        c:on("HELO", function(e) e.message = "hi there" end)
        c:on("MAIL", function(m) m.valid, m.code, m.message = false, 553, "5.1.8 bad sender" end)
        c:on("VRFY", function(v) v.code, v.message = 250, "<bob@example.org>" end)
        c:on("QUIT", function(q) q.message = "2.0.0 see you" end)
      end)
    ]])
    local s = h:connect()
    s:expect("220 mx.test.example welcome")
    s:send("EHLO c.example"):expect("550 5.7.1 no EHLO")
    s:send("HELO c.example"):expect("250 hi there")
    s:send("MAIL FROM:<a@example.net>"):expect("553 5.1.8 bad sender")
    s:send("VRFY bob"):expect("250 2.5.0 <bob@example.org>")
    s:send("QUIT"):expect("221 2.0.0 see you")
  end)

  it("keeps user data in connection.data, sender.data, recipient.data", function()
    local seen
    local h = policy([[
      smtp.createServer(function(c)
        c.data.greeted = false
        c:on("HELO", function() c.data.greeted = true end)
        c:on("MAIL", function(m) m.data.score = 3 end)
        c:on("RCPT", function(r) r.data.mailbox = "/var/mail/" .. r.localPart end)
        c:on("DATA", function(m)
          local chunks = 0	-- a message's own data: locals of the 'DATA' listener
          m:on("data", function() chunks = chunks + 1 end)
          m:on("end", function()
            SEEN { c.data.greeted, m.sender.data.score, m.recipients[1].data.mailbox, chunks }
            c.data = "replaced"	-- data is a field like any: the user's to set
            m:accept()
          end)
        end)
      end)
    ]], { globals = { SEEN = function(v) seen = v end } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("one\r\n")
    s:send_raw("two\r\n.\r\n"):expect(250)
    assert.same({ true, 3, "/var/mail/bob", 2 }, seen)
  end)

  it("applies to the objects the connection keeps (connection.sender, recipients)", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function() c.sender.vaild = false end)
      end)
    ]])
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(451)
    assert.matches("no field 'vaild' on sender (did you mean 'valid'?)", s:log(), 1, true)
  end)
end)
