-- spec/e2e/support.lua -- the real luasmtpd binary for end-to-end specs.
--
-- Owns: starting build/luasmtpd (or $LUASMTPD_BIN) on 127.0.0.1 port 0 with a
-- policy script written to a fresh temporary directory, waiting for its
-- --ready-file, stopping it by PID (SIGTERM, then SIGKILL after a bound), and
-- a line-oriented SMTP client over luasocket whose failures show the whole
-- transcript and the server's stderr.  Also runs external clients (swaks,
-- curl, python3) with a time bound.  Nothing here listens beyond loopback.
local socket = require "socket"

local support = {}

local IO_TIMEOUT = tonumber(os.getenv("E2E_IO_TIMEOUT") or "") or 10	-- seconds per read
local START_TIMEOUT = 15	-- an ASan build starts slower

local function shquote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
support.shquote = shquote

local function slurp(path)
	local f = io.open(path, "rb")
	if not f then return nil end
	local s = f:read("a")
	f:close()
	return s
end
support.slurp = slurp

local function spit(path, text)
	local f = assert(io.open(path, "wb"))
	assert(f:write(text))
	assert(f:close())
end
support.spit = spit

-- The binary under test: $LUASMTPD_BIN, else $LUASMTPD_BUILD/luasmtpd, else build/luasmtpd.
function support.binary()
	return os.getenv("LUASMTPD_BIN")
		or (os.getenv("LUASMTPD_BUILD") or "build") .. "/luasmtpd"
end

