-- DSN parameters (RFC 3461) on the real engine: RET and ENVID on MAIL,
-- NOTIFY and ORCPT on RCPT, checked, decoded and handed to Lua in params.

local support = require "spec.engine.support"
local policy = support.policy

local function ehlo(h)
  local s = h:connect()
  s:expect(220)
  local r = s:send("EHLO c.example"):expect(250)
  return s, table.concat(r.lines, "\n")
end

describe("DSN parameters", function()
  local seen, h
  before_each(function()
    seen = {}
    h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(sender) SEEN.mail = sender.params end)
        c:on("RCPT", function(rcpt) SEEN[#SEEN + 1] = rcpt.params end)
        c:on("DATA", function(m)
          SEEN.envelope = { m.sender.params.ENVID, m.recipients[1].params.ORCPT }
          m:on("end", function() m:accept() end)
        end)
      end)
    ]], { globals = { SEEN = seen } })
  end)

  it("are advertised, and given to Lua decoded", function()
    local s, ehlo_reply = ehlo(h)
    assert.matches("\nDSN\n", ehlo_reply)
    s:send("MAIL FROM:<a@example.net> RET=hdrs ENVID=QQ+2B314+3Dx"):expect(250)
    assert.same({ RET = "HDRS", ENVID = "QQ+314=x" }, seen.mail)
    s:send("RCPT TO:<b@example.org> NOTIFY=success,delay ORCPT=rfc822;b+2Bx@example.org"):expect(250)
    assert.same({ NOTIFY = "SUCCESS,DELAY", ORCPT = "RFC822;b+x@example.org" }, seen[1])
    s:send("RCPT TO:<c@example.org> NOTIFY=NEVER"):expect(250)
    assert.same({ NOTIFY = "NEVER" }, seen[2])
    s:send("DATA"):expect(354)
    s:send_raw("x\r\n.\r\n"):expect(250)
    assert.same({ "QQ+314=x", "RFC822;b+x@example.org" }, seen.envelope)
  end)

  it("malformed ones get 501 5.5.4 and never reach Lua", function()
    local s = ehlo(h)
    s:send("MAIL FROM:<a@example.net> RET=BODY"):expect("501 5.5.4 Syntax: bad RET")
    s:send("MAIL FROM:<a@example.net> ENVID=a+00b"):expect("501 5.5.4 Syntax: bad ENVID")
    s:send("MAIL FROM:<a@example.net> ENVID=" .. string.rep("e", 101)):expect("501 5.5.4 ")
    assert.is_nil(seen.mail)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org> NOTIFY=NEVER,FAILURE"):expect("501 5.5.4 Syntax: bad NOTIFY")
    s:send("RCPT TO:<b@example.org> ORCPT=b@example.org"):expect("501 5.5.4 Syntax: bad ORCPT")
    s:send("RCPT TO:<b@example.org> ORCPT=rfc822;b+0D+0A@example.org"):expect("501 5.5.4 ")
    s:send("RCPT TO:<b@example.org> RET=FULL"):expect("555 5.5.4 Unsupported parameter RET")
    s:send("MAIL FROM:<a@example.net> NOTIFY=NEVER"):expect(503)	-- nested MAIL
    assert.equal(0, #seen)
  end)

  it("are unknown parameters when server.dsn is false, or after HELO", function()
    h = policy("local s = smtp.createServer() s.dsn = false")
    local s, ehlo_reply = ehlo(h)
    assert.not_matches("DSN", ehlo_reply)
    s:send("MAIL FROM:<a@example.net> RET=FULL"):expect("555 5.5.4 Unsupported parameter RET")
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org> NOTIFY=NEVER"):expect("555 5.5.4 ")
    h = policy("smtp.createServer()")
    s = h:connect()
    s:expect(220)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net> RET=FULL"):expect("555 5.5.4 Parameters need EHLO")
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org> NOTIFY=NEVER"):expect("555 5.5.4 ")
  end)
end)
