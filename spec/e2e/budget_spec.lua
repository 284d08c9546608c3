-- spec/e2e/budget_spec.lua -- the handler budget in the real server.
--
-- luasmtpd arms the budget with a CPU-time watchdog instead of a hook per
-- resume: a runaway handler (even one that hides in pcall) must still be
-- stopped with 451 within a bounded time, in a worker process and in
-- --workers 0 alike, while other sessions and later handlers go on.
local socket = require "socket"
local support = require "spec.e2e.support"

local POLICY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(c)
  c:on("MAIL", function(m)
    if m.address == "loop@example.net" then
      for _ = 1, 100 do pcall(function() while true do end end) end
      error("pcall swallowed the budget error")
    end
    if m.address == "busy@example.net" then
      local n = 0
      for i = 1, 100000 do n = n + i end	-- some 400k instructions: under the budget
      m.message = "busy " .. n
    end
  end)
end)
server.handlerBudget = 1000000
]]

describe("e2e: the handler budget", function()
	local server

	after_each(function()
		if server then
			server:stop()
			server:cleanup()
			server = nil
		end
	end)

	for _, workers in ipairs { 1, 0 } do
		it(("stops a runaway handler under pcall with 451 (--workers %d), others go on"):format(workers), function()
			server = support.start { policy = POLICY, workers = workers }
			local a, b = support.connect(server), support.connect(server)
			a:hello()
			b:hello()

			for round = 1, 3 do	-- a pooled coroutine is stopped again, every time
				local t0 = socket.gettime()
				a:cmd("MAIL FROM:<loop@example.net>", "^451 4%.3%.0 ")
				local took = socket.gettime() - t0
				assert.is_true(took < 5, ("round %d: 451 after %.2f s"):format(round, took))
				b:cmd("MAIL FROM:<ok@example.net>", "^250 ")
				b:cmd("RSET", "^250 ")
			end
			a:cmd("MAIL FROM:<busy@example.net>", "^250 .*busy 5000050000$")
			a:cmd("RCPT TO:<r@example.org>", "^250 ")
			a:cmd("DATA", "^354 ")
			a:send("Subject: after the runaway\r\n\r\nbody\r\n.\r\n")
			a:expect("^250 ")
			a:cmd("QUIT", "^221 ")
			b:cmd("QUIT", "^221 ")
			a:close()
			b:close()

			local err = server:stderr()
			local _, stopped = err:gsub("handler mail failed: handler exceeded its instruction budget", "")
			assert.equal(3, stopped, err)
			assert.not_matches("pcall swallowed", err)
			assert.not_matches("AddressSanitizer", err)
			assert.not_matches("runtime error", err)
		end)
	end
end)
