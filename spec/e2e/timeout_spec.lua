-- spec/e2e/timeout_spec.lua -- the command and data timeouts over TCP: a
-- silent client is told 421 4.4.2 and dropped; a client that keeps talking
-- is not, however long the session lasts.
local socket = require "socket"
local support = require "spec.e2e.support"

local POLICY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn) end)
server.commandTimeout = 0.5
server.dataTimeout = 0.5
]]

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
end)
