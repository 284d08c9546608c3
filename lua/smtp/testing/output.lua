-- smtp.testing.output -- what the harness reads back from the engine.
--
-- Owns the captured log lines (every line logged since the process began
-- capturing, which a harness and its sessions read from their own start)
-- and the replies: parsed into { code, enhanced, lines, text, raw }, and
-- matched against a spec (a code, a prefix of the first line, or a table).

local core = require "smtp_core"

local M = {}

-- ---- captured log lines ----------------------------------------------------

local log_lines = {}

local function take_logs()
  for _, line in ipairs(core.log_take()) do log_lines[#log_lines + 1] = line end
end

-- ---- replies -----------------------------------------------------------------

local Reply = {}
Reply.__index = Reply
Reply.__tostring = function(r) return table.concat(r.raw, "\n") end

local function make_reply(raw)
  local code = tonumber(raw[1]:sub(1, 3))
  local enhanced = raw[1]:match("^%d%d%d[ -](%d%.%d%d?%d?%.%d%d?%d?)%f[%s%z]")
  local lines = {}
  for i, l in ipairs(raw) do
    local text = l:sub(5)
    if enhanced then text = text:gsub("^%d%.%d+%.%d+ ?", "", 1) end
    lines[i] = text
  end
  return setmetatable({ code = code, enhanced = enhanced, lines = lines,
    text = table.concat(lines, "\n"), raw = raw }, Reply)
end

local function describe(spec)
  if type(spec) == "table" then
    local parts = {}
    for _, k in ipairs { "code", "enhanced", "text" } do
      if spec[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(spec[k]) end
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return string.format("%q", tostring(spec))
end

-- spec: a code (250), a prefix of the first line ("451 4.3.0 "), or a table
-- { code = , enhanced = , text = <Lua pattern over the text> }
local function matches(r, spec)
  if type(spec) == "number" then return r.code == spec end
  if type(spec) == "string" then return r.raw[1]:sub(1, #spec) == spec end
  if type(spec) == "table" then
    if spec.code and r.code ~= spec.code then return false end
    if spec.enhanced and r.enhanced ~= spec.enhanced then return false end
    if spec.text and not r.text:find(spec.text) then return false end
    return true
  end
  error("expect: a code, a prefix string or a table expected", 3)
end

M.log_lines, M.take_logs = log_lines, take_logs
M.make_reply, M.describe, M.matches = make_reply, describe, matches
return M
