-- smtp.testing.dns -- the fake resolver of smtp.testing (h.dns): records a
-- spec adds, answered on the harness's virtual clock, with delays and
-- failures, so a policy's DNS behaviour is specified without a network.
--
-- Owns platform.dns and platform.dnsbl for the harness: the same calling convention and the
-- same records as lua_dns.c (address, preference/exchange, text/strings,
-- name, data; ttl), the same failures (nil, err, rcode: "nxdomain",
-- "nodata", "servfail", "refused"; a "timeout" never answers, so the
-- lookup's own deadline ends it, as with a silent server).
--   h.dns:add(name, type, value[, ttl])   value by type: A/AAAA an address,
--       MX "10 mx.example" or {preference=, exchange=}, TXT a string or a
--       list of strings, PTR/CNAME/NS a name (PTR: name may be an IP
--       address), TLSA {usage, selector, matchingType, hex}, other types
--       (by number) the raw rdata
--   h.dns:delay(name, seconds)            answers for name come that late
--   h.dns:fail(name, "timeout" | "servfail" | "refused" | "nxdomain")
--   h.dns:clear([name])                   forgets records, delays, failures
--   h.dns.queries                         every lookup asked: "name TYPE"
--   h.dns.negativeTtl                     seconds a name error or no data may be
--                                         cached (the SOA's, RFC 2308); nil: none
local dnsapi = require "smtp.dns"

local TYPES = dnsapi.TYPES
local NAMES = {}
for k, v in pairs(TYPES) do NAMES[v] = k end

local FAILURES = { timeout = true, servfail = "SERVFAIL", refused = "REFUSED", nxdomain = "NXDOMAIN" }
local DEFAULT_TTL = 300

local Fake = {}
Fake.__index = Fake

local M = {}

-- M.new(clock) -> a fake resolver on clock (smtp.testing's Clock)
function M.new(clock)
  return setmetatable({ clock = clock, names = {}, delays = {}, failures = {}, queries = {} }, Fake)
end

local function key(name)
  return (name:lower():gsub("%.$", ""))
end

local function qtype_of(t)
  if math.type(t) == "integer" then return t end
  local n = type(t) == "string" and TYPES[t:upper()]
  if not n then error(("h.dns: unknown record type %s"):format(tostring(t)), 3) end
  return n
end

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- the record lua_dns.c would give for value
local function record(t, value, ttl)
  local r = { ttl = ttl }
  if t == 1 or t == 28 then
    r.address = value
  elseif t == 15 then
    if type(value) == "string" then
      local p, x = value:match("^(%d+)%s+(%S+)$")
      if not p then error("h.dns: an MX is \"preference exchange\"", 3) end
      value = { preference = tonumber(p), exchange = x }
    end
    r.preference, r.exchange = value.preference, (value.exchange:gsub("%.$", ""))
  elseif t == 16 then
    local strings = type(value) == "table" and value or { value }
    r.strings, r.text = strings, table.concat(strings)
  elseif t == 12 or t == 5 or t == 2 then
    r.name = (value:gsub("%.$", ""))
  elseif t == 52 and type(value) == "table" then
    r.data = string.char(value[1] or value.usage, value[2] or value.selector,
      value[3] or value.matchingType) .. unhex(value[4] or value.hex)
  else
    r.data = value
  end
  return r
end

-- h.dns:add(name, type, value[, ttl])
function Fake:add(name, qtype, value, ttl)
  local t = qtype_of(qtype)
  if t == 12 and (name:match("^%d+%.%d+%.%d+%.%d+$") or name:find(":", 1, true)) then
    name = dnsapi.reverse(name) .. (name:find(":", 1, true) and ".ip6.arpa" or ".in-addr.arpa")
  end
  local k = key(name)
  self.names[k] = self.names[k] or {}
  local list = self.names[k][t] or {}
  self.names[k][t] = list
  list[#list + 1] = record(t, value, ttl or DEFAULT_TTL)
  return self
end

-- h.dns:delay(name, seconds)
function Fake:delay(name, seconds)
  assert(type(seconds) == "number" and seconds >= 0, "h.dns:delay: seconds must be a number >= 0")
  self.delays[key(name)] = seconds
  return self
end

-- h.dns:fail(name, how)
function Fake:fail(name, how)
  if not FAILURES[how] then error("h.dns:fail: \"timeout\", \"servfail\", \"refused\" or \"nxdomain\"", 2) end
  self.failures[key(name)] = how
  return self
end

-- h.dns:clear([name])
function Fake:clear(name)
  if name then
    local k = key(name)
    self.names[k], self.delays[k], self.failures[k] = nil, nil, nil
  else
    self.names, self.delays, self.failures = {}, {}, {}
  end
  return self
end

local function copy(list, ttl)
  local out = {}
  for i, r in ipairs(list) do
    local c = {}
    for k, v in pairs(r) do c[k] = v end
    if ttl and ttl < c.ttl then c.ttl = ttl end
    out[i] = c
  end
  return out
end

-- the answer for k and type t: records | nil, err, rcode | "timeout"
function Fake:_answer(k, t)
  local how = self.failures[k]
  if how == "timeout" then return "timeout" end
  if how then return nil, how, FAILURES[how] end
  local rrs = self.names[k]
  if not rrs then return nil, "nxdomain", "NXDOMAIN" end
  if rrs[t] then return copy(rrs[t]) end
  local cname = rrs[5] and rrs[5][1]
  if cname and t ~= 5 then	-- one CNAME followed, as a recursive resolver would
    local target = self.names[key(cname.name)]
    if target and target[t] then return copy(target[t], cname.ttl) end
  end
  return nil, "nodata", "NOERROR"
end

-- platform.dns(name, qtype, opts, fn[, i]) -> true; fn(records | nil, err, rcode,
-- negative ttl | nil, i) at once, or after the name's delay on the clock; never
-- for a timeout
function Fake:_query(name, qtype, _, fn, i)
  -- as lua_dns.c's argument checks
  if #name == 0 or #name > 255 or name:find("\0", 1, true) then error("bad argument #1 to 'dns' (bad name)", 2) end
  self.queries[#self.queries + 1] = name .. " " .. (NAMES[qtype] or tostring(qtype))
  local k = key(name)
  local r, err, rcode = self:_answer(k, qtype)
  if r == "timeout" then return true end
  local neg = (err == "nxdomain" or err == "nodata") and self.negativeTtl or nil
  local delay = self.delays[k]
  if delay and delay > 0 then
    self.clock:timer(delay, function() fn(r, err, rcode, neg, i) end)
  else
    fn(r, err, rcode, neg, i)
  end
  return true
end

-- platform.dnsbl(rev, zones, opts, fn, deadline) -> true: the A lookup of
-- rev.zone for every zone (each asked as platform.dns would, so queries,
-- delays and failures apply), and fn(res | nil, c1 ... cn) once, as
-- lua_dns.c calls it: ci for a zone answered by a name error or no data
-- (2 x negative ttl + 1 if no data; -2 + 1 if no data without a negative
-- ttl), res[i] = { records | false, err | false, rcode | false, neg | false }
-- for any other answer, or "timeout" for none by the deadline
function Fake:_dnsbl(rev, zones, opts, fn, deadline)
  local n = #zones
  if n < 1 or n > 32 then error("bad argument #2 to 'dnsbl' (1 to 32 zones)", 2) end
  local res, codes, left, done, timer = nil, {}, n, false, nil
  local function deliver()
    done = true
    if timer then timer:cancel() end
    for j = 1, n do
      if not codes[j] then
        res = res or {}
        if not res[j] then res[j] = { false, "timeout", false, false } end
        codes[j] = 0
      end
    end
    fn(res, table.unpack(codes, 1, n))
  end
  local function answered(r, err, rcode, neg, j)
    if done then return end
    if r == nil and (err == "nxdomain" or err == "nodata") then
      codes[j] = (neg and 2 * neg or -2) + (err == "nodata" and 1 or 0)
    else
      res = res or {}
      res[j] = { r or false, err or false, rcode or false, neg or false }
      codes[j] = 0
    end
    left = left - 1
    if left == 0 then deliver() end
  end
  for j = 1, n do
    local name = rev .. "." .. zones[j]
    if #name > 254 then
      answered(nil, "bad name", nil, nil, j)
    else
      self:_query(name, 1, opts, answered, j)
    end
  end
  if not done then timer = self.clock:timer(deadline, function() timer = nil ; if not done then deliver() end end) end
  return true
end

return M
