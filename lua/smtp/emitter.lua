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

-- names: { NAME = "CANONICAL", ... } (aliases map to their canonical name);
-- on_change(emitter) is called after every registration change.
function Emitter.new(names, on_change)
  return setmetatable({ _names = names, _listeners = {}, _on_change = on_change }, Emitter)
end

-- Turns an emitter into the base of a class: obj = Emitter.init(obj, names).
function Emitter.init(obj, names, on_change)
  rawset(obj, "_names", names)
  rawset(obj, "_listeners", {})
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

local function add(self, name, fn, once)
  local canon = Emitter.canonical(self, name, 3)
  check_fn(fn, 3)
  local list = self._listeners[canon]
  if not list then list = {} ; self._listeners[canon] = list end
  list[#list + 1] = { fn = fn, once = once }
  list.fns = nil		-- the cached take() result is stale
  if once then list.once = true end
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
  local list = self._listeners[canon]
  if list then
    if fn == nil then
      self._listeners[canon] = nil
    else
      for i = #list, 1, -1 do
        if list[i].fn == fn then table.remove(list, i) end
      end
      list.fns = nil
      if #list == 0 then self._listeners[canon] = nil end
    end
  end
  if self._on_change then self._on_change(self, canon) end
  return self
end

-- obj:listeners(name) -> { fn, ... } (a copy)
function Emitter.listeners(self, name)
  local canon = Emitter.canonical(self, name, 2)
  local out = {}
  for i, l in ipairs(self._listeners[canon] or {}) do out[i] = l.fn end
  return out
end

function Emitter.has_listeners(self, canon)
  local list = self._listeners[canon]
  return list ~= nil and #list > 0
end

local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- Takes the listeners due for one emit (removing the 'once' ones) -> { fn, ... }
-- The result is read-only: without 'once' listeners it is a cached array,
-- replaced (never changed in place) when the listeners change.
function Emitter.take(self, canon)
  local list = self._listeners[canon]
  if not list then return EMPTY end
  if not list.once then
    local fns = list.fns
    if not fns then
      fns = {}
      for i = 1, #list do fns[i] = list[i].fn end
      list.fns = fns
    end
    return fns
  end
  local fns, keep, changed = {}, {}, false
  for _, l in ipairs(list) do
    fns[#fns + 1] = l.fn
    if l.once then changed = true else keep[#keep + 1] = l end
  end
  if not changed then list.once = nil end
  if changed then
    self._listeners[canon] = #keep > 0 and keep or nil
    if self._on_change then self._on_change(self, canon) end
  end
  return fns
end

return Emitter
