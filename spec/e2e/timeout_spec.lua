-- spec/e2e/timeout_spec.lua -- the command and data deadlines over TCP: a
-- silent client is told 421 4.4.2 and dropped; so is one that trickles a
-- command line or message data octet by octet, and one whose connection
-- outlasts maxSessionTime.  A client that keeps talking at a fair pace is
-- not dropped before that.  Closes are awaited with a bound, never slept for.
local socket = require "socket"
local support = require "spec.e2e.support"

local POLICY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn) end)
server.commandTimeout = 0.5
server.dataTimeout = 0.5
server.minDataRate = 1000
server.maxSessionTime = 3
]]

-- Sends bytes one octet every step seconds (the wait is a receive that also
-- notices a reply or the close) until the server says something or closes;
-- returns what it said, the seconds it took and the octets sent.
local function trickle(c, bytes, step, bound)
	local t0, i, got = socket.gettime(), 1, ""
	c.tcp:settimeout(step)
	while socket.gettime() - t0 < bound do
		if i <= #bytes then
			c:send(bytes:sub(i, i))
			i = i + 1
		end
		local data, err, partial = c.tcp:receive("*a")
		got = got .. (data or partial or "")
		if data ~= nil or err ~= "timeout" then
			return got, socket.gettime() - t0, i - 1
		end
	end
	c:fail(("no reply or close within %.1f s; %d octets sent"):format(bound, i - 1), 2)
end

describe("e2e: timeouts", function()
	local server = support.serve { policy = POLICY }

	it("closes a silent session with 421 4.4.2 after commandTimeout", function()
		local c = support.connect(server)
		c:hello()
		local t0 = socket.gettime()
		c:expect("^421 4%.4%.2 ")
		assert.is_true(socket.gettime() - t0 >= 0.4)
		c:expect_closed()
		c:close()
	end)

	it("restarts the timeout with every command", function()
		local c = support.connect(server)
		c:hello()
		-- talk for three timeouts' worth, a command every fifth of one
		local t0 = socket.gettime()
		while socket.gettime() - t0 < 1.5 do
			socket.sleep(0.1)
			c:cmd("NOOP", "^250 2%.0%.0 ")
		end
		c:expect("^421 4%.4%.2 ")
		c:close()
	end)

	it("drops a client that stops sending message data, delivering nothing", function()
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<a@a.example>", "^250 ")
		c:cmd("RCPT TO:<b@b.example>", "^250 ")
		c:cmd("DATA", "^354 ")
		c:send("Subject: half a message\r\n")
		c:expect("^421 4%.4%.2 ")
		c:expect_closed()
		c:close()
		assert.matches("timeout", server:stderr())
	end)

	it("drops a client trickling a command line once commandTimeout passed since its first octet", function()
		local c = support.connect(server)
		c:hello()
		local said, took, sent = trickle(c, ("NOOP "):rep(100), 0.05, 5)
		c:close()
		assert.matches("^421 4%.4%.2 [^\r]* command line not completed in time\r\n$", said)
		assert.is_true(sent >= 5, "the trickle had started")
		assert.is_true(took >= 0.4, ("421 after %.2f s"):format(took))
		assert.matches("command line not complete 0%.5 s after its first octet %(commandTimeout%)", server:stderr())
	end)

	it("drops a client whose message data is slower than minDataRate", function()
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<a@a.example>", "^250 ")
		c:cmd("RCPT TO:<b@b.example>", "^250 ")
		c:cmd("DATA", "^354 ")
		local said, took = trickle(c, ("x"):rep(1000), 0.02, 5)
		c:close()
		assert.matches("^421 4%.4%.2 [^\r]* message data too slow\r\n$", said)
		assert.is_true(took >= 0.4, ("421 after %.2f s"):format(took))
		assert.matches("message data slower than 1000 octets/s %(minDataRate%)", server:stderr())
	end)

	it("drops a busy client once maxSessionTime is over", function()
		local c = support.connect(server)
		local t0 = socket.gettime()
		c:hello()
		local r
		repeat
			c:send("NOOP\r\n")
			r = c:reply()
		until not r or r.code ~= 250 or socket.gettime() - t0 > 10
		assert(r, "the connection closed without a reply")
		local took = socket.gettime() - t0
		assert.matches("^421 4%.4%.2 [^\r]* connection time limit exceeded$", r.text)
		assert.is_true(took >= 2.9 and took < 6, ("421 after %.2f s"):format(took))
		c:expect_closed()
		c:close()
		assert.matches("connection open for 3 s %(maxSessionTime%)", server:stderr())
	end)
end)
