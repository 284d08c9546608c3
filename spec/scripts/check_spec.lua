-- `luasmtpd --check` on every script, and the one-line error of a broken one.
-- Needs the binary ($LUASMTPD_BUILD/luasmtpd, default build/luasmtpd).
local build = os.getenv("LUASMTPD_BUILD") or "build"
local bin = os.getenv("LUASMTPD_BIN") or build .. "/luasmtpd"

-- Every file a test writes goes into one directory, removed at the end
-- (os.tmpname() creates the file it names: a name made from it would leave
-- that one behind).
local dir, seq = nil, 0

local function tmpfile(ext)
  if not dir then
    local p = assert(io.popen("mktemp -d /tmp/luasmtpd-check.XXXXXX"))
    dir = p:read("l")
    p:close()
    assert(dir and dir:match("^/tmp/luasmtpd%-check%."), "mktemp failed")
  end
  seq = seq + 1
  return ("%s/%d%s"):format(dir, seq, ext or "")
end

local function run(args)
  local out = tmpfile(".out")
  local ok, _, code = os.execute(("timeout 20 %s %s >%s 2>&1 </dev/null"):format(bin, args, out))
  local f = assert(io.open(out, "rb"))
  local text = f:read("a")
  f:close()
  os.remove(out)
  return ok and 0 or code, text
end

local function script(text)
  local path = tmpfile(".lua")
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local have_bin = io.open(bin, "rb")
if have_bin then have_bin:close() end

describe("luasmtpd --check", function()
  if not have_bin then
    pending("no binary at " .. bin .. " (build first)")
    return
  end

  teardown(function()
    if dir then os.execute("rm -rf " .. dir) end
  end)

  for _, name in ipairs { "console", "policy", "maildir", "greylist" } do
    it("accepts scripts/" .. name .. ".lua", function()
      -- (a store's file is opened and closed: in a temp dir, not ./state)
      local code, out = run("--state-dir " .. tmpfile(".state") .. " --check scripts/" .. name .. ".lua")
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
    local path = tmpfile(".luac")
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

  it("runs the connection listener once: an unknown event there fails, naming the file and line", function()
    local path = script("local smtp = require 'smtp'\nsmtp.createServer(function(connection)\n"
      .. "  connection:on('MAIL', function() end)\n  connection:on('RCTP', function() end)\nend)\n")
    local code, out = run("--check " .. path)
    assert.equal(1, code, out)
    assert.matches("luasmtpd: " .. path .. ":4: unknown event RCTP", out, 1, true)
    assert.matches("in a 'connection' listener", out, 1, true)
    -- and the server refuses to start with it
    code, out = run("--listen 127.0.0.1:0 " .. path)
    assert.equal(1, code, out)
    assert.matches(path .. ":4: unknown event RCTP", out, 1, true)
  end)

  it("names the script when the connection listener fails without a line (its budget)", function()
    local path = script("require('smtp').createServer(function() while true do end end)\n")
    local code, out = run("--check " .. path)
    assert.equal(1, code, out)
    assert.matches("luasmtpd: " .. path .. ": handler exceeded its instruction budget", out, 1, true)
  end)

  it("runs only the connection listener: no other handler, no timer; a wait ends the check", function()
    local ran, helo, timer, late = tmpfile(".ran"), tmpfile(".helo"), tmpfile(".timer"), tmpfile(".late")
    local function touch(p) return ("io.open(%q, 'w'):close()"):format(p) end
    local path = script(table.concat({
      "local smtp = require 'smtp'",
      "smtp.createServer(function(connection)",
      "  " .. touch(ran),
      "  connection:on('HELO', function() " .. touch(helo) .. " end)",
      "  connection:on('close', function() " .. touch(helo) .. " end)",
      "  smtp.setTimeout(function() " .. touch(timer) .. " end, 0)",
      "  smtp.sleep(0)",
      "  " .. touch(late),
      "end):listen(2525, '127.0.0.1')",
    }, "\n"))
    local code, out = run("--check " .. path)
    assert.equal(0, code, out)
    assert.matches(path .. ": OK", out, 1, true)
    assert.is_true(exists(ran), "the connection listener ran")
    assert.is_false(exists(helo), "a HELO or close listener ran")
    assert.is_false(exists(timer), "a timer fired")
    assert.is_false(exists(late), "the listener went on after its wait")
  end)

  it("refuses server.authMethods that could never be offered (no server.tls, no insecureAuth)", function()
    local src = "local s = require('smtp').createServer(function(c)\n"
      .. "  c:on('AUTH', function(a) a.valid = true end)\nend)\ns.authMethods = { 'PLAIN' }\n"
    local path = script(src .. "s:listen(2525, '127.0.0.1')\n")
    local code, out = run("--check " .. path)
    assert.equal(1, code, out)
    assert.matches(path .. ": server.authMethods is set but AUTH could never be offered", out, 1, true)
    -- a listener that allows AUTH before TLS makes it fine
    path = script(src .. "s:listen(2525, '127.0.0.1')\ns:listen(2587, '127.0.0.1', { insecureAuth = true })\n")
    code, out = run("--check " .. path)
    assert.equal(0, code, out)
  end)

  it("fails the same way without --check", function()
    local path = script("error('at load')\n")
    local code, out = run("--listen 127.0.0.1:0 " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches(path .. ":1: at load", out, 1, true)
  end)
end)
