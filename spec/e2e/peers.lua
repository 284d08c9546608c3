-- spec/e2e/peers.lua -- real mail servers as next hops for the e2e specs.
--
-- Owns: Dovecot's LMTP (dovecot-core, dovecot-lmtpd) and Postfix's smtp-sink,
-- each started on a free 127.0.0.1 port from a fresh temporary directory with
-- its own configuration (never /etc/dovecot, /var/run/dovecot or a system
-- spool), waited for until it accepts a connection, and stopped by PID
-- (SIGTERM, then SIGKILL after a bound).  Works as root (the CI: mail is
-- stored as "nobody", as Dovecot refuses UID 0) and as any other user.
local socket = require "socket"
local support = require "spec.e2e.support"

local peers = {}

local START_TIMEOUT, STOP_TIMEOUT = 15, 10
local shquote, slurp, spit = support.shquote, support.slurp, support.spit

local function sh(cmd)
	local p = assert(io.popen(cmd))
	local out = p:read("a")
	p:close()
	return (out:gsub("%s+$", ""))
end

local function alive(pid)
	return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

-- Runs argv (already quoted) in the background; its output goes to log.
-- Returns the PID and the wrapper's pipe (the exit status is its last line).
local function spawn(argv, log)
	local script = ("%s >%s 2>&1 </dev/null & echo $!; wait $! 2>/dev/null; echo $?")
		:format(table.concat(argv, " "), shquote(log))
	local handle = assert(io.popen("exec sh -c " .. shquote(script), "r"))
	local pid = tonumber(handle:read("l"))
	assert(pid, "could not start " .. argv[1])
	return pid, handle
end

local function accepts(port)
	local c = socket.tcp()
	c:settimeout(1)
	local ok = c:connect("127.0.0.1", port)
	c:close()
	return ok
end

-- SIGTERM, then SIGKILL if still there after STOP_TIMEOUT; reaps the
-- wrapper, removes the directory the peer made for itself.
local function stop(peer)
	if not peer.pid then return end
	local pid = peer.pid
	peer.pid = nil
	os.execute(("kill -TERM %d 2>/dev/null"):format(pid))
	local gone = pcall(support.wait_until, function() return not alive(pid) end,
		STOP_TIMEOUT, "the peer to exit")
	if not gone then os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
	peer.handle:read("a")
	peer.handle:close()
	if peer.own_dir and os.getenv("E2E_KEEP") == nil then
		os.execute("rm -rf " .. shquote(peer.dir))
	end
end

-- Waits until pid listens on port; on failure stops it and raises with log.
local function await(peer, what, log)
	local ok, err = pcall(support.wait_until, function()
		if not alive(peer.pid) then error(what .. " exited:\n" .. (slurp(log) or ""), 0) end
		return accepts(peer.port)
	end, START_TIMEOUT, what .. " on port " .. peer.port)
	if not ok then
		stop(peer)
		error(err, 3)
	end
end

-- Who owns the mail: the current user, or nobody when that is root.
local function mail_owner()
	local uid = tonumber(sh("id -u"))
	if uid ~= 0 then
		return { uid = uid, gid = tonumber(sh("id -g")), name = sh("id -un"), root = false }
	end
	local nobody = sh("getent passwd nobody")
	local u, g = nobody:match("^[^:]*:[^:]*:(%d+):(%d+):")
	return { uid = tonumber(u), gid = tonumber(g), name = "nobody", root = true }
end

