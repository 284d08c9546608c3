-- scripts/greylist.lua -- greylisting with a tarpit.
--
-- The first time a (client address, sender, recipient) triple is seen, the
-- RCPT reply is held for TARPIT seconds and then refused with 450; a retry
-- after RETRY_AFTER seconds is accepted (real MTAs retry, most bots give
-- up).  A triple that passed is remembered for a day.
-- Run: luasmtpd scripts/greylist.lua
local smtp = require "smtp"

local TARPIT = 120		-- seconds the first attempt waits for its reply
local RETRY_AFTER = 300		-- seconds before a retry is let through
local REMEMBER = 24 * 3600	-- seconds a triple that passed stays welcome

local first_seen, passed = {}, {}

local function triple(connection, recipient)
  return table.concat({ connection.remoteAddress, connection.sender.address:lower(),
    recipient.address:lower() }, "\0")
end

local server = smtp.createServer(function(connection)
  connection:on("RCPT", function(recipient)
    local key, now = triple(connection, recipient), smtp.now()
    if passed[key] and now - passed[key] < REMEMBER then return end
    local seen = first_seen[key]
    if seen and now - seen >= RETRY_AFTER then
      passed[key], first_seen[key] = now, nil
      connection:log("info", "greylist: %s passed after %d s", recipient.address, math.floor(now - seen))
      return
    end
    if not seen then
      first_seen[key] = now
      smtp.sleep(TARPIT)
    end
    recipient.valid = false
    recipient.code = 450
    recipient.message = "4.7.1 Greylisted, please try again later"
  end)
end)

server.decisionTimeout = TARPIT + 60
server:listen(2525, "127.0.0.1")
