-- `luasmtpd --check` on every script, and the one-line error of a broken one.
-- Needs the binary ($LUASMTPD_BUILD/luasmtpd, default build/luasmtpd).
local build = os.getenv("LUASMTPD_BUILD") or "build"
local bin = os.getenv("LUASMTPD_BIN") or build .. "/luasmtpd"

local function run(args)
  local out = os.tmpname()
  local ok, _, code = os.execute(("timeout 20 %s %s >%s 2>&1 </dev/null"):format(bin, args, out))
  local f = assert(io.open(out, "rb"))
  local text = f:read("a")
  f:close()
  os.remove(out)
  return ok and 0 or code, text
end

local function script(text)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local have_bin = io.open(bin, "rb")
if have_bin then have_bin:close() end

describe("luasmtpd --check", function()
  if not have_bin then
    pending("no binary at " .. bin .. " (build first)")
    return
  end

  for _, name in ipairs { "console", "policy", "maildir", "greylist" } do
    it("accepts scripts/" .. name .. ".lua", function()
      local code, out = run("--check scripts/" .. name .. ".lua")
      assert.equal(0, code, out)
      assert.matches("scripts/" .. name .. ".lua: OK", out, 1, true)
    end)
  end

  it("names the file and line of a bad option, and fails", function()
    local path = script("local smtp = require 'smtp'\nlocal s = smtp.createServer()\ns.maxSize = 'big'\n")
    local code, out = run("--check " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches(path .. ":3: server.maxSize must be an integer >= 0", out, 1, true)
  end)

  it("names the file and line of a syntax error", function()
    local path = script("local smtp = require 'smtp'\nlocal = 1\n")
    local code, out = run("--check " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches(path .. ":2:", out, 1, true)
  end)

  it("refuses precompiled bytecode", function()
    local path = os.tmpname() .. ".luac"
    assert(os.execute("luac5.4 -o " .. path .. " scripts/policy.lua 2>/dev/null || "
      .. "lua5.4 -e \"local f=io.open('" .. path .. "','wb') f:write(string.dump(loadfile('scripts/policy.lua'))) f:close()\""))
    local code, out = run("--check " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches("attempt to load a binary chunk", out, 1, true)
  end)

  it("says when the script made no server", function()
    local path = script("local x = 1\n")
    local code, out = run("--check " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches("the script did not call smtp.createServer", out, 1, true)
  end)

  it("stops a script whose top level never ends, naming the line", function()
    local path = script("local smtp = require 'smtp'\nsmtp.createServer()\nwhile true do pcall(function() while true do end end) end\n")
    local code, out = run("--check " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches(path .. ":3: the script ran over", out, 1, true)
  end)

  it("fails the same way without --check", function()
    local path = script("error('at load')\n")
    local code, out = run("--listen 127.0.0.1:0 " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches(path .. ":1: at load", out, 1, true)
  end)
end)
