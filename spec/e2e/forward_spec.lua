-- spec/e2e/forward_spec.lua -- message:forward in the real server (nexthop.c
-- through lua_nexthop.c) to real next hops on loopback, started here and
-- stopped by PID: Postfix's smtp-sink (-d: each message to a file) takes a
-- 10 MiB message with dot lines and 8-bit octets; Python peers
-- (spec/e2e/forward_peers.py) record the raw DATA octets on the wire, reject
-- at the end of data, never answer it, or hang up mid-DATA; a port with
-- nobody behind it; and a worker SIGKILLed while the next hop holds the
-- final dot: the client never gets 250.
local support = require "spec.e2e.support"
local shquote = support.shquote

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end
local ROOT = assert(io.popen("pwd")):read("l")

local function stop(pid)
	if not pid or not alive(pid) then return end
	os.execute(("kill -TERM %d"):format(pid))
	local ok = pcall(support.wait_until, function() return not alive(pid) end, 10, "a peer to exit")
	if not ok then os.execute(("kill -KILL %d"):format(pid)) end
end

-- starts cmd in the background: its pid
local function spawn(cmd, errfile)
	local h = assert(io.popen("sh -c " .. shquote("exec " .. cmd .. " >>" .. shquote(errfile)
		.. " 2>&1 </dev/null & echo $!")))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start " .. cmd)
	return pid
end

local peers = 0
local function peer_start(dir, mode)
	peers = peers + 1
	local portfile = ("%s/%s%d.port"):format(dir, mode, peers)
	local pid = spawn(("python3 %s %s %s"):format(shquote(ROOT .. "/spec/e2e/forward_peers.py"), mode,
		shquote(portfile)), dir .. "/" .. mode .. ".err")
	local port = support.wait_until(function()
		if not alive(pid) then error("forward_peers.py " .. mode .. " exited", 0) end
		local t = support.slurp(portfile)
		return t and tonumber(t:match("^(%d+)\n"))
	end, 15, "forward_peers.py " .. mode .. " to listen")
	return { pid = pid, port = port, portfile = portfile, log = function() return support.slurp(portfile .. ".log") or "" end,
		data = function(n) return support.slurp(portfile .. ".data." .. n) end }
end

-- 10 MiB-ish of text: header, lines that start with dots (a lone "." too),
-- and 8-bit octets; CRLF line ends
local function big_body(size)
	local parts, n, i = { "Subject: forward test\r\n", "X-Test: 8bit\r\n", "\r\n" }, 0, 0
	while n < size do
		i = i + 1
		local line
		if i % 11 == 0 then line = "."
		elseif i % 7 == 0 then line = "." .. ("x"):rep(i % 50)
		elseif i % 13 == 0 then line = ".." .. ("z"):rep(i % 30)
		else
			line = ("line %d "):format(i) .. string.char(0x80 + i % 127, 0xC3, 0xA9) .. ("y"):rep(i % 60)
		end
		parts[#parts + 1] = line .. "\r\n"
		n = n + #line + 2
	end
	return table.concat(parts)
end

local function stuffed(body) return (body:gsub("\r\n%.", "\r\n..")) end

-- one message through server: the final reply (nil, err if the connection closed)
local function send(server, body, opts)
	opts = opts or {}
	local c = support.connect(server)
	c:expect("^220 ")
	c:cmd("EHLO client.example", "^250")
	c:cmd("MAIL FROM:<a@client.example> BODY=8BITMIME", "^250")
	c:cmd("RCPT TO:<b@example.org>", "^250")
	c:cmd("DATA", "^354")
	local wire = stuffed(body) .. ".\r\n"
	for i = 1, #wire, 65536 do
		local ok, err = c.tcp:send(wire, i, math.min(i + 65535, #wire))
		if not ok then c:close() return nil, err end
	end
	if opts.before_reply then opts.before_reply() end
	local line, err = c.tcp:receive("*l")
	c:close()
	return line, err
end

local POLICY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("DATA", function(m)
		-- p<port>[t<seconds>]@: forward there, with that timeout
		local lp = m.recipients[1].localPart
		local port = tonumber(lp:match("^p(%d+)")) or PORT
		local timeout = tonumber(lp:match("t(%d+)$")) or 3
		local ok, err = m:forward { host = "127.0.0.1", port = port, tls = "none", timeout = timeout }
		if not ok then conn:log("info", "not forwarded: %s", err) end
	end)
end)
server.forwardPool = { idle = 30, maxMessages = 100 }
server:listen(2525)
]]

