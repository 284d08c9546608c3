-- smtp.store -- smtp.store.open(name[, opts]): key-value stores shared by
-- every worker and kept across reloads and restarts (docs/API.md, "Shared
-- state").
--
-- Owns the API (get, set, add, incr, delete, ttl), its argument checks, the
-- in-memory backend and when each store is really opened.  The LMDB backend
-- is lua_store.c (smtp_store).  The platform says where the script runs
-- (platform.store_mode):
--   "serve"   a luasmtpd worker: each store is an LMDB file in the state
--             directory, opened when the script has loaded (after the fork:
--             an LMDB environment never crosses one) and swept of expired
--             keys by a timer, a bounded number of keys per tick;
--   "check"   a load before the workers start (--check, the master's, a
--             reload's test): the file is opened and closed at once, to
--             report a bad state directory or file before any worker
--             starts; calls go to memory (a simulated client writes nothing);
--   "memory"  smtp.testing (the default): in memory, on the platform's clock.
-- A store opened with opts.redis is on a Redis server in "serve" mode
-- (lua_redis.c's client, platform.redis: each call yields its handler until
-- Redis answers), on the Redis of smtp.testing's opts.redis in "memory" mode
-- when the harness gives one (platform.redis too, a blocking client: a call
-- is answered before it returns) and in memory otherwise: a check never
-- connects.
local M = {}
local type, mtype = type, math.type

local DEFAULT_MAX_SIZE = 64 * 1024 * 1024
local KEY_MAX, VALUE_MAX = 511, 65536	-- as lua_store.c
local SWEEP_EVERY, SWEEP_KEYS = 1, 1000	-- seconds between sweeps, keys looked at per sweep
local RECORD_OVERHEAD = 64	-- octets a memory entry counts beyond key and value

local OPTS = { maxSize = true, sync = true }
local REDIS_OPTS = { redis = true, password = true, db = true, timeout = true }
local REDIS_TIMEOUT = 1	-- seconds Redis has to answer a call

-- ---- the in-memory backend (same semantics as lua_store.c) ---------------

local Memory = {}
Memory.__index = Memory

local function new_memory(name, max_size)
  return setmetatable({ name = name, max = max_size, used = 0, data = {} }, Memory)
end

local function size_of(key, value)
  return #key + (type(value) == "string" and #value or 8) + RECORD_OVERHEAD
end

function Memory:_live(key, now)
  local e = self.data[key]
  if e and e.expiry and e.expiry <= now then
    self.used = self.used - size_of(key, e.value)
    self.data[key] = nil
    return nil
  end
  return e
end

function Memory:_put(key, value, expiry)
  local old = self.data[key]
  local used = self.used - (old and size_of(key, old.value) or 0) + size_of(key, value)
  if used > self.max then
    error(("store %s: full (maxSize is %d octets)"):format(self.name, self.max), 0)
  end
  self.used = used
  self.data[key] = { value = value, expiry = expiry }
end

function Memory:get(key, now)
  local e = self:_live(key, now)
  return e and e.value
end

function Memory:ttl(key, now)
  local e = self:_live(key, now)
  if not e then return nil end
  return e.expiry and e.expiry - now or math.huge
end

function Memory:set(key, value, ttl, now, only_if_absent)
  if only_if_absent and self:_live(key, now) then return false end
  self:_put(key, value, ttl and now + ttl)
  return true
end

function Memory:incr(key, by, ttl, now)
  local e = self:_live(key, now)
  if e and type(e.value) ~= "number" then
    error(("store %s: incr of a value that is not a number"):format(self.name), 0)
  end
  local v = e and e.value + by or by
  self:_put(key, v, e and e.expiry or (ttl and now + ttl))
  return v
end

function Memory:delete(key)
  local e = self.data[key]
  if not e then return false end
  self.used = self.used - size_of(key, e.value)
  self.data[key] = nil
  return true
end

function Memory:flush() end

function Memory:sweep(now, max)
  local removed, seen, k = 0, 0, self.cursor
  if k ~= nil and self.data[k] == nil then k = nil end
  while seen < max do
    local nk = next(self.data, k)
    if nk == nil then k = nil ; break end
    seen = seen + 1
    if self:_live(nk, now) == nil then removed = removed + 1 else k = nk end
  end
  self.cursor = k
  return removed
end

-- ---- the Redis backend ---------------------------------------------------
-- Keys are "NAME:key".  Values are strings as "s:" .. value and numbers as
-- their decimal text (an integer as %d, a float always with a point or an
-- exponent), so INCRBY and INCRBYFLOAT work on them and they come back with
-- their type.  Every call is one command, so it is atomic on the server.
-- A call passes lua_redis.c the store's one wake function and its task, so
-- it allocates no closure; the answer resumes the task with WAKE first (any
-- other resume of it is not the answer, and it waits on).

local Redis = {}
Redis.__index = Redis

-- incr with a ttl, or by a float, or of a value INCRBY refuses (a float,
-- an overflow): INCRBY (INCRBYFLOAT for a float, or a value that is one),
-- then the expiry only on a key this call created, in one script, sent as
-- EVALSHA (EVAL when the server does not have it yet)
local INCR_SCRIPT = [[
local new = redis.call('EXISTS', KEYS[1]) == 0
local r
if ARGV[2] == 'i' then
  r = redis.pcall('INCRBY', KEYS[1], ARGV[1])
  if type(r) == 'table' and r.err then r = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]) end
else
  r = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
end
if new and ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return r
]]
local INCR_SHA = "b5b8d5846c46b5c46dc8eb3746e38196794feeed"	-- SHA-1 of INCR_SCRIPT (store_spec checks it)
M._INCR_SCRIPT, M._INCR_SHA = INCR_SCRIPT, INCR_SHA

