-- spec/e2e/tcp_spec.lua -- smtp.tcp in the real server (lua_tcp.c), against
-- real peers on loopback (spec/e2e/tcp_peers.py, started here, stopped by
-- PID): scripts/policyd.lua against a policy delegation service stand-in
-- (answers, a service that never answers, a service that is gone);
-- STARTTLS and implicit TLS against a Python ssl server with a certificate
-- made here (verified against it as cafile, refused by default as
-- self-signed, refused for another name, taken with verify = false); bounded
-- reads against a flood; and the worker's open files the same before and
-- after a thousand connects and receives that time out.
local support = require "spec.e2e.support"
local shquote = support.shquote

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end

local ROOT = assert(io.popen("pwd")):read("l")

-- starts tcp_peers.py MODE in dir; returns its pid and port
local function peer_start(dir, mode, ...)
	local portfile = dir .. "/" .. mode .. ".port"
	local args = {}
	for _, a in ipairs { ... } do args[#args + 1] = shquote(a) end
	local cmd = ("exec python3 %s %s %s %s >>%s 2>&1 </dev/null"):format(
		shquote(ROOT .. "/spec/e2e/tcp_peers.py"), mode, shquote(portfile), table.concat(args, " "),
		shquote(dir .. "/" .. mode .. ".err"))
	local h = assert(io.popen("sh -c " .. shquote(cmd .. " & echo $!")))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start tcp_peers.py " .. mode)
	local port = support.wait_until(function()
		if not alive(pid) then
			error("tcp_peers.py " .. mode .. " exited:\n" .. (support.slurp(dir .. "/" .. mode .. ".err") or ""), 0)
		end
		local t = support.slurp(portfile)
		return t and tonumber(t:match("^(%d+)\n"))
	end, 60, "tcp_peers.py " .. mode .. " to listen")
	return pid, port
end

local function peer_stop(pid)
	if not pid or not alive(pid) then return end
	os.execute(("kill -TERM %d"):format(pid))
	local ok = pcall(support.wait_until, function() return not alive(pid) end, 10, "a peer to exit")
	if not ok then os.execute(("kill -KILL %d"):format(pid)) end
end

-- one session up to RCPT TO:<to>: the RCPT reply's text.  It ends with QUIT
-- and the server's EOF: then the worker holds no descriptor for it.
local function rcpt(server, to)
	local c = support.connect(server)
	c.tcp:settimeout(60)	-- a wave takes a while on a loaded machine
	c:expect("^220 ")
	c:cmd("EHLO client.example", "^250")
	c:cmd("MAIL FROM:<a@client.example>", "^250")
	local r = c:cmd("RCPT TO:<" .. to .. ">", "^%d")
	c:quit()
	return r.text
end

describe("e2e: scripts/policyd.lua against a policy delegation service", function()
	local dir, pid, server
	local PRELUDE = [==[
local getenv = os.getenv
os.getenv = function(k)
	if k == "POLICYD_ADDRESS" then return "127.0.0.1:@PORT@" end
	if k == "POLICYD_TIMEOUT" then return "1" end
	return getenv(k)
end
dofile(@SCRIPT@)
]==]

	lazy_setup(function()
		dir = support.tmpdir()
		local port
		pid, port = peer_start(dir, "policy")
		server = support.start { policy = PRELUDE:gsub("@PORT@", tostring(port))
			:gsub("@SCRIPT@", function() return ("%q"):format(ROOT .. "/scripts/policyd.lua") end) }
	end)
	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		peer_stop(pid)
		if dir then os.execute("rm -rf " .. shquote(dir)) end
	end)

	it("maps the service's answers", function()
		assert.matches("^250 ", rcpt(server, "bob@dest.example"))
		assert.matches("^550 5%.7%.1 Not here", rcpt(server, "reject-me@dest.example"))
		assert.matches("^450 4%.7%.1 Try later", rcpt(server, "defer-me@dest.example"))
		assert.matches("^554 5%.7%.1 Go away", rcpt(server, "code-me@dest.example"))
		local log = support.slurp(dir .. "/policy.port.log")
		assert.matches("'request': 'smtpd_access_policy'", log)
		assert.matches("'client_address': '127.0.0.1'", log)
		assert.matches("'helo_name': 'client.example'", log)
		assert.matches("'recipient': 'reject%-me@dest.example'", log)
	end)

	it("answers 451 when the service does not answer in time, and when it is gone", function()
		assert.matches("^451 4%.3%.5 Policy service unavailable", rcpt(server, "hold-me@dest.example"))
		server:await_log("policyd 127%.0%.0%.1:%d+: timeout %(tempfail%)", 30)
		peer_stop(pid)
		assert.matches("^451 4%.3%.5 Policy service unavailable", rcpt(server, "bob@dest.example"))
		server:await_log("policyd 127%.0%.0%.1:%d+: connection refused", 30)
	end)
end)

