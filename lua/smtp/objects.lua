-- smtp.objects -- the event objects' metatables: a field typo raises.
--
-- Owns strict() (the __newindex of every kind of event object, which names
-- the nearest field on a typo), the address objects' metatables (sender,
-- recipient: the bridge's converter sets them, lua_bridge.c) and those of
-- the HELO/EHLO, AUTH, RSET, QUIT, VRFY and EXPN objects.  No state: shared
-- by every instance.

local rawset = rawset

local M = {}

--
-- A typo in a decision field (recipient.vaild = false) would be a new field
-- nobody reads: the recipient accepted.  So each kind of event object has a
-- metatable whose __newindex takes only that kind's field names and raises
-- on any other, naming the nearest one.  A field already set is assigned
-- raw, without the metamethod (valid = false costs nothing); a field still
-- nil (code, message) costs one call.  The library's own writes to fields
-- that may be nil use rawset.  User data goes in a data table
-- (connection.data, sender.data, recipient.data).

-- edit distance, a transposition counting one (optimal string alignment)
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    for j = 1, lb do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

-- the field name k was probably meant to be, or nil
local function nearest(k, names)
  if type(k) ~= "string" then return nil end
  local lk, best, bd = k:lower(), nil, math.huge
  for _, name in ipairs(names) do
    local d = distance(lk, name:lower())
    if d < bd then best, bd = name, d end
  end
  if bd <= (#k <= 4 and 1 or 2) then return best end
end

-- A __newindex for an event object of this kind: names are its fields (the
-- user's), internal the library's own; readonly names fields read through
-- __index (connection.user); class, its methods.
local function strict(kind, names, opts)
  opts = opts or {}
  local allowed = {}
  for _, n in ipairs(names) do allowed[n] = true end
  for _, n in ipairs(opts.internal or {}) do allowed[n] = true end
  local sorted = table.move(names, 1, #names, 1, {})
  table.sort(sorted)
  local data_hint = opts.hint or allowed.data and kind .. ".data" or "connection.data"
  return function(t, k, v)
    if allowed[k] then
      rawset(t, k, v)
      return
    end
    local what = type(k) == "string" and "'" .. k .. "'" or tostring(k)
    if opts.readonly and opts.readonly[k] then
      error(string.format("%s.%s is read-only", kind, k), 2)
    end
    if opts.class and type(opts.class[k]) == "function" then
      error(string.format("%s is a method of %s, not a field", what, kind), 2)
    end
    local near = nearest(k, sorted)
    if near then
      error(string.format("no field %s on %s (did you mean '%s'?)", what, kind, near), 2)
    end
    error(string.format("no field %s on %s (its fields: %s; your own data goes in %s)",
      what, kind, table.concat(sorted, ", "), data_hint), 2)
  end
end

local DECISION = { "valid", "code", "message" }
local function fields(...)
  local out = table.move(DECISION, 1, #DECISION, 1, {})
  for _, n in ipairs { ... } do out[#out + 1] = n end
  return out
end

-- Address objects print as their address (the seed's "'From ' + message.sender").
-- The engine's come without params when there are none: an empty table is
-- made when it is first read, and so is data (the user's).
local function address_meta(kind)
  return {
    __index = function(a, k)
      if k == "params" or k == "data" then
        local p = {}
        rawset(a, k, p)
        return p
      end
    end,
    __newindex = strict(kind, fields("address", "localPart", "domain", "params", "utf8", "data")),
    __tostring = function(a) return a.address end,
    __concat = function(a, b)
      local function s(x) return type(x) == "table" and x.address or x end
      return s(a) .. s(b)
    end,
  }
end
local SenderMeta, RecipientMeta = address_meta("sender"), address_meta("recipient")

local function event_meta(kind, ...)
  return { __newindex = strict(kind, fields(...)) }
end
local HeloMeta = event_meta("HELO object", "name", "extended")
local AuthMeta = event_meta("AUTH object", "method", "username", "password", "authzid")
local EventMeta = {
  RSET = event_meta("RSET object"), QUIT = event_meta("QUIT object"),
  VRFY = event_meta("VRFY object", "argument"), EXPN = event_meta("EXPN object", "argument"),
}

M.strict, M.fields = strict, fields
M.SenderMeta, M.RecipientMeta = SenderMeta, RecipientMeta
M.HeloMeta, M.AuthMeta, M.EventMeta = HeloMeta, AuthMeta, EventMeta
return M