local WAKE = {}

local function encode_number(v)
  if math.type(v) == "integer" then return ("%d"):format(v) end
  if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
  local t = ("%.17g"):format(v)
  if t:match("^-?%d+$") then t = t .. ".0" end
  return t
end

local function encode(v)
  if type(v) == "string" then return "s:" .. v end
  return encode_number(v)
end

local function decode(t)
  if t == nil then return nil end
  if t:sub(1, 2) == "s:" then return t:sub(3) end
  if t == "inf" then return math.huge elseif t == "-inf" then return -math.huge end
  local n = tonumber(t)
  if n == nil then return t end	-- written by something else: as it is
  return n
end

local function px(ttl)
  return ("%d"):format(math.max(1, math.floor(ttl * 1000 + 0.5)))
end

local function new_redis(name, client, I)
  local resume = I.resume
  -- lua_redis.c calls it with the task and its generation at the call
  local function wake(task, gen, ok, v, rerr)
    if task.gen == gen and not task.dead and not task.dropped then
      resume(task, nil, WAKE, ok, v, rerr)
    end
  end
  return setmetatable({ name = name, client = client, I = I, prefix = name .. ":",
    wake = wake }, Redis)
end

-- sends one command and waits for it: true, reply | false, err (no answer)
-- | false, Redis's error, true (an error reply); level: the API's caller
local function send(self, level, ...)
  local task = self.I.current_task()
  if not task then
    error(("store %s: a Redis store waits for Redis, so it is used from handlers and 'start' "
      .. "listeners only"):format(self.name), level)
  end
  local client = self.client
  if client.command then return client:command(...) end	-- blocking: smtp.testing's
  local sent, err = client:call(self.wake, task, task.gen, ...)
  if not sent then return false, err end
  local w, ok, v, rerr
  repeat w, ok, v, rerr = coroutine.yield() until w == WAKE
  return ok, v, rerr
end

