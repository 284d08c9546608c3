-- scripts/policy.lua, tested as a user would test their own policy.
local testing = require "smtp.testing"

describe("scripts/policy.lua", function()
  local h
  before_each(function() h = testing.load("scripts/policy.lua") end)

  it("refuses a HELO or EHLO name with 'invalid' in it", function()
    local s = h:connect()
    s:expect(220)
    s:send("HELO invalid.example"):expect("550 ")
    s:send("EHLO host.invalid"):expect("550 ")
    s:send("EHLO good.example"):expect(250)
  end)

  it("refuses a sender with 'invalid' in it", function()
    local r = h:connect():sendmail { from = "someone@invalid.example", to = { "b@example.org" } }
    assert.equal(550, r.mail.code)
    assert.is_false(r.ok)
  end)

  it("refuses only the invalid recipients and delivers to the rest", function()
    local r = h:connect():sendmail { from = "a@example.net",
      to = { "invalid@example.org", "bob@example.org" }, data = "hello\n" }
    assert.equal(550, r.rcpt[1].code)
    assert.equal("5.1.1", r.rcpt[1].enhanced)
    assert.equal(250, r.rcpt[2].code)
    assert.is_true(r.ok)
  end)

  it("advertises its size limit", function()
    local s = h:connect()
    s:expect(220)
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.truthy(table.concat(ehlo.lines, "\n"):find("SIZE 10485760", 1, true))
  end)
end)
