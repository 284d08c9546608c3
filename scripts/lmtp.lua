-- scripts/lmtp.lua -- the SMTP front of a Dovecot (or any LMTP server).
--
-- Each transaction is proxied to the LMTP server from MAIL on
-- (connection:proxy): its verdict on each recipient (user unknown, over
-- quota) is the client's RCPT reply, and its reply after the data is the
-- client's final reply.  LMTP answers once per recipient after the data;
-- so that no message can be delivered to some recipients and refused for
-- others (which an SMTP client could only retry whole, delivering twice,
-- or bounce whole, losing some), each transaction takes one recipient and
-- the next RCPT gets 452 4.5.3: the client sends it again in a new
-- transaction (RFC 5321 3.3), over the same connection.
-- Run: LMTP_ADDRESS=127.0.0.1:24 LMTP_DOMAINS=example.org luasmtpd scripts/lmtp.lua
-- LMTP_DOMAINS (optional): recipients outside them get 550 5.7.1 without
-- asking the LMTP server.
local smtp = require "smtp"

local HOST, PORT = (os.getenv("LMTP_ADDRESS") or "127.0.0.1:24"):match("^%[?(.-)%]?:(%d+)$")
assert(HOST and HOST ~= "", "LMTP_ADDRESS must be host:port")
local DOMAINS
for d in (os.getenv("LMTP_DOMAINS") or ""):gmatch("[^,%s]+") do
  DOMAINS = DOMAINS or {}
  DOMAINS[d:lower()] = true
end
local LMTP = { host = HOST, port = tonumber(PORT), protocol = "lmtp", tls = "none",
  timeout = tonumber(os.getenv("LMTP_TIMEOUT")) or 60 }

local server = smtp.createServer(function(conn)
  conn:on("MAIL", function()
    local ok, err = conn:proxy(LMTP)	-- the sender's reply is the LMTP server's now
    if not ok then conn:log("info", "LMTP server: %s", err) end
  end)

  conn:on("RCPT", function(rcpt)
    if DOMAINS and not DOMAINS[rcpt.domain:lower()] then
      rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.7.1 Not a domain of ours"
    end
    -- accepted here: the LMTP server decides next
  end)
end)
server.forwardPool = { idle = 30, maxMessages = 1000 }
server:listen(25)
