-- scripts/greylist.lua -- greylisting with a tarpit, on smtp.store: every
-- worker shares one memory, and it survives reloads and restarts.
--
-- The first time a (client network, sender, recipient) triplet is seen (the
-- network is the client's /24 for IPv4, its /64 for IPv6: big senders retry
-- from another address of the same pool), the RCPT reply is held for TARPIT
-- seconds and then refused with 450; a retry after RETRY_AFTER seconds is
-- accepted (real MTAs retry, most bots give up).  A triplet that passed is
-- remembered for PASSED days, and its client network is allowlisted for as
-- long: its other triplets are not greylisted.  A first attempt that is not
-- retried within PENDING seconds is forgotten.  The times can be set from
-- the environment (GREYLIST_RETRY_AFTER, GREYLIST_TARPIT, in seconds).
-- Run: luasmtpd --state-dir /var/lib/luasmtpd scripts/greylist.lua
local smtp = require "smtp"

local TARPIT = tonumber(os.getenv("GREYLIST_TARPIT")) or 120	-- seconds the first attempt waits
local RETRY_AFTER = tonumber(os.getenv("GREYLIST_RETRY_AFTER")) or 300	-- seconds before a retry passes
local PENDING = 24 * 3600	-- seconds a first attempt waits for its retry
local PASSED = 35 * 24 * 3600	-- seconds a passed triplet and its network stay welcome

local db = smtp.store.open("greylist")

-- the client's network: a.b.c for IPv4 (and IPv4-mapped IPv6), the first
-- four groups of the expanded address for IPv6
local function network(addr)
  local v4 = addr:match("^(%d+%.%d+%.%d+)%.%d+$") or addr:match("^::[fF][fF][fF][fF]:(%d+%.%d+%.%d+)%.%d+$")
  if v4 then return v4 end
  local function split(s, t)
    for g in s:gmatch("[^:]+") do t[#t + 1] = g end
    return t
  end
  local a = addr:lower()
  local left, right = a:match("^(.-)::(.*)$")
  local groups = split(left or a, {})
  if left then
    local r = split(right, {})
    for _ = 1, 8 - #groups - #r do groups[#groups + 1] = "0" end
    for _, g in ipairs(r) do groups[#groups + 1] = g end
  end
  for i = 1, 4 do groups[i] = ("%x"):format(tonumber(groups[i] or "0", 16) or 0) end
  return table.concat(groups, ":", 1, 4) .. "::/64"
end

local server = smtp.createServer(function(connection)
  connection:on("RCPT", function(recipient)
    local net = network(connection.remoteAddress)
    if db:get("net:" .. net) then return end	-- allowlisted: passed before
    local key = ("t:%s\0%s\0%s"):format(net, connection.sender.address:lower(),
      recipient.address:lower()):sub(1, 511)
    local now = smtp.now()
    local seen = db:get(key)
    if seen == "passed" then
      db:set(key, "passed", PASSED)
      return
    end
    if seen and now - seen >= RETRY_AFTER then
      db:set(key, "passed", PASSED)
      db:set("net:" .. net, now, PASSED)
      connection:log("info", "greylist: %s passed after %d s", recipient.address, math.floor(now - seen))
      return
    end
    if not seen then
      connection:log("info", "greylist: new triplet for %s", recipient.address)
      if db:add(key, now, PENDING) and TARPIT > 0 then smtp.sleep(TARPIT) end
    end
    recipient.valid = false
    recipient.code = 450
    recipient.message = "4.7.1 Greylisted, please try again later"
  end)
end)

server.decisionTimeout = TARPIT + 60
server:listen(2525, "127.0.0.1")
