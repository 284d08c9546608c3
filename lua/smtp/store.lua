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
local M = {}

local DEFAULT_MAX_SIZE = 64 * 1024 * 1024
local KEY_MAX, VALUE_MAX = 511, 65536	-- as lua_store.c
local SWEEP_EVERY, SWEEP_KEYS = 1, 1000	-- seconds between sweeps, keys looked at per sweep
local RECORD_OVERHEAD = 64	-- octets a memory entry counts beyond key and value

local OPTS = { maxSize = true, sync = true }

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

local function check_ttl(self, ttl)
  if ttl ~= nil and (type(ttl) ~= "number" or not (ttl > 0 and ttl <= 100 * 365 * 86400)) then
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
function Store:get(key)
  check_key(self, key)
  return self:_backend():get(key, self.now())
end

-- db:set(key, value[, ttl])
function Store:set(key, value, ttl)
  check_key(self, key) ; check_value(self, value) ; check_ttl(self, ttl)
  self:_backend():set(key, value, ttl, self.now(), false)
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

-- M.new(platform, core) -> the smtp.store table.  Its _ready(stateDir) is
-- called once the script has loaded (smtp._policy); it returns nil, err if
-- a store cannot be opened.
function M.new(platform, core)
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
      local ok, err = pcall(b.sweep, b, now(), SWEEP_KEYS)
      if ok and not db.sync then ok, err = pcall(b.flush, b) end
      if not ok then core.log("warn", nil, ("store sweep failed: %s"):format(err)) end
    end
    platform.timer(SWEEP_EVERY, sweep_all)
  end

  local sweeping = false

  -- opens db for real (nil, err if it cannot)
  local function activate(db)
    if mode ~= "memory" then
      local ok, err = mkdir_p(core, dir)
      if not ok then return nil, ("store %s: state directory %s: %s"):format(db.name, dir, err) end
    end
    if mode == "serve" then
      local ok, b = pcall(open_file, db)
      if not ok then return nil, b end
      db.backend = b
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
    for k in pairs(opts) do
      if k == "redis" then
        error("store.open: the Redis backend is not available in this version", 2)
      end
      if not OPTS[k] then error(("store.open: unknown option %s"):format(tostring(k)), 2) end
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
      sync = opts.sync ~= false }, Store)
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
