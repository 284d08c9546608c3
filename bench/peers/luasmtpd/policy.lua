-- bench/peers/luasmtpd/policy.lua -- the benchmark policy for luasmtpd, the
-- same as every programmable peer's: any HELO and sender, 550 for recipients
-- containing "invalid", every body chunk read and dropped, 250 at the end.
-- Listeners on HELO/EHLO, MAIL, RCPT, DATA chunks and end, as the targets ask.
local smtp = require "smtp"

local server = smtp.createServer(function(conn)
  local function helo(h) end
  conn:on("HELO", helo)
  conn:on("EHLO", helo)
  conn:on("MAIL", function(sender) end)
  conn:on("RCPT", function(rcpt)
    if rcpt.address:find("invalid", 1, true) then rcpt.valid = false end
  end)
  conn:on("DATA", function(message)
    message:on("data", function(chunk) end)
    message:on("end", function() message:accept() end)
  end)
end)
-- no connection limits, as every peer here (Postfix's are set to 0): S5 holds
-- 2,000 connections from 127.0.0.1, and a load must not meet a 421
server.maxConnections = 0
server.maxConnectionsPerClient = 0