describe("e2e: smtp.tcp", function()
	local dir, pids, ports, server = nil, {}, {}, nil
	local POLICY = [==[
local smtp = require "smtp"
local P = { starttls = @starttls@, tls = @tls@, silent = @silent@, full = @full@, flood = @flood@ }
local CERT = @CERT@
local tcp = smtp.tcp

local function echo_after_starttls(name, opts)
	local s, err = tcp.connect("127.0.0.1", P.starttls, opts)
	if not s then return err end
	local g1 = s:receive()
	s:send("STARTTLS\r\n")
	local g2 = s:receive()
	local ok, terr = s:starttls(name)
	if not ok then return terr end
	s:send("hello\r\n")
	return g1 .. "/" .. g2 .. "/" .. tostring(s:receive())
end

-- n connects and receives at once, each in its own timer task, to peers
-- that never answer (silent) or never accept (full): the errors counted
local function wave(n)
	local counts, left = {}, n
	for i = 1, n do
		smtp.setTimeout(function()
			local s, err = tcp.connect("127.0.0.1", i % 2 == 0 and P.silent or P.full, { timeout = 0.3 })
			if s then
				local _, rerr = s:receive()
				err = rerr
			end
			counts[err] = (counts[err] or 0) + 1
			left = left - 1
		end, 0)
	end
	while left > 0 do smtp.sleep(0.05) end
	local out = {}
	for k, v in pairs(counts) do out[#out + 1] = k .. "=" .. v end
	table.sort(out)
	return table.concat(out, ",")
end

local scenarios = {
	starttls = function() return echo_after_starttls("localhost", { cafile = CERT }) end,
	default = function() return echo_after_starttls(nil, {}) end,
	mismatch = function() return echo_after_starttls("other.example", { cafile = CERT }) end,
	noverify = function() return echo_after_starttls(nil, { verify = false }) end,
	implicit = function()
		local s, err = tcp.connect("localhost", P.tls, { tls = true, cafile = CERT })
		if not s then return err end
		s:send("implicit\n")
		return s:receive()
	end,
	implicitbad = function()
		local s, err = tcp.connect("127.0.0.1", P.tls, { tls = true, cafile = CERT, servername = "other.example" })
		return tostring(s) .. "," .. err
	end,
	flood = function()
		local a = assert(tcp.connect("127.0.0.1", P.flood, { maxLine = 1000 }))
		local _, e1 = a:receive()
		local b = assert(tcp.connect("127.0.0.1", P.flood, { maxSize = 100000 }))
		local _, e2 = b:receive("*a")
		local c = assert(tcp.connect("127.0.0.1", P.flood, { maxSize = 300000 }))
		local all = c:receive("*a")
		return e1 .. "," .. e2 .. "," .. #all
	end,
	wave = function() return wave(250) end,
	over = function() return wave(300) end,
}

smtp.createServer(function(conn)
	conn:on("RCPT", function(r)
		local f = scenarios[r.localPart]
		if f then r.valid, r.code, r.message = false, 550, "5.7.1 " .. f() end
	end)
end)
]==]

	lazy_setup(function()
		dir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost"
			.. " -keyout %s/key.pem -out %s/cert.pem"):format(shquote(dir), shquote(dir)), 60)
		assert(ok, out)
		for _, mode in ipairs { "starttls", "tls", "silent", "full", "flood" } do
			pids[#pids + 1], ports[mode] = peer_start(dir, mode, dir .. "/cert.pem", dir .. "/key.pem")
		end
		local policy = POLICY:gsub("@(%a+)@", function(k)
			if k == "CERT" then return ("%q"):format(dir .. "/cert.pem") end
			return tostring(ports[k])
		end)
		server = support.start { policy = policy }
	end)
	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		for _, pid in ipairs(pids) do peer_stop(pid) end
		if dir then os.execute("rm -rf " .. shquote(dir)) end
	end)

	it("talks STARTTLS, verified against the given CA, the plaintext after 220 dropped", function()
		assert.equal("550 5.7.1 220 ready/220 go/echo hello", rcpt(server, "starttls@x.example"))
	end)

	it("refuses a self-signed certificate by default and another name's, takes it with verify = false", function()
		assert.matches("^550 5%.7%.1 tls: certificate verify failed: self.signed certificate",
			rcpt(server, "default@x.example"))
		assert.matches("^550 5%.7%.1 tls: certificate verify failed: hostname mismatch",
			rcpt(server, "mismatch@x.example"))
		assert.equal("550 5.7.1 220 ready/220 go/echo hello", rcpt(server, "noverify@x.example"))
	end)

	it("connects with TLS from the start, resolving localhost", function()
		assert.equal("550 5.7.1 echo implicit", rcpt(server, "implicit@x.example"))
		assert.equal("550 5.7.1 nil,tls: certificate verify failed: hostname mismatch",
			rcpt(server, "implicitbad@x.example"))
	end)

	it("bounds a line and *a against a flood", function()
		assert.equal("550 5.7.1 line too long,too large,200000", rcpt(server, "flood@x.example"))
	end)

	it("leaks no descriptor over a thousand timed-out connects and receives", function()
		local worker = assert(server:children()[1], "no worker")
		assert.equal("550 5.7.1 timeout=250", rcpt(server, "wave@x.example"))	-- warms up
		-- every session so far ended with the server's EOF: the worker is idle
		local before = support.fd_count(worker)
		for _ = 1, 4 do
			assert.equal("550 5.7.1 timeout=250", rcpt(server, "wave@x.example"))
		end
		support.await_fd_count(worker, before, "the worker after a thousand timeouts")
		-- 300 at once: server.maxSockets (256 by default) refuses the rest
		assert.equal("550 5.7.1 timeout=256,too many sockets=44", rcpt(server, "over@x.example"))
		support.await_fd_count(worker, before, "the worker after 300 at once")
	end)
end)
