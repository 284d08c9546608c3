-- smtp.emitter -- on/once/off/emit with a fixed set of event names.
--
-- The seed's objects are Node EventEmitters; this is the Lua shape of one.
-- An emitter made with a set of names refuses any other name at
-- registration, so a typo ("RCTP") is an error where it is written, not a
-- listener that never runs.  Listeners of one event run in the order they
-- were added; emit() only returns the list (running them is the caller's:
-- smtp runs each handler in its own coroutine).

local Emitter = {}
Emitter.__index = Emitter

local function check_fn(fn, level)
  if type(fn) ~= "function" then
    error("listener must be a function, got " .. type(fn), level + 1)
  end
end

-- Listeners of an event are an array of functions that is never changed in
-- place (a change publishes a new one), so take() hands it out as it is;
-- _once[canon], when set, flags the 'once' ones by position.  An event
-- without listeners has nil or false (a constructor's placeholder).

-- names: { NAME = "CANONICAL", ... } (aliases map to their canonical name);
-- on_change(emitter) is called after every registration change.
function Emitter.new(names, on_change)
  return setmetatable({ _names = names, _listeners = {}, _once = false, _on_change = on_change }, Emitter)
end

-- Turns an emitter into the base of a class: obj = Emitter.init(obj, names).
function Emitter.init(obj, names, on_change)
  rawset(obj, "_names", names)
  rawset(obj, "_listeners", {})
  rawset(obj, "_once", false)
  rawset(obj, "_on_change", on_change)
  return obj
end

function Emitter.canonical(self, name, level)
  local canon = type(name) == "string" and self._names[name]
  if not canon then
    local known = {}
    for k in pairs(self._names) do known[#known + 1] = k end
    table.sort(known)
    for i, k in ipairs(known) do known[i] = string.format("%q", k) end
    error(string.format("unknown event %s (known: %s)", tostring(name),
      table.concat(known, ", ")), (level or 1) + 1)
  end
  return canon
end

-- publishes fns (and their once flags) as canon's listeners
local function publish(self, canon, fns, once)
  local n = #fns
  if once then	-- flags without a 'once' one are no flags
    local any = false
    for i = 1, n do any = any or once[i] end
    if not any then once = nil end
  end
  self._listeners[canon] = n > 0 and fns or nil
  if once or self._once then
    if not self._once then self._once = {} end
    self._once[canon] = n > 0 and once or nil
  end
end

local function add(self, name, fn, once)
  local canon = Emitter.canonical(self, name, 3)
  check_fn(fn, 3)
  local old = self._listeners[canon]
  local flags = self._once and self._once[canon]
  if not old then
    publish(self, canon, { fn }, once and { true } or nil)
  else
    local n = #old
    local fns = table.move(old, 1, n, 1, {})
    fns[n + 1] = fn
    if once or flags then
      local f = {}
      for i = 1, n do f[i] = flags and flags[i] or false end
      f[n + 1] = once
      flags = f
    end
    publish(self, canon, fns, flags)
  end
  if self._on_change then self._on_change(self, canon) end
  return self
end

-- obj:on(name, fn) -> obj
function Emitter.on(self, name, fn)
  local r = add(self, name, fn, false)	-- not a tail call: errors name the caller's line
  return r
end

-- obj:once(name, fn) -> obj: fn runs at the next emit only
function Emitter.once(self, name, fn)
  local r = add(self, name, fn, true)
  return r
end

-- obj:off(name[, fn]) -> obj: removes fn (every registration of it), or all
function Emitter.off(self, name, fn)
  local canon = Emitter.canonical(self, name, 2)
  local old = self._listeners[canon]
  if old then
    if fn == nil then
      publish(self, canon, {}, nil)
    else
      local flags = self._once and self._once[canon]
      local fns, f = {}, flags and {} or nil
      for i = 1, #old do
        if old[i] ~= fn then
          fns[#fns + 1] = old[i]
          if f then f[#fns] = flags[i] end
        end
      end
      publish(self, canon, fns, f)
    end
  end
  if self._on_change then self._on_change(self, canon) end
  return self
end

-- obj:listeners(name) -> { fn, ... } (a copy)
function Emitter.listeners(self, name)
  local canon = Emitter.canonical(self, name, 2)
  local out = {}
  for i, fn in ipairs(self._listeners[canon] or {}) do out[i] = fn end
  return out
end

function Emitter.has_listeners(self, canon)
  local list = self._listeners[canon]
  return list and #list > 0 or false
end

local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- Takes the listeners due for one emit (removing the 'once' ones) -> { fn, ... }
-- The result is read-only: the published array itself, replaced (never
-- changed in place) when the listeners change.
function Emitter.take(self, canon)
  local fns = self._listeners[canon]
  if not fns then return EMPTY end
  local once = self._once
  local flags = once and once[canon]
  if not flags then return fns end
  local keep = {}
  for i = 1, #fns do
    if not flags[i] then keep[#keep + 1] = fns[i] end
  end
  publish(self, canon, keep, nil)
  if self._on_change then self._on_change(self, canon) end
  return fns
end

return Emitter