--[[
peers.dovecot_lmtp([{users = {"alice", "bob"}}]) -> peer
Dovecot's LMTP on 127.0.0.1:peer.port, a passwd-file of the users (default
alice and bob), each with a Maildir under peer.dir.  An unknown recipient is
refused at RCPT by Dovecot ("550 5.1.1 <x> User doesn't exist: x").
peer.maildir_of(user) is that user's Maildir; peer:messages(user) the texts of
the messages in its new/ (in name order); peer:log() Dovecot's log;
peer:stop() stops it by PID.
]]
function peers.dovecot_lmtp(opts)
	opts = opts or {}
	local users = opts.users or { "alice", "bob" }
	local dir = support.tmpdir()
	local owner = mail_owner()
	local port = support.free_port()
	assert(os.execute(("mkdir -p %s/run %s/state %s/mail && chmod 755 %s"):format(
		shquote(dir), shquote(dir), shquote(dir), shquote(dir))) == true)
	assert(os.execute(("chown %d:%d %s/mail"):format(owner.uid, owner.gid, shquote(dir))) == true)
	local pw = {}
	for i, u in ipairs(users) do
		pw[i] = ("%s:{PLAIN}secret:%d:%d::%s/mail/%s::"):format(u, owner.uid, owner.gid, dir, u)
	end
	spit(dir .. "/passwd", table.concat(pw, "\n") .. "\n")
	-- root: Dovecot's own users for its internal processes; else everything is ours
	local internal = owner.root and "dovecot" or owner.name
	local login = owner.root and "dovenull" or owner.name
	spit(dir .. "/dovecot.conf", ([[
# a test instance: nothing outside DIR
base_dir = DIR/run
state_dir = DIR/state
instance_name = luasmtpd-test-PORT
log_path = DIR/dovecot.log
hostname = lmtp.test.example
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = INTERNAL
default_login_user = LOGIN
lmtp_save_to_detail_mailbox = no
passdb {
  driver = passwd-file
  args = DIR/passwd
}
userdb {
  driver = passwd-file
  args = DIR/passwd
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = PORT
  }
  unix_listener lmtp {
    mode = 0600
  }
}
service anvil {
  chroot =
}
]]):gsub("DIR", dir):gsub("PORT", tostring(port)):gsub("INTERNAL", internal):gsub("LOGIN", login))
	local log = dir .. "/dovecot.out"
	local peer = { dir = dir, port = port, host = "127.0.0.1", users = users, own_dir = true }
	peer.pid, peer.handle = spawn({ "dovecot", "-F", "-c", shquote(dir .. "/dovecot.conf") }, log)
	await(peer, "dovecot", log)
	function peer.maildir_of(user) return dir .. "/mail/" .. user .. "/Maildir" end
	function peer:messages(user)
		local p = assert(io.popen("ls -1 " .. shquote(self.maildir_of(user) .. "/new") .. " 2>/dev/null"))
		local list = {}
		for name in p:lines() do list[#list + 1] = name end
		p:close()
		table.sort(list)
		for i, name in ipairs(list) do list[i] = slurp(self.maildir_of(user) .. "/new/" .. name) end
		return list
	end
	function peer:log() return (slurp(dir .. "/dovecot.log") or "") .. (slurp(log) or "") end
	function peer:stop() stop(self) end
	return peer
end

-- smtp-sink's dump of a message (unstuffed lines ended by LF, a final empty
-- line) back to the message octets: CRLF line ends.
function peers.sink_text(data)
	local body = data:gsub("\n$", "", 1)	-- the empty line smtp-sink adds
	return (body:gsub("\n", "\r\n"))
end

--[[
peers.smtp_sink([dir]) -> peer
Postfix's smtp-sink on 127.0.0.1:peer.port (as "nobody" when run as root),
writing each transaction to a file under peer.dir/msgs (dir: a fresh
temporary directory by default).  peer:messages() parses them, in name order:
{file =, client = X-Client-Addr, proto =, helo =, mail =, rcpt = {...},
received = smtp-sink's own Received field, data = the message as smtp-sink
wrote it: each line unstuffed but ended by LF, and an empty line after the
last; text = the message octets (CRLF line ends: peers.sink_text), exact for a
message whose lines all end in CRLF}.  peer:stop() stops it by PID (and removes the directory if
it made it).  E2E_KEEP=1 keeps the directories of both peers.
]]
function peers.smtp_sink(dir)
	local own_dir = dir == nil
	dir = dir or support.tmpdir()
	local owner = mail_owner()
	local port = support.free_port()
	assert(os.execute(("mkdir -p %s/msgs && chown %d:%d %s/msgs && chmod 755 %s"):format(
		shquote(dir), owner.uid, owner.gid, shquote(dir), shquote(dir))) == true)
	local argv = { "smtp-sink" }
	if owner.root then
		argv[#argv + 1] = "-u"
		argv[#argv + 1] = "nobody"
	end
	for _, a in ipairs { "-h", "sink.test.example", "-d", dir .. "/msgs/%H%M%S.",
		"127.0.0.1:" .. port, "256" } do
		argv[#argv + 1] = shquote(a)
	end
	local log = dir .. "/smtp-sink.out"
	local peer = { dir = dir, port = port, host = "127.0.0.1", own_dir = own_dir }
	peer.pid, peer.handle = spawn(argv, log)
	await(peer, "smtp-sink", log)
	function peer:messages()
		local p = assert(io.popen("ls -1 " .. shquote(dir .. "/msgs")))
		local names = {}
		for name in p:lines() do names[#names + 1] = name end
		p:close()
		table.sort(names)
		local list = {}
		for _, name in ipairs(names) do
			local text = slurp(dir .. "/msgs/" .. name) or ""
			local m = { file = dir .. "/msgs/" .. name, rcpt = {} }
			local rest = text
			while true do
				local key, value, after = rest:match("^X%-([%w-]+): ([^\n]*)\n(.*)$")
				if not key then break end
				if key == "Client-Addr" then m.client = value
				elseif key == "Client-Proto" then m.proto = value
				elseif key == "Helo-Args" then m.helo = value
				elseif key == "Mail-Args" then m.mail = value
				elseif key == "Rcpt-Args" then m.rcpt[#m.rcpt + 1] = value end
				rest = after
			end
			-- smtp-sink's three-line Received field, then the message
			m.received, m.data = rest:match("^(Received: [^\n]*\n[^\n]*\n[^\n]*\n)(.*)$")
			if m.data then m.text = peers.sink_text(m.data) end
			list[#list + 1] = m
		end
		return list
	end
	function peer:log() return slurp(log) or "" end
	function peer:stop() stop(self) end
	return peer
end

return peers
