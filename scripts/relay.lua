-- scripts/relay.lua -- a filtering MX in front of a smarthost.
--
-- Recipients are accepted for the domains of RELAY_DOMAINS only (550 5.7.1
-- Relaying denied for the rest); each accepted message is handed to the
-- smarthost while the client sends it (message:forward), and the client's
-- final reply is the smarthost's: 250 only once the smarthost took the
-- message, so nothing is queued here and nothing is lost if this server
-- dies.  A smarthost that is down or slow gives 451 (the client retries).
-- Run: RELAY_DOMAINS=example.org,example.net RELAY_NEXTHOP=10.0.0.5:25 \
--        luasmtpd scripts/relay.lua
-- RELAY_TLS: none | opportunistic (default) | require; RELAY_TIMEOUT:
-- seconds per step with the smarthost (60).
local smtp = require "smtp"

local DOMAINS = {}
for d in (os.getenv("RELAY_DOMAINS") or ""):gmatch("[^,%s]+") do DOMAINS[d:lower()] = true end
assert(next(DOMAINS), "RELAY_DOMAINS must name at least one domain")
local HOST, PORT = (os.getenv("RELAY_NEXTHOP") or ""):match("^%[?(.-)%]?:(%d+)$")
assert(HOST and HOST ~= "", "RELAY_NEXTHOP must be host:port")
local NEXTHOP = { host = HOST, port = tonumber(PORT), tls = os.getenv("RELAY_TLS") or "opportunistic",
  timeout = tonumber(os.getenv("RELAY_TIMEOUT")) or 60 }

local server = smtp.createServer(function(conn)
  conn:on("RCPT", function(rcpt)
    if not DOMAINS[rcpt.domain:lower()] then
      rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.7.1 Relaying denied"
    end
  end)

  conn:on("DATA", function(message)
    local ok, err = message:forward(NEXTHOP)
    if not ok then conn:log("info", "not relayed: %s", err) end
  end)
end)
server.forwardPool = { idle = 30, maxMessages = 100 }
server:listen(25)
