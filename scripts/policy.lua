-- scripts/policy.lua -- the seed's daemon example: refuse HELO names, senders
-- and recipients that look invalid; accept every message otherwise.
--
-- Run: luasmtpd scripts/policy.lua   (serves 127.0.0.1:2525)
local smtp = require "smtp"

local function looks_invalid(s)
  return s:find("invalid", 1, true) ~= nil
end

local server = smtp.createServer(function(connection)
  local function check_helo(helo)
    if looks_invalid(helo.name) then helo.valid = false end
  end
  connection:on("HELO", check_helo)
  connection:on("EHLO", check_helo)

  connection:on("MAIL", function(sender)
    if looks_invalid(sender.address) then sender.valid = false end
  end)

  connection:on("RCPT", function(recipient)
    if looks_invalid(recipient.address) then
      recipient.valid = false
      recipient.code, recipient.message = 550, "5.1.1 No such user here"
    end
  end)
end)

server.maxSize = 10 * 1024 * 1024
server:listen(2525, "127.0.0.1")
