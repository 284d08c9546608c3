-- smtp.dns -- DNS lookups from handlers: smtp.dns.query, .mx, .ptr,
-- .reverse; smtp.dnsbl; connection.hostname (docs/API.md, "DNS").
--
-- Owns the Lua API, its argument checks, the record types by name, the
-- per-worker cache (answers for their smallest TTL, a name error or no
-- data for the SOA's negative TTL, RFC 2308; a bounded number of entries), each lookup's deadline (a platform timer: the same
-- on the virtual clock of smtp.testing), the implicit MX of RFC 5321 5.1,
-- DNSBL names (RFC 5782) and forward-confirmed reverse DNS.  Several
-- lookups may go out at once (a batch: smtp.dnsbl's zones, the implicit
-- MX's A and AAAA) and are waited for together, under one deadline.  The lookups
-- themselves are platform.dns(name, qtype, opts, fn): c-ares in luasmtpd
-- (lua_dns.c), smtp.testing's fake resolver (smtp.testing.dns) in specs;
-- smtp.dnsbl's A lookups go out in one platform.dnsbl call where the
-- platform has it (both do), which answers once for the batch.
-- A lookup yields its handler's coroutine until the answer or the deadline
-- resumes it; other sessions go on.

local M = {}

local TYPES = { A = 1, NS = 2, CNAME = 5, SOA = 6, PTR = 12, MX = 15, TXT = 16,
  AAAA = 28, SRV = 33, TLSA = 52, CAA = 257 }
local NAMES, KEYS = {}, {}	-- type number -> name; -> its cache keys' prefix
for k, v in pairs(TYPES) do NAMES[v], KEYS[v] = k, v .. " " end
local byte, lower = string.byte, string.lower
-- the fields of a lookup (newq) and of a batch of them (lookup)
local NAME <const>, QTYPE <const>, KEY <const>, RECORDS <const> = 1, 2, 3, 4
local ERR <const>, RCODE <const>, NEG <const>, CACHED <const> = 5, 6, 7, 8
local B_TASK <const>, B_GEN <const>, B_LEFT <const>, B_WAITING <const> = 1, 2, 3, 4
local B_TIMER <const>, B_QS <const> = 5, 6

local DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_CACHE = 2, 1, 1000
local MAX_TTL = 86400		-- a cached answer is kept at most this long
local NEG_MAX = 10800		-- and a name error or no data (RFC 2308 5: "one to three hours")
local FCRDNS_NAMES = 10		-- PTR names looked up forward for connection.hostname
M.TYPES = TYPES

-- ---- names -------------------------------------------------------------------

-- the 16 octets of an IPv6 address as 32 hex nibbles, or nil
local function ipv6_nibbles(ip)
  if ip:find("[^%x:%.]") then return nil end
  local head, tail = ip, nil
  local dc = ip:find("::", 1, true)
  if dc then head, tail = ip:sub(1, dc - 1), ip:sub(dc + 2) end
  local function groups(s)
    local g = {}
    if s == "" then return g end
    for part in (s .. ":"):gmatch("([^:]*):") do
      if part:find("%.") then	-- an IPv4 tail
        local a, b, c, d = part:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
        if not a then return nil end
        a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
        if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
        g[#g + 1] = ("%02x%02x"):format(a, b)
        g[#g + 1] = ("%02x%02x"):format(c, d)
      else
        if #part == 0 or #part > 4 then return nil end
        g[#g + 1] = ("%04x"):format(tonumber(part, 16))
      end
    end
    return g
  end
  local h, t = groups(head), {}
  if tail then t = groups(tail) end
  if not h or not t then return nil end
  local missing = 8 - #h - #t
  if (dc and missing < 1) or (not dc and missing ~= 0) then return nil end
  for _ = 1, missing do h[#h + 1] = "0000" end
  for _, g in ipairs(t) do h[#h + 1] = g end
  return table.concat(h)
end

-- dns.reverse(ip) -> "4.3.2.1" (IPv4) or 32 nibbles (IPv6), without a
-- suffix; nil, "bad address"
local function reverse(ip)
  if type(ip) ~= "string" then return nil, "bad address" end
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    if tonumber(a) > 255 or tonumber(b) > 255 or tonumber(c) > 255 or tonumber(d) > 255 then
      return nil, "bad address"
    end
    if (#a > 1 and byte(a) == 48) or (#b > 1 and byte(b) == 48) or (#c > 1 and byte(c) == 48)
        or (#d > 1 and byte(d) == 48) then
      return ("%d.%d.%d.%d"):format(d, c, b, a)	-- leading zeros dropped
    end
    return d .. "." .. c .. "." .. b .. "." .. a
  end
  local hex = ip:find(":", 1, true) and ipv6_nibbles(ip:lower())
  if not hex then return nil, "bad address" end
  return hex:reverse():gsub(".", "%0."):sub(1, -2)
end
M.reverse = reverse

-- an address in one spelling, for comparison
local function canonical(ip)
  if ip:find(":", 1, true) then return ipv6_nibbles(ip:lower()) end
  return ip
end

-- TLSA rdata (RFC 6698 2.1): usage, selector, matchingType, data, hex
local function tlsa(r)
  local d = r.data
  if #d < 3 then return end
  r.usage, r.selector, r.matchingType = d:byte(1), d:byte(2), d:byte(3)
  r.data = d:sub(4)
  r.hex = r.data:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

-- ---- the API -------------------------------------------------------------------

-- M.new(I) -> the smtp.dns table; also sets I.smtp.dnsbl and I.hostname_of
function M.new(I)
  local platform, current_task, resume, smtp = I.platform, I.current_task, I.resume, I.smtp
  local now = platform.now or os.time
  -- the cache: key -> entry, and the keys in the order they were put (a
  -- ring: the oldest is evicted first when full; an entry's seq is its
  -- place, so a key put again or gone leaves a stale place, skipped, and
  -- the ring is rebuilt when stale places make it twice the cache)
  local cache, ncache = {}, 0
  local ring, rhead, rtail = {}, 1, 0
  local api = { TYPES = TYPES, reverse = reverse }

  -- The DNS options of the server, one table while they stay the same:
  -- what platform.dns is told (servers, timeout, tries: lua_dns.c then has
  -- nothing to compare), the deadline of a lookup (timeout x tries) and the
  -- cache's size.
  local NONE = {}
  local conf, c_res, c_timeout, c_retries, c_size
  local function config()
    local s = I.server
    local o = s and rawget(s, "_opts") or NONE
    local res, timeout, retries, size = o.resolvers, o.dnsTimeout, o.dnsRetries, o.dnsCacheSize
    if conf and res == c_res and timeout == c_timeout and retries == c_retries and size == c_size then
      return conf
    end
    c_res, c_timeout, c_retries, c_size = res, timeout, retries, size
    timeout, retries = timeout or DEFAULT_TIMEOUT, retries or DEFAULT_RETRIES
    conf = { servers = res and table.concat(res, ",") or nil, timeout = timeout, tries = retries + 1,
      deadline = timeout * (retries + 1), cache = size or DEFAULT_CACHE }
    return conf
  end

  local function copy(records, left)
    local out = {}
    for i, r in ipairs(records) do
      local c = {}
      for k, v in pairs(r) do c[k] = v end
      c.ttl = left
      out[i] = c
    end
    return out
  end

  -- a cached answer at time t: records | false, err, rcode | nil (not cached)
  local function cache_get(key, t)
    local e = cache[key]
    if not e then return nil end
    local left = e.expires - t
    if left <= 0 then
      cache[key], ncache = nil, ncache - 1
      return nil
    end
    if e.err then return false, e.err, e.rcode end
    return copy(e.records, math.floor(left))
  end

  -- a lookup's cache key: its type and its name in lower case
  local function key_of(q)
    local key = (KEYS[q[QTYPE]] or q[QTYPE] .. " ") .. lower(q[NAME])
    q[KEY] = key
    return key
  end

  -- keeps q's records for their smallest TTL, or a failure (records nil)
  -- for ttl, in a cache of max entries
  local function cache_put(max, q, records, ttl, err, rcode)
    local key = q[KEY] or key_of(q)
    if records then
      ttl = MAX_TTL
      for _, r in ipairs(records) do if r.ttl < ttl then ttl = r.ttl end end
    end
    if ttl <= 0 then return end
    local old = cache[key]
    if old then cache[key], ncache = nil, ncache - 1 end
    while ncache >= max and rhead <= rtail do	-- evict the oldest
      local k = ring[rhead]
      ring[rhead], rhead = nil, rhead + 1
      local e = cache[k]
      if e and e.seq == rhead - 1 then cache[k], ncache = nil, ncache - 1 end
    end
    if rtail - rhead + 1 >= 2 * max + 16 then	-- rebuild: the live places only
      local live, n = {}, 0
      for i = rhead, rtail do
        local k = ring[i]
        local e = cache[k]
        if e and e.seq == i then n = n + 1 ; live[n] = k ; e.seq = n end
      end
      ring, rhead, rtail = live, 1, n
    end
    rtail = rtail + 1
    ring[rtail] = key
    ncache = ncache + 1
    cache[key] = { expires = now() + ttl, records = records and copy(records, ttl),
      err = err, rcode = rcode, seq = rtail }
  end

  -- entries and places in the ring (for the specs)
  function api._cache_size() return ncache, rtail - rhead + 1 end

  -- the answer of q (records or a failure) made final, and kept in a
  -- cache of max entries (0: none)
  local function settle(q, max)
    local records, qtype = q[RECORDS], q[QTYPE]
    if not records then
      local err = q[ERR]
      if max > 0 and q[NEG] and (err == "nxdomain" or err == "nodata") then
        cache_put(max, q, nil, math.min(q[NEG], NEG_MAX), err, q[RCODE] or nil)
      end
      return
    end
    local tname = NAMES[qtype] or qtype
    for i = 1, #records do
      local r = records[i]
      r.type = tname
      if qtype == 52 then tlsa(r) end
    end
    if max > 0 then cache_put(max, q, records) end
  end

  -- A lookup: the name (checked) and type, then its answer: records, or
  -- err and rcode (false when none), neg (the negative TTL of a name
  -- error or no data); key (its cache key) once made, cached when the
  -- answer came from the cache.  An array made whole by its constructor
  -- (indexes NAME... CACHED): no field is added, and no key hashed, as
  -- the answer comes.
  local function newq(name, qtype)
    return { name, qtype, false, false, false, false, false, false }
  end

  -- The handler waiting for a batch b: resumed once every lookup is
  -- answered (or the deadline came), if it still waits for them.
  local function batch_wake(b)
    local task = b[B_TASK]
    if b[B_WAITING] and task.gen == b[B_GEN] and not task.dead and not task.dropped then
      b[B_WAITING] = false
      resume(task, nil)
    end
  end

  -- Looks up every q of qs at once (newq's) and waits for them all, or for
  -- the deadline: each gets records, or err and rcode.  One table, one
  -- function and one timer for the batch: the function takes each answer
  -- (fn(records | nil, err, rcode, neg, i), the i-th lookup's) and, called
  -- by the timer with no i, the deadline.  The cache answers what it can
  -- first (while it holds anything).
  local function lookup(qs, timeout, use_cache, level)
    local task = current_task()
    if not task then
      error("smtp.dns: lookups wait for an answer, so they run in handlers and 'start' "
        .. "listeners only", level + 1)
    end
    local n = #qs
    if not platform.dns then
      -- a check (luasmtpd --check, smtp.check's simulated client): timers
      -- that never fire, and no answer either
      if platform.timer then while true do coroutine.yield() end end
      for i = 1, n do qs[i][ERR] = "no resolver: DNS runs in luasmtpd or smtp.testing" end
      return
    end
    local conf = config()
    -- the batch, the one upvalue of answered: B_TASK... B_QS
    local b = { task, task.gen, 0, false, false, qs }
    local function answered(r, e, c, neg, i)
      local lookups = b[B_QS]
      if i == nil then	-- the deadline
        b[B_TIMER] = false
        for j = 1, #lookups do
          local q = lookups[j]
          if not q[RECORDS] and not q[ERR] then q[ERR] = "timeout" end
        end
        b[B_LEFT] = 0
        return batch_wake(b)
      end
      local q = lookups[i]
      if q[RECORDS] or q[ERR] then return end	-- the deadline came first
      q[RECORDS], q[ERR], q[RCODE], q[NEG] = r or false, e or false, c or false, neg or false
      local left = b[B_LEFT] - 1
      b[B_LEFT] = left
      if left == 0 then batch_wake(b) end
    end
    local t = use_cache and ncache > 0 and now()	-- the cache holds something
    for i = 1, n do
      local q = qs[i]
      local hit, herr, hrcode
      if t then hit, herr, hrcode = cache_get(q[KEY] or key_of(q), t) end
      if hit then
        q[RECORDS], q[CACHED] = hit, true
      elseif hit == false then
        q[ERR], q[RCODE], q[CACHED] = herr, hrcode or false, true
      elseif #q[NAME] > 254 then	-- a DNSBL zone after 64 nibbles, say
        q[ERR] = "bad name"
      else
        b[B_LEFT] = b[B_LEFT] + 1
        local ok, e, c = platform.dns(q[NAME], q[QTYPE], conf, answered, i)
        if not ok then q[ERR], q[RCODE], b[B_LEFT] = e, c or false, b[B_LEFT] - 1 end
      end
    end
    if b[B_LEFT] > 0 then
      b[B_TIMER] = platform.timer(timeout, answered)
      while b[B_LEFT] > 0 do
        b[B_WAITING] = true
        coroutine.yield()
      end
      if b[B_TIMER] then b[B_TIMER]:cancel() end
    end
    local max = use_cache and conf.cache or 0
    for i = 1, n do
      local q = qs[i]
      if not q[CACHED] then settle(q, max) end
    end
  end

  -- one lookup: records | nil, err, rcode
  local function lookup1(name, qtype, timeout, use_cache, level)
    local q = newq(name, qtype)
    lookup({ q }, timeout, use_cache, level + 1)
    if q[RECORDS] then return q[RECORDS] end
    return nil, q[ERR] or nil, q[RCODE] or nil
  end

  local function default_timeout()
    return config().deadline
  end

  local function check_name(name, level)
    if type(name) ~= "string" then error("smtp.dns: a name (string) expected", level + 1) end
    if #name == 0 or #name > 254 or name:find("[%c%s]") then return false end
    return true
  end

  local function qtype_of(t, level)
    if math.type(t) == "integer" and t > 0 and t < 65536 then return t end
    local n = type(t) == "string" and TYPES[t:upper()]
    if not n then error(("smtp.dns: unknown record type %s"):format(tostring(t)), level + 1) end
    return n
  end

  -- smtp.dns.query(name, type[, opts]) -> records | nil, err, rcode
  -- opts.timeout: seconds in all (default dnsTimeout x (dnsRetries + 1));
  -- opts.cache = false: ask even if the answer is cached
  function api.query(name, qtype, opts)
    local t = qtype_of(qtype, 2)
    if opts ~= nil and type(opts) ~= "table" then error("smtp.dns.query: opts must be a table", 2) end
    opts = opts or {}
    local timeout = opts.timeout or default_timeout()
    if type(timeout) ~= "number" or not (timeout > 0 and timeout <= 3600) then
      error("smtp.dns.query: timeout is a number of seconds in (0, 3600]", 2)
    end
    if not check_name(name, 2) then return nil, "bad name" end
    return lookup1(name, t, timeout, opts.cache ~= false, 2)
  end
  local query = api.query

  -- smtp.dns.mx(domain) -> { {preference=, exchange=, ttl=}... } by
  -- preference | nil, err, rcode.  No MX but an address: the domain itself
  -- (RFC 5321 5.1, implicit = true); a null MX (RFC 7505): nil, "null MX".
  function api.mx(domain)
    local recs, err, rcode = query(domain, "MX")
    if recs then
      if #recs == 1 and (recs[1].exchange == "" or recs[1].exchange == ".") then
        return nil, "null MX", "NOERROR"
      end
      table.sort(recs, function(a, b)
        if a.preference ~= b.preference then return a.preference < b.preference end
        return a.exchange < b.exchange
      end)
      return recs
    end
    if err ~= "nodata" then return nil, err, rcode end
    local qa, q6 = newq(domain, 1), newq(domain, 28)
    lookup({ qa, q6 }, default_timeout(), true, 2)
    local a = qa[RECORDS] or q6[RECORDS]
    if not a then return nil, qa[ERR] == "nxdomain" and "nodata" or qa[ERR] or nil, qa[RCODE] or nil end
    return { { preference = 0, exchange = domain, ttl = a[1].ttl, implicit = true, type = "MX" } }
  end

  -- smtp.dns.ptr(ip) -> { "name", ... } | nil, err, rcode
  function api.ptr(ip)
    local r, rerr = reverse(ip)
    if not r then return nil, rerr end
    local suffix = ip:find(":", 1, true) and ".ip6.arpa" or ".in-addr.arpa"
    local recs, err, rcode = query(r .. suffix, "PTR")
    if not recs then return nil, err, rcode end
    local names = {}
    for i, rec in ipairs(recs) do names[i] = rec.name end
    return names
  end

  -- smtp.dnsbl(ip, zones) -> listings, failures.  Every zone at once (one
  -- batch of A lookups, then one of TXT for the zones that list ip).  A
  -- listing: { zone=, codes = {"127.0.0.2", ...}, reason = TXT | nil }; a
  -- failure: { zone=, err=, rcode= } (a timeout, a server failure, or an
  -- answer outside 127.0.0.0/8, which RFC 5782 makes an error).
  -- smtp.dnsbl's A lookups in one platform.dnsbl call (lua_dns.c: the
  -- names made, the answers kept and a name error or no data left out of
  -- Lua; one callback and one timer for the batch): nil when no zone lists
  -- r (its negative answers cached as lookup would), or the lookups as
  -- lookup fills them (the cache answering what it holds, lookup the rest,
  -- when it holds one of the names).
  local DNSBL_MAX = 32
  local function dnsbl_batch(r, zones, n)
    local task = current_task()
    if not task then
      error("smtp.dns: lookups wait for an answer, so they run in handlers and 'start' "
        .. "listeners only", 3)
    end
    local conf = config()
    local max = conf.cache
    local t = ncache > 0 and now()
    if t then	-- the cache answers what it holds, lookup the rest
      local qs, rest, hits = {}, {}, 0
      for j = 1, n do
        local q = newq(r .. "." .. zones[j], 1)
        local hit, herr, hrcode = cache_get(key_of(q), t)
        if hit then
          q[RECORDS], q[CACHED] = hit, true
        elseif hit == false then
          q[ERR], q[RCODE], q[CACHED] = herr, hrcode or false, true
        else
          rest[#rest + 1] = q
        end
        if q[CACHED] then hits = hits + 1 end
        qs[j] = q
      end
      if hits > 0 then
        if rest[1] then lookup(rest, conf.deadline, true, 3) end
        return qs
      end
    end
    local b = { task, task.gen, 1, false }
    local res, codes
    local ok, e = platform.dnsbl(r, zones, conf, function(rs, ...)
      if b[B_LEFT] == 0 then return end
      res = rs
      if rs or max > 0 then codes = { ... } end
      b[B_LEFT] = 0
      batch_wake(b)
    end, conf.deadline)
    local qs = {}
    if not ok then
      for j = 1, n do
        local q = newq(r .. "." .. zones[j], 1)
        q[ERR] = e
        qs[j] = q
      end
      return qs
    end
    while b[B_LEFT] > 0 do
      b[B_WAITING] = true
      coroutine.yield()
    end
    if not codes then return nil end
    for j = 1, n do
      local q = newq(r .. "." .. zones[j], 1)
      local a = res and res[j]
      if a then
        q[RECORDS], q[ERR], q[RCODE], q[NEG] = a[1], a[2], a[3], a[4]
      else
        local c = codes[j]
        local nodata = c % 2 == 1
        q[ERR], q[RCODE] = nodata and "nodata" or "nxdomain", nodata and "NOERROR" or "NXDOMAIN"
        q[NEG] = c >= 0 and c // 2
      end
      settle(q, max)
      qs[j] = q
    end
    if not res then return nil end
    return qs
  end

  local zones_ok, nzones_ok = {}, 0	-- zone names checked already (a policy has a few)
  function smtp.dnsbl(ip, zones)
    if type(zones) ~= "table" then error("smtp.dnsbl: a list of zones expected", 2) end
    local r = reverse(ip)
    local i, z = 1, zones[1]
    while z ~= nil do
      if not zones_ok[z] then
        if type(z) ~= "string" or not check_name(z, 2) then
          error(("smtp.dnsbl: zone %d is not a domain name"):format(i), 2)
        end
        if nzones_ok >= 256 then zones_ok, nzones_ok = {}, 0 end
        zones_ok[z], nzones_ok = true, nzones_ok + 1
      end
      i = i + 1
      z = zones[i]
    end
    if not r then return nil, "bad address" end
    local n = i - 1
    local qs = false
    if platform.dnsbl and n >= 1 and n <= DNSBL_MAX and #zones == n then
      qs = dnsbl_batch(r, zones, n)
      if qs == nil then return {}, {} end	-- listed nowhere: the common case
    end
    if not qs then	-- no platform.dnsbl (luasmtpd --check), too many zones
      qs = {}
      for j = 1, n do qs[j] = newq(r .. "." .. zones[j], 1) end
      lookup(qs, default_timeout(), true, 2)
    end
    local listings, failures, txts, listed = {}, {}, nil, nil
    for j = 1, #qs do
      local q = qs[j]
      local zone = zones[j]
      local records = q[RECORDS]
      if records then
        local codes, bad = {}, nil
        for k = 1, #records do
          local address = records[k].address
          if not address:match("^127%.") then bad = address break end
          codes[#codes + 1] = address
        end
        if bad then
          failures[#failures + 1] = { zone = zone, err = "answer outside 127.0.0.0/8: " .. bad }
        else
          table.sort(codes)
          local l = { zone = zone, codes = codes }
          listings[#listings + 1] = l
          if not txts then txts, listed = {}, {} end
          listed[#listed + 1] = l
          txts[#txts + 1] = newq(q[NAME], 16)
        end
      elseif q[ERR] ~= "nxdomain" and q[ERR] ~= "nodata" then
        failures[#failures + 1] = { zone = zone, err = q[ERR], rcode = q[RCODE] or nil }
      end
    end
    if txts then
      lookup(txts, default_timeout(), true, 2)
      for j = 1, #txts do
        local records = txts[j][RECORDS]
        if records then
          local t = {}
          for k = 1, #records do t[k] = records[k].text end
          listed[j].reason = table.concat(t, " ")
        end
      end
    end
    return listings, failures
  end

  -- connection.hostname: the PTR name of the client whose A or AAAA
  -- records include its address (the first of at most FCRDNS_NAMES), or nil
  function I.hostname_of(conn)
    local known = rawget(conn, "_hostname")
    if known ~= nil then return known or nil end
    local ip = conn.remoteAddress
    local found = false
    local names = ip and api.ptr(ip)
    if names then
      local want, qt = canonical(ip), ip:find(":", 1, true) and "AAAA" or "A"
      for i = 1, math.min(#names, FCRDNS_NAMES) do
        local addrs = query(names[i], qt)
        for _, a in ipairs(addrs or {}) do
          if canonical(a.address) == want then found = names[i] break end
        end
        if found then break end
      end
    end
    rawset(conn, "_hostname", found)
    return found or nil
  end

  return api
end

return M
