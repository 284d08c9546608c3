-- scripts/ratelimit.lua -- message rate limits on smtp.store: every worker
-- counts in the same place, and the counts survive reloads and restarts.
--
-- Two limits, each a fixed window counted with one db:incr per message (at
-- MAIL FROM, so a refused sender costs no DATA):
--   * per client address: PER_CLIENT messages a minute (IPv4 address, or the
--     /64 of an IPv6 one), then "451 4.7.1" until the next minute;
--   * per sender: PER_SENDER messages an hour from one sender address, from
--     any client, then "452 4.7.1" until the next hour.  The null sender <>
--     (bounces) is not limited per sender: it is everyone's.
-- A transaction refused for the client's rate does not count for its sender.
-- The limits can be set from the environment (RATELIMIT_PER_CLIENT,
-- RATELIMIT_PER_SENDER).  If the store fails, the handler's error is a 451
-- for the client (try again later) and a log line.
-- Run: luasmtpd --state-dir /var/lib/luasmtpd scripts/ratelimit.lua
local smtp = require "smtp"

local PER_CLIENT = tonumber(os.getenv("RATELIMIT_PER_CLIENT")) or 30	-- messages a minute
local PER_SENDER = tonumber(os.getenv("RATELIMIT_PER_SENDER")) or 100	-- messages an hour

local db = smtp.store.open("ratelimit")

-- the client: its IPv4 address (IPv4-mapped IPv6 too), or the /64 of IPv6
local function client(addr)
  local v4 = addr:match("^%d+%.%d+%.%d+%.%d+$") or addr:match("^::[fF][fF][fF][fF]:(%d+%.%d+%.%d+%.%d+)$")
  if v4 then return v4 end
  local a = addr:lower()
  local left, right = a:match("^(.-)::(.*)$")
  local groups = {}
  for g in (left or a):gmatch("[^:]+") do groups[#groups + 1] = g end
  if left then
    local r = {}
    for g in right:gmatch("[^:]+") do r[#r + 1] = g end
    for _ = 1, 8 - #groups - #r do groups[#groups + 1] = "0" end
    for _, g in ipairs(r) do groups[#groups + 1] = g end
  end
  for i = 1, 4 do groups[i] = ("%x"):format(tonumber(groups[i] or "0", 16) or 0) end
  return table.concat(groups, ":", 1, 4) .. "::/64"
end

-- count one in the window of `secs` that now falls in; the new count and
-- the seconds until the window ends
local function count(key, secs)
  local now = smtp.now()
  local window = math.floor(now / secs)
  local left = (window + 1) * secs - now
  return db:incr(("%s@%d"):format(key, window), 1, secs), math.ceil(left)
end

local server = smtp.createServer(function(connection)
  connection:on("MAIL", function(sender)
    local who = client(connection.remoteAddress)
    local n, left = count("c:" .. who, 60)
    if n > PER_CLIENT then
      connection:log("info", "ratelimit: client %s over %d messages a minute", who, PER_CLIENT)
      sender.valid, sender.code = false, 451
      sender.message = ("4.7.1 Too many messages from %s: at most %d a minute, try again in %d s")
        :format(who, PER_CLIENT, left)
      return
    end
    if sender.address == "" then return end
    local addr = sender.address:lower():sub(1, 400)
    n, left = count("s:" .. addr, 3600)
    if n > PER_SENDER then
      connection:log("info", "ratelimit: sender %s over %d messages an hour", addr, PER_SENDER)
      sender.valid, sender.code = false, 452
      sender.message = ("4.7.1 Too many messages from sender %s: at most %d an hour, try again in %d min")
        :format(addr, PER_SENDER, math.ceil(left / 60))
    end
  end)
end)

server:listen(2525, "127.0.0.1")
