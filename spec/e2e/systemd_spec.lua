-- spec/e2e/systemd_spec.lua -- luasmtpd under systemd: the unit files pass
-- systemd-analyze verify, sd_notify speaks systemd's datagram protocol on
-- NOTIFY_SOCKET (READY=1, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on
-- SIGTERM), and socket activation serves the socket systemd passed (fd 3,
-- LISTEN_FDS/LISTEN_PID, from systemd's own systemd-socket-activate) while
-- binding nothing itself.
local socket = require "socket"
local support = require "spec.e2e.support"

local function abspath(p)
	if p:sub(1, 1) == "/" then return p end
	local h = io.popen("pwd")
	local cwd = h:read("l")
	h:close()
	return cwd .. "/" .. p
end

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end

-- Starts a shell command in the background; returns its PID.
local function spawn(cmd)
	local h = assert(io.popen(cmd .. " & echo $!"))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start: " .. cmd)
	return pid
end

local function kill(pid)
	if not pid then return end
	os.execute(("kill %d 2>/dev/null"):format(pid))
	pcall(support.wait_until, function() return not alive(pid) end, 10, "pid " .. pid .. " to exit")
	os.execute(("kill -9 %d 2>/dev/null"):format(pid))
end

-- A datagram socket at path, as systemd's NOTIFY_SOCKET: each message one line in out.
local LISTENER = [[
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as f:
    while True:
        f.write(s.recv(4096).decode().replace("\n", " ") + "\n")
        f.flush()
]]

describe("e2e: systemd", function()
	it("unit files pass systemd-analyze verify", function()
		local dir = support.tmpdir()
		local unit = support.slurp("contrib/luasmtpd.service")
		-- the unit names the installed binary: verify checks that it is executable
		unit = unit:gsub("/usr/local/bin/luasmtpd", abspath(support.binary()))
		support.spit(dir .. "/luasmtpd.service", unit)
		support.spit(dir .. "/luasmtpd.socket", support.slurp("contrib/luasmtpd.socket"))
		-- Documentation=man:luasmtpd(8): the man page of this tree
		os.execute(("mkdir -p %s/man/man8 && cp docs/luasmtpd.8 %s/man/man8/")
			:format(support.shquote(dir), support.shquote(dir)))
		local ok, code, out = support.run(("cd %s && MANPATH=%s/man systemd-analyze verify "
			.. "$(command -v man >/dev/null || echo --man=no) ./luasmtpd.service ./luasmtpd.socket")
			:format(support.shquote(dir), support.shquote(dir)), 60)
		os.execute("rm -rf " .. support.shquote(dir))
		assert(ok, ("systemd-analyze verify failed (%s):\n%s"):format(tostring(code), out))
		assert.equal("", out)
	end)

	for _, workers in ipairs { 1, 0 } do
		describe(("sd_notify (--workers %d)"):format(workers), function()
			local dir, pid, server

			local function messages()
				local t = {}
				for line in (support.slurp(dir .. "/notify") or ""):gmatch("[^\n]+") do t[#t + 1] = line end
				return t
			end
			local function await(n, what)
				support.wait_until(function() return #messages() >= n end, 20, what)
				return messages()[n]
			end

			lazy_setup(function()
				dir = support.tmpdir()
				support.spit(dir .. "/listen.py", LISTENER)
				pid = spawn(("python3 %s %s %s >/dev/null 2>&1 </dev/null"):format(
					support.shquote(dir .. "/listen.py"), support.shquote(dir .. "/sock"),
					support.shquote(dir .. "/notify")))
				support.wait_until(function() return support.slurp(dir .. "/notify") ~= nil or
					os.execute("test -S " .. support.shquote(dir .. "/sock")) == true end, 10,
					"the notify socket")
			end)

			lazy_teardown(function()
				if server then
					server:stop()
					server:cleanup()
				end
				kill(pid)
				if dir then os.execute("rm -rf " .. support.shquote(dir)) end
			end)

			it("says READY=1 once serving" .. (workers > 0 and ", RELOADING=1 and READY=1 around a reload" or "")
				.. ", STOPPING=1 on SIGTERM", function()
				server = support.start { workers = workers, env = { NOTIFY_SOCKET = dir .. "/sock" } }
				assert.matches("^READY=1 STATUS=serving$", await(1, "READY=1"))
				local c = support.connect(server)	-- the ready file, READY=1: accepting
				c:expect("^220 ")
				c:close()
				if workers > 0 then
					server:signal("HUP")
					local reloading = await(2, "RELOADING=1")
					local usec = reloading:match("^RELOADING=1 STATUS=reloading MONOTONIC_USEC=(%d+)$")
					assert(usec, "got " .. reloading)
					assert.matches("^READY=1 STATUS=serving$", await(3, "READY=1 after the reload"))
					server:await_log("reload: generation 2 serving")
				end
				local n = #messages()
				assert.equal(workers > 0 and 3 or 1, n)	-- the workers say nothing
				server:signal("TERM")
				assert.matches("^STOPPING=1", await(n + 1, "STOPPING=1"))
				assert.equal(0, server:wait(20))
				assert.equal(n + 1, #messages())
			end)
		end)
	end

	describe("socket activation", function()
		local dir, pid

		lazy_teardown(function()
			kill(pid)
			if dir then os.execute("rm -rf " .. support.shquote(dir)) end
		end)

		it("serves the socket systemd passed and binds nothing itself", function()
			dir = support.tmpdir()
			local passed, unpassed = support.free_port(), support.free_port()
			support.spit(dir .. "/policy.lua", ([[
				local smtp = require "smtp"
				smtp.createServer(function(conn)
					conn:on("EHLO", function(h) h.message = "port " .. conn.localPort end)
				end):listen(%d, "127.0.0.1"):listen(%d, "127.0.0.1")
			]]):format(passed, unpassed))
			-- systemd-socket-activate binds, waits for a first connection, then
			-- execs luasmtpd with the socket as fd 3, LISTEN_FDS=1 and its own pid
			pid = spawn(("systemd-socket-activate -l 127.0.0.1:%d %s --workers 1 --ready-file %s %s "
				.. ">%s 2>%s </dev/null"):format(passed, support.shquote(abspath(support.binary())),
				support.shquote(dir .. "/ready"), support.shquote(dir .. "/policy.lua"),
				support.shquote(dir .. "/stdout"), support.shquote(dir .. "/stderr")))
			local server = { host = "127.0.0.1", stderr = function() return support.slurp(dir .. "/stderr") or "" end }
			support.wait_until(function()
				return (support.slurp(dir .. "/stderr") or ""):match("Listening on 127%.0%.0%.1:%d+")
			end, 10, "systemd-socket-activate to listen")
			-- this connection waits in the socket's queue while luasmtpd starts
			server.port = passed
			local c = support.connect(server)
			c:expect("^220 ")
			c:send("EHLO client.example\r\n")
			c:expect("^250.-port " .. passed)
			c:close()
			local stderr = support.slurp(dir .. "/stderr")
			assert.matches("listening on 127%.0%.0%.1:" .. passed .. " %(socket from systemd%)", stderr)
			assert.matches("127%.0%.0%.1:" .. unpassed .. " is not served: systemd passed no socket", stderr)
			local ready = support.wait_until(function() return support.slurp(dir .. "/ready") end, 10,
				"the ready file")
			assert.equal(("127.0.0.1:%d\n"):format(passed), ready)
			-- nothing bound by luasmtpd itself
			local t = socket.tcp()
			t:settimeout(2)
			assert.is_nil(t:connect("127.0.0.1", unpassed))
			t:close()
			-- the PID systemd-socket-activate had is luasmtpd's: it stops cleanly
			os.execute(("kill -TERM %d"):format(pid))
			support.wait_until(function() return not alive(pid) end, 20, "luasmtpd to stop")
			pid = nil
			assert.matches("stopped", support.slurp(dir .. "/stderr"))
		end)
	end)
end)
