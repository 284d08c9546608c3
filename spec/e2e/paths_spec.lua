-- spec/e2e/paths_spec.lua -- where Lua modules are found: a module next to
-- the script (whatever the working directory), the smtp library never
-- replaced by a file there, and `meson install` (make install) putting the
-- library, smtp_core.so and the binary where lua5.4, busted and the binary
-- itself find them, so a policy's specs run outside this repository.
local support = require "spec.e2e.support"

local shquote = support.shquote
local function output(cmd)
	local p = assert(io.popen(cmd))
	local line = p:read("l")
	p:close()
	return line
end

local build = os.getenv("LUASMTPD_BUILD") or "build"
if build:sub(1, 1) ~= "/" then build = output("pwd") .. "/" .. build end

local POLICY = [[
local smtp = require "smtp"
local util = require "util"		-- next to the script
smtp.createServer(function(connection)
  connection:on("RCPT", function(recipient)
    if util.refused(recipient.address) then recipient.valid = false end
  end)
end):listen(2525, "127.0.0.1")
]]

local UTIL = [[
return { refused = function(a) return a:find("invalid", 1, true) ~= nil end }
]]

local SPEC = [[
local testing = require "smtp.testing"
describe("my_policy.lua", function()
  it("refuses invalid recipients", function()
    local s = testing.load("my_policy.lua"):connect()
    s:expect(220)
    s:send("EHLO client.example"):expect(250)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    s:send("RCPT TO:<invalid@example.org>"):expect(550)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
  end)
end)
]]

-- A fresh directory holding files { name = text }.
local function project(files)
	local dir = support.tmpdir()
	for name, text in pairs(files) do
		local sub = name:match("^(.*)/")
		if sub then os.execute("mkdir -p " .. shquote(dir .. "/" .. sub)) end
		support.spit(dir .. "/" .. name, text)
	end
	return dir
end

describe("e2e: module paths", function()
	local dirs = {}
	local function new_project(files)
		local dir = project(files)
		dirs[#dirs + 1] = dir
		return dir
	end
	teardown(function()
		for _, d in ipairs(dirs) do
			if d:match("^/tmp/luasmtpd%-e2e%.") then os.execute("rm -rf " .. shquote(d)) end
		end
	end)

	it("finds a module next to the script from any working directory", function()
		local dir = new_project { ["my_policy.lua"] = POLICY, ["util.lua"] = UTIL }
		local ok, _, out = support.run(("cd / && %s --check %s")
			:format(shquote(support.binary()), shquote(dir .. "/my_policy.lua")), 30)
		assert.is_true(ok, out)
		assert.matches(dir .. "/my_policy.lua: OK", out, 1, true)
	end)

	it("does not let a file next to the script replace the smtp library", function()
		-- a policy named smtp.lua: require "smtp" is still the library
		local dir = new_project { ["smtp.lua"] = 'require("smtp").createServer():listen(2525)\n' }
		local ok, _, out = support.run(("cd %s && %s --check smtp.lua")
			:format(shquote(dir), shquote(support.binary())), 30)
		assert.is_true(ok, out)
		assert.matches("smtp.lua: OK", out, 1, true)
	end)

	it("make install's layout serves lua5.4, busted and the binary outside the repository", function()
		local dest = new_project {}
		local ok, _, out = support.run(("meson install -C %s --no-rebuild --destdir %s")
			:format(shquote(build), shquote(dest)), 120)
		assert.is_true(ok, out)
		local prefix = output(("meson introspect --buildoptions %s | python3 -c %s")
			:format(shquote(build), shquote("import json,sys;print([o['value'] for o in "
			.. "json.load(sys.stdin) if o['name']=='prefix'][0])")))
		assert.truthy(prefix and prefix:match("^/"), "the build's prefix")
		local top = dest .. prefix
		for _, f in ipairs { "/share/lua/5.4/smtp/init.lua", "/share/lua/5.4/smtp/testing.lua",
			"/lib/lua/5.4/smtp_core.so", "/bin/luasmtpd" } do
			assert.truthy(io.open(top .. f), "installed: " .. prefix .. f)
		end

		-- a policy with its spec in a directory of its own, run by busted there
		local proj = new_project { ["my_policy.lua"] = POLICY, ["util.lua"] = UTIL,
			["spec/my_policy_spec.lua"] = SPEC }
		local env = ("LUA_PATH=%s LUA_CPATH=%s"):format(
			shquote(top .. "/share/lua/5.4/?.lua;" .. top .. "/share/lua/5.4/?/init.lua;;"),
			shquote(top .. "/lib/lua/5.4/?.so;;"))
		ok, _, out = support.run(("cd %s && %s busted spec/my_policy_spec.lua")
			:format(shquote(proj), env), 60)
		assert.is_true(ok, out)
		assert.matches("1 success / 0 failures / 0 errors", out, 1, true)

		-- the installed binary finds the installed library (moved under the destdir)
		ok, _, out = support.run(("cd / && %s --check %s")
			:format(shquote(top .. "/bin/luasmtpd"), shquote(proj .. "/my_policy.lua")), 30)
		assert.is_true(ok, out)
		assert.matches("my_policy.lua: OK", out, 1, true)
		os.execute("rm -rf " .. shquote(top .. "/share/lua/5.4/smtp"))
		ok, _, out = support.run(("cd / && %s --check %s")
			:format(shquote(top .. "/bin/luasmtpd"), shquote(proj .. "/my_policy.lua")), 30)
		assert.is_false(ok)
		assert.matches("module 'smtp' not found", out, 1, true)
	end)
end)
