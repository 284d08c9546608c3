-- scripts/dnsbl.lua -- refuse clients listed on DNS blocklists, before the
-- greeting, with the list's own reason.
--
-- Every connection's address is looked up on every zone at once
-- (smtp.dnsbl: IPv4 reversed, IPv6 as nibbles, RFC 5782).  A listed client
-- is told 554 with the first listing zone's TXT reason and never gets a
-- greeting.  When a zone cannot be asked (a timeout, a server failure),
-- the client is let in and a warning logged, or, with
-- DNSBL_ON_FAILURE=tempfail, told 421 (try later).  Answers are cached for
-- their TTL per worker, so a client that comes back costs no lookup.
-- Settings from the environment:
--   DNSBL_ZONES       comma-separated zones (default zen.spamhaus.org)
--   DNSBL_ON_FAILURE  "accept" (default) or "tempfail"
--   DNSBL_RESOLVERS   comma-separated servers ("127.0.0.1:5353"; default
--                     /etc/resolv.conf's); a DNSBL wants a resolver of
--                     your own: public ones are often refused
--   DNSBL_TIMEOUT     seconds per attempt (default 2; one retry)
-- Run: DNSBL_ZONES=zen.spamhaus.org luasmtpd scripts/dnsbl.lua
local smtp = require "smtp"

local function list(s)
  local t = {}
  for item in (s or ""):gmatch("[^,%s]+") do t[#t + 1] = item end
  return t
end

local ZONES = list(os.getenv("DNSBL_ZONES") or "zen.spamhaus.org")
local ON_FAILURE = os.getenv("DNSBL_ON_FAILURE") or "accept"
local REASON_MAX = 300	-- octets of a list's TXT reason put in the reply
if ON_FAILURE ~= "accept" and ON_FAILURE ~= "tempfail" then
  error("DNSBL_ON_FAILURE must be accept or tempfail, got " .. ON_FAILURE)
end
if #ZONES == 0 then error("DNSBL_ZONES names no zone") end

-- a list's text, made fit for a reply line: no control characters, bounded
local function clean(text)
  text = text:gsub("[%c]", " "):gsub("[\128-\255]", "?")
  if #text > REASON_MAX then text = text:sub(1, REASON_MAX) .. "..." end
  return text
end

local server = smtp.createServer(function(connection)
  local ip = connection.remoteAddress
  local listings, failures = smtp.dnsbl(ip, ZONES)
  if listings == nil then return end	-- not an address (a Unix socket, say)
  local hit = listings[1]
  if hit then
    connection:log("info", "dnsbl: %s listed by %s (%s)", ip, hit.zone, table.concat(hit.codes, " "))
    connection.valid, connection.code = false, 554
    connection.message = ("5.7.1 Service unavailable; client [%s] blocked using %s%s"):format(ip,
      hit.zone, hit.reason and ("; " .. clean(hit.reason)) or "")
    return
  end
  for _, f in ipairs(failures) do
    connection:log("warn", "dnsbl: %s: %s%s", f.zone, f.err, f.rcode and (" (" .. f.rcode .. ")") or "")
  end
  if #failures > 0 and ON_FAILURE == "tempfail" then
    connection.valid, connection.code = false, 421
    connection.message = "4.7.1 Cannot check your address now; try again later"
  end
end)

local resolvers = list(os.getenv("DNSBL_RESOLVERS"))
if #resolvers > 0 then server.resolvers = resolvers end
if os.getenv("DNSBL_TIMEOUT") then server.dnsTimeout = tonumber(os.getenv("DNSBL_TIMEOUT")) end
server:listen(2525)
