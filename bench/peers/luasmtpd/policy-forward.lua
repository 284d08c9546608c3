-- bench/peers/luasmtpd/policy-forward.lua -- the benchmark policy, forwarding:
-- the same listeners as policy.lua, and each message handed to the next hop
-- ($NEXT_HOP_HOST:$NEXT_HOP_PORT, smtp-sink in bench/forward.sh) as it
-- arrives, with message:forward in the 'DATA' listener; the client's reply
-- is the next hop's.  A build without message:forward answers every DATA
-- with 451, so the load fails and the row says so.
local smtp = require "smtp"

local target = {
  host = os.getenv("NEXT_HOP_HOST") or "127.0.0.1",
  port = tonumber(os.getenv("NEXT_HOP_PORT") or "") or 25,
}

local server = smtp.createServer(function(conn)
  local function helo(h) end
  conn:on("HELO", helo)
  conn:on("EHLO", helo)
  conn:on("MAIL", function(sender) end)
  conn:on("RCPT", function(rcpt)
    if rcpt.address:find("invalid", 1, true) then rcpt.valid = false end
  end)
  conn:on("DATA", function(message)
    message:forward(target)
  end)
end)
server.maxConnections = 0
server.maxConnectionsPerClient = 0