describe("e2e: message:forward to real next hops", function()
	local dir, sink_pid, sink_port, server

	lazy_setup(function()
		dir = support.tmpdir()
		os.execute("chmod 777 " .. shquote(dir))
		sink_port = support.free_port()
		os.execute("mkdir -p " .. shquote(dir .. "/sink") .. " && chmod 777 " .. shquote(dir .. "/sink"))
		sink_pid = spawn(("smtp-sink -u nobody -d %s 127.0.0.1:%d 64"):format(
			shquote(dir .. "/sink/%M."), sink_port), dir .. "/sink.err")
		support.wait_until(function()
			local s = require("socket").connect("127.0.0.1", sink_port)
			if s then s:close() return true end
		end, 15, "smtp-sink to listen")
		server = support.start { policy = POLICY:gsub("PORT", tostring(sink_port)) }
	end)

	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		stop(sink_pid)
		os.execute("rm -rf " .. shquote(dir))
	end)

	it("delivers 10 MiB with dot lines and 8-bit octets byte-exact to smtp-sink", function()
		local body = big_body(10 * 1024 * 1024)
		local reply = send(server, body)
		assert.matches("^250 ", reply)
		local file = support.wait_until(function()
			local h = io.popen("find " .. shquote(dir .. "/sink") .. " -type f")
			local f = h:read("l")
			h:close()
			return f
		end, 30, "smtp-sink's dump file")
		local dump = support.wait_until(function()
			local d = support.slurp(file)
			return d and #d > #body * 0.9 and d
		end, 30, "the dump complete")
		-- smtp-sink writes its own X- headers and Received, then the message
		-- with LF line ends, then an empty line; a trace header of ours may
		-- come before ours: compare from our first header
		local at = assert(dump:find("Subject: forward test\n", 1, true), "our header in the dump")
		local want = body:gsub("\r\n", "\n") .. "\n"
		assert.equal(#want, #dump - at + 1)
		assert.is_true(dump:sub(at) == want, "the body differs")
	end)

	it("sends the body dot-stuffed octet for octet on the wire, and reuses the connection", function()
		local peer = peer_start(dir, "record")
		local body = big_body(256 * 1024)
		finally(function() stop(peer.pid) end)
		local conn = support.connect(server)
		conn:close()
		-- p<port>: the policy forwards to that port
		local function to_peer(b)
			local c = support.connect(server)
			c:expect("^220 ")
			c:cmd("EHLO client.example", "^250")
			c:cmd("MAIL FROM:<a@client.example>", "^250")
			c:cmd("RCPT TO:<p" .. peer.port .. "@example.org>", "^250")
			c:cmd("DATA", "^354")
			c:send(stuffed(b) .. ".\r\n")
			local r = c:expect("^%d")
			c:cmd("QUIT", "^221")
			c:close()
			return r
		end
		-- our Received field first (server.receivedHeader), then the client's octets
		local function without_trace(data)
			assert.matches("^Received: from client%.example ", data)
			return data:match("\r\n(Subject:.*)$")
		end
		assert.matches("^250 2.0.0 Ok: stored 1", to_peer(body).text)
		assert.equal(stuffed(body) .. ".\r\n", without_trace(peer.data(1)))
		assert.matches("^250 2.0.0 Ok: stored 2", to_peer("Subject: 2\r\n\r\n.\r\n").text)
		assert.equal("Subject: 2\r\n\r\n..\r\n.\r\n", without_trace(peer.data(2)))
		local log = peer.log()
		local _, connects = log:gsub("connect\n", "")
		assert.equal(1, connects, log)	-- the pool: one connection for both
		assert.matches("dot\nMAIL FROM", log)	-- the reply ended the transaction: no RSET
	end)

	it("refuses a message the next hop refused a recipient of, its pipelined DATA never completed", function()
		local peer = peer_start(dir, "refuse")
		finally(function() stop(peer.pid) end)
		local function message(rcpts)
			local c = support.connect(server)
			c:expect("^220 ")
			c:cmd("EHLO client.example", "^250")
			c:cmd("MAIL FROM:<a@client.example>", "^250")
			for _, r in ipairs(rcpts) do c:cmd("RCPT TO:<" .. r .. ">", "^250") end
			local r = c:cmd("DATA", "^%d")
			if r.text:match("^354") then
				c:send("Subject: x\r\n\r\nhello\r\n.\r\n")
				r = c:expect("^%d")
			end
			c:close()
			return r.text
		end
		local good = "p" .. peer.port .. "@example.org"
		local line = message({ good, "p" .. peer.port .. "unknown@example.org" })
		assert.matches("^554 5%.5%.0 Next hop refused <p%d+unknown@example%.org>: 550 User unknown", line)
		-- the next hop had said 354 to the pipelined DATA: the connection
		-- ends without a final dot, so nothing was delivered
		support.wait_until(function() return peer.log():match("closed\n") end, 10, "the refused transaction closed")
		local log = peer.log()
		assert.matches("RCPT TO:<p%d+unknown@example%.org>\nDATA\n", log)
		assert.is_nil(log:match("dot\n"), log)
		assert.matches("^250 2%.0%.0 Ok: stored", message({ good }))
		assert.matches("dot\n", peer.log())
	end)

	it("makes a new connection when the pooled one was closed by the next hop", function()
		local peer = peer_start(dir, "oneshot")
		finally(function() stop(peer.pid) end)
		for i = 1, 2 do
			local c = support.connect(server)
			c:expect("^220 ")
			c:cmd("EHLO client.example", "^250")
			c:cmd("MAIL FROM:<a@client.example>", "^250")
			c:cmd("RCPT TO:<p" .. peer.port .. "@example.org>", "^250")
			c:cmd("DATA", "^354")
			c:send("Subject: " .. i .. "\r\n\r\nhello\r\n.\r\n")
			c:expect("^250 2%.0%.0 Ok: stored " .. i)
			c:close()
		end
		local _, connects = peer.log():gsub("connect\n", "")
		assert.equal(2, connects)
	end)

	it("pauses the client while the next hop does not read: memory stays bounded", function()
		local peer = peer_start(dir, "stall")
		local to = "p" .. peer.port .. "t600@example.org"
		finally(function() stop(peer.pid) end)
		local worker = server:children()[1]
		local function rss()
			local st = support.slurp("/proc/" .. worker .. "/status")
			return tonumber(st:match("VmRSS:%s*(%d+) kB")) * 1024
		end
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@client.example>", "^250")
		c:cmd("RCPT TO:<" .. to .. ">", "^250")
		c:cmd("DATA", "^354")
		local before = rss()
		-- more than every socket buffer on the way can hold (client, us, next hop)
		local wire = stuffed(big_body(32 * 1024 * 1024)) .. ".\r\n"
		c.tcp:settimeout(0.5)
		-- send until the stalled next hop, through us, stops the client
		local at, idle = 1, 0
		while at <= #wire and idle < 4 do
			local last, err, partial = c.tcp:send(wire, at, math.min(at + 1048575, #wire))
			local upto = last or partial
			if upto >= at then at, idle = upto + 1, 0 else idle = idle + 1 end
			if err and err ~= "timeout" then error(err) end
		end
		assert.is_true(at < #wire, "the whole message went out while the next hop read nothing")
		-- the worker holds its buffers' worth, not the message (under ASan freed
		-- memory stays in its quarantine: RSS says nothing there)
		local asan = (support.slurp("/proc/" .. worker .. "/maps") or ""):find("libasan", 1, true)
		local grew = rss() - before
		if not asan then
			assert.is_true(grew < 8 * 1024 * 1024, ("the worker grew by %d octets"):format(grew))
		end
		assert.matches("stalled\n", peer.log())
		support.spit(peer.portfile .. ".go", "")
		c.tcp:settimeout(120)
		assert(c.tcp:send(wire, at))
		c:expect("^250 2%.0%.0 Ok")
		c:close()
		assert.equal(wire, peer.data(1):match("\r\n(Subject:.*)$"))
	end)

	it("answers 451 when the next hop stops reading past the timeout, the client paused meanwhile", function()
		local peer = peer_start(dir, "stall")
		finally(function() stop(peer.pid) end)
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@client.example>", "^250")
		c:cmd("RCPT TO:<p" .. peer.port .. "t2@example.org>", "^250")
		c:cmd("DATA", "^354")
		c.tcp:settimeout(60)
		assert(c.tcp:send(stuffed(big_body(32 * 1024 * 1024)) .. ".\r\n"))
		c:expect("^451 4%.4%.2 Next hop 127%.0%.0%.1:%d+: timed out %(data%)")
		c:close()
	end)

	it("answers 451 4.4.1 when the next hop is down", function()
		local port = support.free_port()
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@client.example>", "^250")
		c:cmd("RCPT TO:<p" .. port .. "@example.org>", "^250")
		local r = c:cmd("DATA", "^451 4%.4%.1 ")
		c:close()
		assert.truthy(r)
		server:await_log("not forwarded: 451 Next hop 127.0.0.1:" .. port, 10)
	end)

	local function fault(mode, body)
		local peer = peer_start(dir, mode)
		finally(function() stop(peer.pid) end)
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@client.example>", "^250")
		c:cmd("RCPT TO:<p" .. peer.port .. "@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send(stuffed(body) .. ".\r\n")
		local r = c:expect("^%d")
		c:close()
		return r.text, peer
	end

	it("passes the next hop's 5xx at the end of data on", function()
		local line = fault("reject", "Subject: x\r\n\r\nhello\r\n")
		assert.matches("^554 5%.7%.1 Content refused here", line)
	end)

	it("answers 451 when the next hop is slower than the timeout, and drops its transaction", function()
		local line, peer = fault("slow", "Subject: x\r\n\r\nhello\r\n")
		assert.matches("^451 4%.4%.2 Next hop 127%.0%.0%.1:%d+: timed out %(end of data%)", line)
		support.wait_until(function() return peer.log():match("dot\nclosed\n") end, 10,
			"the next hop's connection closed")
	end)

	it("answers 451 when the next hop closes mid-DATA", function()
		local line, peer = fault("close", big_body(1024 * 1024))
		assert.matches("^451 4%.4%.2 ", line)
		assert.matches("hangup", peer.log())
	end)
end)

describe("e2e: a worker killed while forwarding", function()
	it("never told the client 250", function()
		local dir = support.tmpdir()
		local peer = peer_start(dir, "slow")
		local server = support.start { policy = POLICY:gsub("PORT", tostring(peer.port)):gsub("timeout = 3", "timeout = 60") }
		finally(function()
			stop(peer.pid)
			server:stop()
			server:cleanup()
		end)
		local line, err = send(server, "Subject: x\r\n\r\nhello\r\n", { before_reply = function()
			support.wait_until(function() return peer.log():match("dot\n") end, 10, "the final dot at the next hop")
			for _, pid in ipairs(server:children()) do os.execute("kill -KILL " .. pid) end
		end })
		assert.is_nil(line)
		assert.equal("closed", err)
	end)
end)