-- the reply, or nil, err (no answer); an error reply of Redis is a Lua error
local function answer(self, ok, v, rerr)
  if ok then return v, nil end
  if rerr then error(("store %s: redis: %s"):format(self.name, v), 0) end
  return nil, v
end

function Redis:_call(...)
  return answer(self, send(self, 5, ...))
end

function Redis:get(key)
  local v, err = self:_call("GET", self.prefix .. key)
  if err then return nil, err end
  return decode(v)
end

function Redis:set(key, value, ttl, _, only_if_absent)
  local k, v = self.prefix .. key, encode(value)
  local r, err
  if only_if_absent then
    if ttl then r, err = self:_call("SET", k, v, "NX", "PX", px(ttl))
    else r, err = self:_call("SET", k, v, "NX") end
  else
    if ttl then r, err = self:_call("SET", k, v, "PX", px(ttl))
    else r, err = self:_call("SET", k, v) end
  end
  if err then return nil, err end
  return r ~= nil
end

function Redis:incr(key, by, ttl)
  local k = self.prefix .. key
  local integer = math.type(by) == "integer"
  local ok, v, rerr
  if integer and not ttl then	-- the common case: one plain command
    ok, v, rerr = send(self, 4, "INCRBY", k, tostring(by))
    if ok or not rerr then return answer(self, ok, v, rerr) end
  end
  local n, kind, ms = encode_number(by), integer and "i" or "f", ttl and px(ttl) or ""
  ok, v, rerr = send(self, 4, "EVALSHA", INCR_SHA, "1", k, n, kind, ms)
  if not ok and rerr and v:find("^NOSCRIPT") then
    ok, v, rerr = send(self, 4, "EVAL", INCR_SCRIPT, "1", k, n, kind, ms)
  end
  local r, err = answer(self, ok, v, rerr)
  if err then return nil, err end
  if type(r) == "string" then return (tonumber(r) or 0) + 0.0 end
  return r
end

function Redis:delete(key)
  local r, err = self:_call("DEL", self.prefix .. key)
  if err then return nil, err end
  return r > 0
end

function Redis:ttl(key)
  local r, err = self:_call("PTTL", self.prefix .. key)
  if err then return nil, err end
  if r == -2 then return nil elseif r == -1 then return math.huge end
  return r / 1000
end

-- ---- the API ---------------------------------------------------------------

local Store = {}
Store.__index = Store

