-- spec/e2e/privileges_spec.lua -- --user and the ready file at start.
--
-- With --user, no Lua runs as root: the script's top level (the validating
-- load, every worker's) runs as that user, while the listening socket is
-- still bound first.  A --ready-file that cannot be written is an error at
-- start, before any worker, not a server that stops once it is ready.
local support = require "spec.e2e.support"

local function is_root()
	local p = io.popen("id -u")
	local uid = p:read("l")
	p:close()
	return uid == "0"
end

-- Every load of the top level leaves DIR/top-<pid> holding `id -u` as it saw it.
local POLICY = [==[
local smtp = require "smtp"
local OUT = @OUT@
local p = io.popen("id -u")
local uid = p:read("l")
p:close()
local pid = io.open("/proc/self/stat"):read("l"):match("^%d+")
local f = assert(io.open(OUT .. "/top-" .. pid, "w"))
f:write(uid)
f:close()
smtp.createServer(function(conn)
	conn:on("HELO", function(h) h.message = "uid " .. uid end)
end):listen(2525)
]==]

local function owner(path)
	local p = io.popen("stat -c %u " .. support.shquote(path))
	local uid = p:read("l")
	p:close()
	return uid
end

describe("e2e: privileges and the ready file", function()
	local server

	after_each(function()
		if server then
			server:stop()
			server:cleanup()
			server = nil
		end
	end)

	local it_root = is_root() and it or pending
	it_root("--user nobody: the script's top level never runs as root", function()
		server = support.start { policy = POLICY, workers = 2, user = "nobody" }
		local c = support.connect(server)
		c:expect("^220 ")
		local r = c:cmd("HELO client.example", "^250 uid %d+")
		c:cmd("QUIT", "^221 ")
		c:close()
		assert.not_equal("250 uid 0", r.text)

		-- the validating load and both workers: three runs of the top level
		local tops = server:files("^top%-%d+$")
		assert.is_true(#tops >= 3, "top-level runs: " .. #tops .. "\n" .. server:stderr())
		for _, name in ipairs(tops) do
			local uid = server:read(name)
			assert.not_equal("0", uid, name .. " ran as root")
			assert.not_equal("0", owner(server.dir .. "/" .. name), name .. " was created by root")
		end
		assert.equal(owner(server.dir .. "/ready"), server:read(tops[1]), "the ready file, as --user")
		assert.matches("running as nobody", server:stderr())
	end)

	it("a --ready-file in a missing directory is an error at start", function()
		local dir = support.tmpdir()
		support.spit(dir .. "/policy.lua", 'require "smtp".createServer():listen(2525)\n')
		local ok, code, out = support.run(("%s --listen 127.0.0.1:0 --workers 2 --ready-file %s %s")
			:format(support.shquote(support.binary()), support.shquote(dir .. "/missing/ready"),
				support.shquote(dir .. "/policy.lua")), 30)
		os.execute("rm -rf " .. support.shquote(dir))
		assert.is_false(ok)
		assert.equal(1, code, out)
		assert.matches("cannot write ready file [^\n]*/missing/ready[^\n]*No such file or directory", out)
		assert.not_matches("starting", out)		-- no worker was started
		assert.not_matches("accepting", out)
	end)

	it_root("--user nobody: a ready file in a directory only root may write is an error at start", function()
		local dir = support.tmpdir()
		os.execute("chmod 755 " .. support.shquote(dir))
		support.spit(dir .. "/policy.lua", 'require "smtp".createServer():listen(2525)\n')
		local ok, code, out = support.run(("%s --user nobody --listen 127.0.0.1:0 --workers 1 --ready-file %s %s")
			:format(support.shquote(support.binary()), support.shquote(dir .. "/ready"),
				support.shquote(dir .. "/policy.lua")), 30)
		os.execute("rm -rf " .. support.shquote(dir))
		assert.is_false(ok)
		assert.equal(1, code, out)
		assert.matches("cannot write ready file [^\n]*Permission denied", out)
		assert.not_matches("accepting", out)
	end)
end)
