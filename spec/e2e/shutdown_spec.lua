-- spec/e2e/shutdown_spec.lua -- SIGTERM with sessions open.
--
-- The server stops accepting at once, lets sessions run for the grace period
-- (--grace), then tells the remaining clients 421 4.3.2 and exits 0.
local socket = require "socket"
local support = require "spec.e2e.support"

describe("e2e: SIGTERM", function()
	local server

	after_each(function()
		if server then
			server:stop()
			server:cleanup()
			server = nil
		end
	end)

	it("gives an idle session 421 after the grace, then exits 0", function()
		local grace = 1
		server = support.start { policy = support.RECORDER, grace = grace }
		local c = support.connect(server)
		c:hello()

		local t0 = socket.gettime()
		server:signal("TERM")
		local r = c:expect("^421 4%.3%.2")
		local waited = socket.gettime() - t0
		c:expect_closed()
		c:close()

		assert.is_true(waited >= grace * 0.9,
			("421 came %.2f s after SIGTERM, before the %d s grace"):format(waited, grace))
		assert.matches("^421 4%.3%.2 ", r.text)
		local rc = server:wait(10)
		assert.equal(0, rc, "exit status; stderr:\n" .. server:stderr())
		assert.not_matches("AddressSanitizer", server:stderr())
		assert.not_matches("runtime error", server:stderr())
	end)

	it("lets a transaction in progress finish within the grace", function()
		server = support.start { policy = support.RECORDER, grace = 5 }
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<late@client.example>", "^250")
		server:signal("TERM")
		-- new connections are refused once the listeners are closed
		support.wait_until(function() return not server:accepting() end, 5, "the listener to close")
		c:cmd("RCPT TO:<late@dest.example>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: late\r\n\r\nstill delivered\r\n.\r\n")
		c:expect("^250 2%.0%.0")
		c:cmd("QUIT", "^221")
		c:expect_closed()
		c:close()
		-- the last session is gone: the server exits before the grace ends
		local rc = server:wait(4)
		assert.equal(0, rc, "exit status; stderr:\n" .. server:stderr())
		local list = server:deliveries()
		assert.equal(1, #list)
		assert.equal("Subject: late\r\n\r\nstill delivered\r\n", list[1].body)
	end)

	it("exits cleanly with a handler asleep and a timer armed (their events freed before the state)", function()
		server = support.start { grace = 1, policy = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
  conn:on("MAIL", function() smtp.sleep(3600) end)
end)
server:on("start", function() smtp.setTimeout(function() end, 3600 * 1000) end)
]] }
		local c = support.connect(server)
		c:hello()
		c:send("MAIL FROM:<sleepy@client.example>\r\n")	-- its handler sleeps an hour
		server:signal("TERM")
		c:expect("^421 4%.3%.2")
		c:close()
		local rc = server:wait(10)
		assert.equal(0, rc, "exit status; stderr:\n" .. server:stderr())
		assert.not_matches("AddressSanitizer", server:stderr())
		assert.not_matches("runtime error", server:stderr())
	end)

	it("exits at once on a second signal during the grace", function()
		server = support.start { policy = support.RECORDER, grace = 30 }
		local c = support.connect(server)
		c:hello()
		local t0 = socket.gettime()
		server:signal("TERM")
		-- the first signal is seen when the listener closes
		support.wait_until(function() return not server:accepting() end, 5, "the listener to close")
		server:signal("TERM")
		local r = c:reply()
		if r then assert.matches("^421 4%.3%.2", r.text) end
		local rc = server:wait(10)
		assert.is_not_nil(rc, "still running 10 s after the second SIGTERM")
		assert.is_true(socket.gettime() - t0 < 10)
		c:close()
	end)
end)
