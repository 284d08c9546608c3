-- scripts/console.lua, tested as a user would test their own policy.
local testing = require "smtp.testing"

describe("scripts/console.lua", function()
  local out, h

  before_each(function()
    out = {}
    local function capture(...)
      for _, v in ipairs { ... } do out[#out + 1] = tostring(v) end
    end
    h = testing.load("scripts/console.lua", { globals = {
      print = function(...) capture(...) ; capture("\n") end,
      io = { write = capture },
    } })
  end)

  it("listens on 2525 and claims no port of its own when loaded (luasmtpd logs the real ones)", function()
    assert.same({ { port = 2525, host = "127.0.0.1" } }, h.listening)
    assert.equal("", table.concat(out))
  end)

  it("prints the sender, every chunk and EOT, then accepts", function()
    out = {}
    local s = h:connect()
    local r = s:sendmail { from = "alice@example.net", to = { "bob@example.org" },
      data = "Subject: hello\r\n\r\nHi Bob\r\n" }
    assert.is_true(r.ok, s:transcript())
    local printed = table.concat(out)
    assert.matches("^Message from alice@example.net\n", printed)
    assert.matches("DATA: Received: from ", printed, 1, true)	-- the engine's trace field first
    assert.matches("\r\nSubject: hello\r\n", printed, 1, true)
    assert.matches("Hi Bob\r\n", printed, 1, true)
    assert.matches("EOT\n$", printed)
  end)
end)