local function check_key(self, key)
  if type(key) ~= "string" then
    error(("store %s: a key is a string (got %s)"):format(self.name, type(key)), 3)
  end
  if #key == 0 or #key > KEY_MAX then
    error(("store %s: a key is 1 to %d octets (this one has %d)"):format(self.name, KEY_MAX, #key), 3)
  end
end

local function check_value(self, value)
  local t = type(value)
  if t == "number" then
    if value ~= value then error(("store %s: a value cannot be NaN"):format(self.name), 3) end
  elseif t == "string" then
    if #value > VALUE_MAX then
      error(("store %s: a value is at most %d octets (this one has %d)"):format(self.name, VALUE_MAX, #value), 3)
    end
  else
    error(("store %s: a value is a string or a number (got %s)"):format(self.name, t), 3)
  end
end

local TTL_MAX = 100 * 365 * 86400

local function check_ttl(self, ttl)
  if ttl ~= nil and (type(ttl) ~= "number" or not (ttl > 0 and ttl <= TTL_MAX)) then
    error(("store %s: a ttl is a number of seconds > 0 (got %s)"):format(self.name, tostring(ttl)), 3)
  end
end

function Store:_backend()
  local b = self.backend
  if not b then
    error(("store %s: not open yet (a store is used from handlers and 'start' listeners, "
      .. "not while the script loads)"):format(self.name), 3)
  end
  return b
end

-- db:get(key) -> value | nil
-- (the hot path: the checks' functions are called only to raise their error,
-- at the same level; one backend call)
function Store:get(key)
  if type(key) ~= "string" or #key == 0 or #key > KEY_MAX then check_key(self, key) end
  local b = self.backend or self:_backend()
  return b:get(key, self.now())
end

-- db:set(key, value[, ttl]) -> true
function Store:set(key, value, ttl)
  if type(key) ~= "string" or #key == 0 or #key > KEY_MAX then check_key(self, key) end
  local t = type(value)
  if not (t == "string" and #value <= VALUE_MAX or t == "number" and value == value) then
    check_value(self, value)
  end
  if ttl ~= nil and not (type(ttl) == "number" and ttl > 0 and ttl <= TTL_MAX) then
    check_ttl(self, ttl)
  end
  local b = self.backend or self:_backend()
  return b:set(key, value, ttl, self.now(), false)
end

-- db:add(key, value[, ttl]) -> true | false (the key is there)
function Store:add(key, value, ttl)
  check_key(self, key) ; check_value(self, value) ; check_ttl(self, ttl)
  return self:_backend():set(key, value, ttl, self.now(), true)
end

-- db:incr(key[, by][, ttl]) -> the new value (ttl: for a key it creates)
function Store:incr(key, by, ttl)
  check_key(self, key)
  if by == nil then by = 1 end
  if type(by) ~= "number" or by ~= by then
    error(("store %s: incr by a number (got %s)"):format(self.name, type(by)), 2)
  end
  check_ttl(self, ttl)
  return self:_backend():incr(key, by, ttl, self.now())
end

-- db:delete(key) -> true | false (it was not there)
function Store:delete(key)
  check_key(self, key)
  return self:_backend():delete(key)
end

-- db:ttl(key) -> seconds left, math.huge (no expiry), or nil (no such key)
function Store:ttl(key)
  check_key(self, key)
  return self:_backend():ttl(key, self.now())
end

function Store:__tostring() return "store " .. self.name end

-- ---- opening ---------------------------------------------------------------

-- mkdir -p path, each created level 0700
local function mkdir_p(core, path)
  local prefix = path:sub(1, 1) == "/" and "/" or ""
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. part
    local ok, err = core.mkdir(prefix, tonumber("700", 8))
    if not ok then return nil, err end
    prefix = prefix .. "/"
  end
  return true
end

-- opts.redis "host[:port]" ("[v6]:port"), .password, .db, .timeout ->
-- {host=, port=, password=, db=, timeout=}; errors at the caller's caller
local function parse_redis(opts)
  local a = opts.redis
  if type(a) ~= "string" then error("store.open: redis is \"host:port\" (a string)", 3) end
  local host, port = a:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = a:match("^([^:]+):(%d+)$") end
  if not host and a:match("^[^:%[%]]+$") then host, port = a, "6379" end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 or #host > 255 then
    error(("store.open: redis is \"host:port\" (got %q)"):format(a), 3)
  end
  if opts.password ~= nil and type(opts.password) ~= "string" then
    error("store.open: password is a string", 3)
  end
  local db = opts.db or 0
  if math.type(db) ~= "integer" or db < 0 or db > 1000000 then
    error("store.open: db is an integer >= 0 (a Redis database number)", 3)
  end
  local timeout = opts.timeout or REDIS_TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0 and timeout <= 3600) then
    error("store.open: timeout is a number of seconds > 0 (at most 3600)", 3)
  end
  return { host = host, port = port, password = opts.password, db = db, timeout = timeout }
end

-- M.new(platform, core, I) -> the smtp.store table (I: the instance's tasks).  Its _ready(stateDir) is
-- called once the script has loaded (smtp._policy); it returns nil, err if
-- a store cannot be opened.
function M.new(platform, core, I)
  local mode = platform.store_mode or "memory"
  local now = platform.now or os.time
  local api, stores, ready, dir = {}, {}, false, nil
  local lmdb

  local function open_file(db)
    lmdb = lmdb or require "smtp_store"
    return lmdb.open(dir .. "/" .. db.name .. ".mdb", db.max_size, db.name, not db.sync)
  end

  local function sweep_all()
    for _, db in ipairs(stores) do
      local b = db.backend
      if not b.sweep then goto next end	-- Redis expires its own keys
      local ok, err = pcall(b.sweep, b, now(), SWEEP_KEYS)
      if ok and not db.sync then ok, err = pcall(b.flush, b) end
      if not ok then core.log("warn", nil, ("store sweep failed: %s"):format(err)) end
      ::next::
    end
    platform.timer(SWEEP_EVERY, sweep_all)
  end

  local sweeping = false

  -- opens db for real (nil, err if it cannot)
  local function activate(db)
    if db.redis then
      if (mode == "serve" or mode == "memory") and platform.redis then
        local r = db.redis
        db.backend = new_redis(db.name, platform.redis(r.host, r.port, r.timeout, r.password, r.db), I)
      else
        db.backend = new_memory(db.name, db.max_size)	-- a check, smtp.testing: no connection
      end
      return true
    end
    if mode ~= "memory" then
      local ok, err = mkdir_p(core, dir)
      if not ok then return nil, ("store %s: state directory %s: %s"):format(db.name, dir, err) end
    end
    if mode == "serve" then
      local ok, b = pcall(open_file, db)
      if not ok then return nil, b end
      db.backend = b
      -- the hot calls straight to C, which checks their arguments as Store's do
      db.get, db.set = b:bind(now)
      if not sweeping and platform.timer then
        sweeping = true
        platform.timer(SWEEP_EVERY, sweep_all)
      end
    elseif mode == "check" then
      local ok, b = pcall(open_file, db)
      if not ok then return nil, b end
      b:close()	-- never kept open across the fork that follows
      db.backend = new_memory(db.name, db.max_size)
    else
      db.backend = new_memory(db.name, db.max_size)
    end
    return true
  end

  -- smtp.store.open(name[, opts]) -> db
  function api.open(name, opts)
    if type(name) ~= "string" or not name:match("^[%w_][%w_.-]*$") or #name > 64 then
      error("store.open: a name of 1 to 64 letters, digits, '_', '-' or '.' expected", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then error("store.open: opts must be a table", 2) end
    opts = opts or {}
    local redis = nil
    if opts.redis ~= nil then redis = parse_redis(opts) end
    for k in pairs(opts) do
      if not (redis and REDIS_OPTS or OPTS)[k] then
        if redis and OPTS[k] then
          error(("store.open: %s is an option of the LMDB backend, not of Redis"):format(k), 2)
        end
        if REDIS_OPTS[k] then error(("store.open: %s goes with opts.redis"):format(k), 2) end
        error(("store.open: unknown option %s"):format(tostring(k)), 2)
      end
    end
    local max_size = opts.maxSize or DEFAULT_MAX_SIZE
    if math.type(max_size) ~= "integer" or max_size < 65536 or max_size > 1 << 40 then
      error("store.open: maxSize is an integer from 65536 to 2^40 (octets)", 2)
    end
    if opts.sync ~= nil and type(opts.sync) ~= "boolean" then
      error("store.open: sync is a boolean", 2)
    end
    for _, db in ipairs(stores) do
      if db.name == name then error(("store.open: store %s is already open"):format(name), 2) end
    end
    local db = setmetatable({ name = name, max_size = max_size, now = now,
      sync = opts.sync ~= false, redis = redis }, Store)
    stores[#stores + 1] = db
    if ready then
      local ok, err = activate(db)
      if not ok then error(err, 2) end
    end
    return db
  end

  function api._ready(state_dir)
    if ready then return true end
    ready = true
    dir = platform.state_dir or state_dir or "./state"
    for _, db in ipairs(stores) do
      local ok, err = activate(db)
      if not ok then return nil, err end
    end
    return true
  end

  -- the names of the open stores and their backends (for tests)
  function api._stores() return stores end

  return api
end

return M