-- A loopback port free right now, for a listener the server binds a moment
-- later (a policy's own listen() beside --listen 127.0.0.1:0).
function support.free_port()
	local s = assert(socket.bind("127.0.0.1", 0))
	local _, port = s:getsockname()
	s:close()
	return tonumber(port)
end

-- The pids pgrep finds for args ("-P PID": children, "-g PGID": a group), sorted.
function support.pids(args)
	local p = assert(io.popen("pgrep " .. args))
	local list = {}
	for line in p:lines() do list[#list + 1] = tonumber(line) end
	p:close()
	table.sort(list)
	return list
end

function support.tmpdir()
	local p = assert(io.popen("mktemp -d /tmp/luasmtpd-e2e.XXXXXX"))
	local dir = p:read("l")
	p:close()
	assert(dir and dir:match("^/tmp/luasmtpd%-e2e%."), "mktemp failed")
	return dir
end

-- Runs a shell command; returns true|false, exit code, its stdout+stderr.
function support.run(cmd, timeout)
	local out = os.tmpname()
	local ok, _, code = os.execute(("timeout -k 5 %d sh -c %s >%s 2>&1 </dev/null")
		:format(timeout or 60, shquote(cmd), out))
	local text = slurp(out) or ""
	os.remove(out)
	return ok == true, code, text
end

-- Polls fn() until it returns a true value or timeout seconds pass.  Only for
-- what has no event to await (a process starting or exiting).
function support.wait_until(fn, timeout, what)
	local deadline = socket.gettime() + (timeout or 5)
	local step = 0.005
	repeat
		local v = fn()
		if v then return v end
		socket.sleep(step)
		step = math.min(step * 2, 0.1)
	until socket.gettime() > deadline
	error(("timed out after %.1f s waiting for %s"):format(timeout or 5, what or "a condition"), 2)
end

---------------------------------------------------------------------------
-- The server process
---------------------------------------------------------------------------
local Server = {}
Server.__index = Server

local function alive(pid)
	return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

--[[ support.start{policy = "lua source", args = {...}, grace = seconds, workers = n, user = name,
env = {NAME = "value"}}
Writes the policy to DIR/policy.lua after replacing every "@OUT@" with DIR as
a Lua string literal (the policy writes what it saw there), starts the
binary with --listen 127.0.0.1:0 --ready-file DIR/ready --workers N (N is
opts.workers, default 1: one worker process, so that what a policy records
comes from one Lua state, in order), and returns a Server once the ready file
names the port: fields host, port, dir, pid (the master's).  With opts.user
(the specs run as root), DIR belongs to that user and --user is passed.
]]
function support.start(opts)
	opts = opts or {}
	local dir = support.tmpdir()
	local policy = (opts.policy or 'require "smtp".createServer():listen(2525)\n')
		:gsub("@OUT@", function() return ("%q"):format(dir) end)
	spit(dir .. "/policy.lua", policy)

	local argv = { shquote(support.binary()), "--listen", "127.0.0.1:0",
		"--ready-file", shquote(dir .. "/ready") }
	if opts.env then	-- { NAME = value }: the server's environment on top of ours
		local names = {}
		for k in pairs(opts.env) do names[#names + 1] = k end
		table.sort(names)
		for i = #names, 1, -1 do table.insert(argv, 1, shquote(names[i] .. "=" .. opts.env[names[i]])) end
		table.insert(argv, 1, "env")
	end
	if opts.user then
		assert(os.execute("chown " .. shquote(opts.user) .. " " .. shquote(dir)) == true,
			"chown " .. opts.user)
		argv[#argv + 1] = "--user"
		argv[#argv + 1] = shquote(opts.user)
	end
	if opts.grace then
		argv[#argv + 1] = "--grace"
		argv[#argv + 1] = tostring(opts.grace)
	end
	argv[#argv + 1] = "--workers"
	argv[#argv + 1] = tostring(opts.workers or 1)
	for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = shquote(a) end
	argv[#argv + 1] = shquote(dir .. "/policy.lua")

	-- The wrapper prints the server's PID, waits for it and prints its exit
	-- status; reading that second line never blocks once the server is gone.
	-- wait's stderr goes nowhere: the shell reports a job a signal ended
	-- ("Killed") there, and the status line says it already (128 + signal).
	local script = ("%s >%s 2>%s </dev/null & echo $!; wait $! 2>/dev/null; echo $?")
		:format(table.concat(argv, " "), shquote(dir .. "/stdout"), shquote(dir .. "/stderr"))
	local handle = assert(io.popen("exec sh -c " .. shquote(script), "r"))
	local pid = tonumber(handle:read("l"))
	assert(pid, "could not start " .. support.binary())

	local self = setmetatable({ dir = dir, pid = pid, handle = handle }, Server)
	local ok, err = pcall(support.wait_until, function()
		if not alive(pid) then error("luasmtpd exited before it was ready:\n" .. self:stderr(), 0) end
		local ready = slurp(dir .. "/ready")
		return ready and ready:match("\n")
	end, START_TIMEOUT, "the ready file " .. dir .. "/ready")
	if not ok then
		self:stop(2)
		error(err, 2)
	end
	local first = slurp(dir .. "/ready"):match("[^\n]+")
	self.host, self.port = first:match("^%[?(.-)%]?:(%d+)$")
	self.port = tonumber(self.port)
	assert(self.host and self.port, "bad ready file line: " .. first)
	return self
end

--[[
support.serve(opts): inside a describe block, starts a server with
support.start(opts) before its first test and stops and removes it after the
last one.  Returns a stand-in that forwards fields and methods to that server
(use it only inside the tests).
]]
function support.serve(opts)
	local busted = require "busted"		-- its API, as the spec files see it
	local server
	busted.lazy_setup(function() server = support.start(opts) end)
	busted.lazy_teardown(function()
		if server then
			server:stop()
			server:cleanup()
		end
	end)
	return setmetatable({}, {
		__index = function(_, k)
			assert(server, "support.serve: the server is started by lazy_setup, use it inside a test")
			local v = server[k]
			if type(v) == "function" then
				return function(_, ...) return v(server, ...) end
			end
			return v
		end,
	})
end

function Server:stderr() return slurp(self.dir .. "/stderr") or "" end

-- Waits until the server's stderr matches pattern (from position init on);
-- returns the capture(s), as string.match.
function Server:await_log(pattern, timeout, init)
	local found
	support.wait_until(function()
		found = table.pack(self:stderr():match(pattern, init))
		return found[1] ~= nil
	end, timeout or 10, "a log line matching " .. pattern)
	return table.unpack(found, 1, found.n)
end

-- The same, returning the line's position too, as string.find.
function Server:await_find(pattern, timeout, init)
	local found
	support.wait_until(function()
		found = table.pack(self:stderr():find(pattern, init))
		return found[1] ~= nil
	end, timeout or 10, "a log line matching " .. pattern)
	return table.unpack(found, 1, found.n)
end

-- The master's child processes (its workers), sorted.
function Server:children() return support.pids("-P " .. self.pid) end
function Server:alive() return self.rc == nil and alive(self.pid) end

-- Does a TCP connect to the server's listener succeed (false once it closed)?
function Server:accepting()
	local tcp = socket.tcp()
	tcp:settimeout(1)
	local ok = tcp:connect(self.host, self.port)
	tcp:close()
	return ok ~= nil
end

function Server:signal(sig)
	if self.rc == nil then
		os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
	end
end

-- Waits up to timeout seconds for the process to exit; returns its exit status or nil.
function Server:wait(timeout)
	if self.rc ~= nil then return self.rc end
	local ok = pcall(support.wait_until, function() return not alive(self.pid) end,
		timeout, "luasmtpd to exit")
	if not ok then return nil end
	self.rc = tonumber(self.handle:read("l")) or -1
	self.handle:close()
	return self.rc
end

-- SIGTERM, SIGKILL after bound seconds; returns the exit status (nil if it had to be killed).
function Server:stop(bound)
	if self.rc ~= nil then return self.rc end
	self:signal("TERM")
	local rc = self:wait(bound or 5)
	if rc ~= nil then return rc end
	self.killed = true
	self:signal("KILL")
	self:wait(5)
	return nil
end

-- Removes the temporary directory (after stop).
function Server:cleanup()
	if self.dir and self.dir:match("^/tmp/luasmtpd%-e2e%.") then
		os.execute("rm -rf " .. shquote(self.dir))
	end
end

-- Files the policy wrote into its directory whose names match pattern, sorted.
function Server:files(pattern)
	local p = io.popen("ls -1 " .. shquote(self.dir))
	local names = {}
	for name in p:lines() do
		if name:match(pattern) then names[#names + 1] = name end
	end
	p:close()
	table.sort(names)
	return names
end

function Server:read(name) return slurp(self.dir .. "/" .. name) end

---------------------------------------------------------------------------
-- A raw SMTP client
---------------------------------------------------------------------------
local Client = {}
Client.__index = Client

local function show(s)
	return (s:gsub("[%c\128-\255]", function(c)
		if c == "\r" then return "\\r" elseif c == "\n" then return "\\n" end
		return ("\\x%02x"):format(c:byte())
	end))
end

function support.connect(server, from)
	local tcp = assert(socket.tcp())
	tcp:settimeout(IO_TIMEOUT)
	if from then assert(tcp:bind(from, 0)) end	-- a source address (127.0.0.2)
	local ok, err = tcp:connect(server.host, server.port)
	assert(ok, ("connect %s:%s: %s"):format(server.host, server.port, tostring(err)))
	return setmetatable({ tcp = tcp, server = server, log = {} }, Client)
end

function Client:transcript()
	return table.concat(self.log, "\n")
end

-- Raises with the transcript and the tail of the server's stderr.
function Client:fail(msg, level)
	local err = self.server and self.server:stderr() or ""
	if #err > 4000 then err = "..." .. err:sub(-4000) end
	error(("%s\n--- transcript ---\n%s\n--- server stderr ---\n%s")
		:format(msg, self:transcript(), err), (level or 1) + 1)
end

-- Sends raw bytes, all of them.
function Client:send(bytes)
	self.log[#self.log + 1] = "C: " .. show(bytes)
	local i = 1
	while i <= #bytes do
		local last, err, partial = self.tcp:send(bytes, i)
		if not last then
			if err == "closed" then return nil, err end
			last = partial
			if last < i then self:fail("send: " .. tostring(err), 2) end
		end
		i = last + 1
	end
	return true
end

-- Reads one reply: {code = 250, enhanced = "2.1.0", lines = {...}, text = "250 ..."}
-- or nil, "closed" | "timeout".
function Client:reply()
	local lines = {}
	while true do
		local line, err = self.tcp:receive("*l")
		if not line then
			self.log[#self.log + 1] = "S: <" .. err .. ">"
			return nil, err
		end
		self.log[#self.log + 1] = "S: " .. show(line)
		lines[#lines + 1] = line
		local code, sep = line:match("^(%d%d%d)([ -]?)")
		if not code then
			self:fail("malformed reply line: " .. show(line), 2)
		end
		if sep ~= "-" then
			return {
				code = tonumber(code),
				enhanced = lines[1]:match("^%d%d%d[ -](%d%.%d%d?%d?%.%d%d?%d?)"),
				lines = lines,
				text = line,
			}
		end
	end
end

-- Reads a reply and asserts its first line matches the Lua pattern ("^250 2%.1%.0").
function Client:expect(pattern, what)
	local r, err = self:reply()
	if not r then
		self:fail(("expected %s, got %s"):format(pattern, err), 2)
	end
	if not r.lines[1]:match(pattern) then
		self:fail(("expected %s%s, got %q"):format(pattern, what and " (" .. what .. ")" or "",
			r.lines[1]), 2)
	end
	return r
end

-- Sends a command line (CRLF added) and expects a reply matching pattern.
function Client:cmd(line, pattern)
	self:send(line .. "\r\n")
	return self:expect(pattern, line)
end

-- Expects the server to close the connection (EOF) without more replies.
function Client:expect_closed()
	local line, err = self.tcp:receive("*l")
	if line then self:fail("expected the connection to close, got " .. show(line), 2) end
	if err ~= "closed" then self:fail("expected the connection to close, got " .. err, 2) end
	self.log[#self.log + 1] = "S: <closed>"
	return true
end

-- The greeting and EHLO in one go; returns the EHLO reply.
function Client:hello(name)
	self:expect("^220 ")
	return self:cmd("EHLO " .. (name or "client.example"), "^250[ -]")
end

function Client:close()
	if self.tcp then self.tcp:close() end
	self.tcp = nil
end

---------------------------------------------------------------------------
-- A policy that records what it saw
---------------------------------------------------------------------------
-- Rejects recipients containing "invalid"; writes DIR/mail-N and DIR/rcpt-N for
-- every accepted MAIL and RCPT and, for every message it accepts, DIR/msg-N:
-- "FROM <sender>\nTO <rcpt>,<rcpt>\n\n<body as received>".
-- The start of a recording policy: smtp, and record(kind, text), which writes
-- DIR/<kind>-N (N counts up per Lua state).
support.RECORD_PRELUDE = [==[
local smtp = require "smtp"
local OUT = @OUT@
local seq = 0
local function record(kind, text)
	seq = seq + 1
	local f = assert(io.open(("%s/%s-%05d"):format(OUT, kind, seq), "wb"))
	f:write(text)
	f:close()
end
]==]

support.RECORDER = support.RECORD_PRELUDE .. [==[
smtp.createServer(function(conn)
	conn:on("MAIL", function(sender) record("mail", sender.address) end)
	conn:on("RCPT", function(rcpt)
		if rcpt.address:find("invalid", 1, true) then
			rcpt.valid = false
			return
		end
		record("rcpt", rcpt.address)
	end)
	conn:on("DATA", function(msg)
		local chunks = {}
		msg:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
		msg:on("end", function()
			local to = {}
			for i, r in ipairs(msg.recipients) do
				to[i] = type(r) == "table" and r.address or tostring(r)
			end
			local from = msg.sender
			if type(from) == "table" then from = from.address end
			record("msg", ("FROM %s\nTO %s\n\n%s"):format(tostring(from),
				table.concat(to, ","), table.concat(chunks)))
			msg:accept()
		end)
	end)
end):listen(2525)
]==]

-- The engine's Received field on top of data (server.receivedHeader), and
-- the rest: the client's octets.  nil, data if there is none.
function support.split_received(data)
	local field, rest = data:match("^(Received: [^\r\n]*)(.*)$")
	if not field then return nil, data end
	while rest:match("^\r\n[ \t]") do	-- folded lines
		local more
		more, rest = rest:match("^(\r\n[ \t][^\r\n]*)(.*)$")
		field = field .. more
	end
	field = field .. "\r\n"
	rest = rest:sub(3)
	if not field:find(" (luasmtpd) ", 1, true) then return nil, data end
	return field, rest
end

-- The messages the RECORDER policy accepted: {from =, to = {...}, body =,
-- received =}, in order; body is what the client sent, received the
-- Received field the engine put on top of it.
function Server:deliveries()
	local list = {}
	for _, name in ipairs(self:files("^msg%-")) do
		local text = self:read(name)
		local from, to, data = text:match("^FROM ([^\n]*)\nTO ([^\n]*)\n\n(.*)$")
		local received, body = support.split_received(data or "")
		local rcpts = {}
		for a in (to or ""):gmatch("[^,]+") do rcpts[#rcpts + 1] = a end
		list[#list + 1] = { from = from, to = rcpts, body = body, received = received, file = name }
	end
	return list
end

-- Every address the RECORDER saw in an accepted MAIL or RCPT.
function Server:envelope_log()
	local seen = {}
	for _, name in ipairs(self:files("^%l+%-%d+$")) do
		if not name:match("^msg") then seen[#seen + 1] = self:read(name) end
	end
	return table.concat(seen, "\n")
end

-- Next hops (spec/e2e/peers.lua, loaded when first used): Dovecot's LMTP
-- and Postfix's smtp-sink on free loopback ports, stopped by PID.
function support.dovecot_lmtp(opts) return require("spec.e2e.peers").dovecot_lmtp(opts) end
function support.smtp_sink(dir) return require("spec.e2e.peers").smtp_sink(dir) end

---------------------------------------------------------------------------
-- Descriptor counts and an idle server (the http, tcp and dns specs)
---------------------------------------------------------------------------
-- A leak test counts a process's descriptors before and after.  Its baseline
-- is taken only once the server is provably idle: every session ended with
-- QUIT and the server's EOF (Client:quit), which libevent sends only when it
-- closes the socket; never after a sleep or because two counts agreed.

-- The number of open descriptors of process pid (/proc/PID/fd).
function support.fd_count(pid)
	local p = assert(io.popen("ls /proc/" .. tonumber(pid) .. "/fd 2>/dev/null"))
	local n = 0
	for _ in p:lines() do n = n + 1 end
	p:close()
	return n
end

-- What they are, for a failure's message.
function support.fd_list(pid)
	local p = assert(io.popen("ls -l /proc/" .. tonumber(pid) .. "/fd 2>&1"))
	local text = p:read("a")
	p:close()
	return text
end

-- Waits (bound: 30 s by default, only a limit) until pid holds exactly n
-- descriptors; raises with both counts and the list if it never does.
function support.await_fd_count(pid, n, what, bound)
	local ok = pcall(support.wait_until, function() return support.fd_count(pid) == n end,
		bound or 30, "")
	if not ok then
		error(("%s: %d descriptors expected, %d open:\n%s"):format(what or "descriptors", n,
			support.fd_count(pid), support.fd_list(pid)), 2)
	end
end

-- Ends the session: QUIT, its 221, then the server's EOF.  On return the
-- server has closed its socket (it sends FIN only with the close).
function Client:quit()
	self.tcp:settimeout(30)
	self:cmd("QUIT", "^221")
	self:expect_closed()
	self:close()
end

-- Waits until the file at path has a line equal to line (a peer's record
-- that something happened); bound only a limit (30 s).
function support.await_line(path, line, bound)
	return support.wait_until(function()
		for l in ((slurp(path) or "") .. "\n"):gmatch("([^\n]*)\n") do
			if l == line then return true end
		end
	end, bound or 30, ("%q in %s"):format(line, path))
end

support.show = show
support.Client = Client
support.Server = Server
return support
