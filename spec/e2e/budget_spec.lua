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

-- What the instruction budget alone never stopped: a heap that grows by a
-- megabyte every few instructions, a loop of expensive C calls, a loop in a
-- coroutine the handler made.  Each is stopped with 451 and a log line
-- naming the handler, within a bound, and the worker goes on (heap back
-- where it was after a memory bomb).
local RUNAWAY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(c)
  c:on("RCPT", function(r)
    local who = r.address:match("^(.-)@")
    if who == "heap" then
      collectgarbage()
      r.message = ("2.1.5 heap %d"):format(math.floor(collectgarbage("count")))
    elseif who == "bomb" then
      local t = {}
      while true do t[#t + 1] = string.rep("x", 1e6) end
    elseif who == "pbomb" then	-- the memory error caught, again and again
      for _ = 1, 1000 do
        pcall(function() local t = {} while true do t[#t + 1] = string.rep("x", 1e6) end end)
      end
      error("pcall swallowed the memory budget")
    elseif who == "rep" then	-- 20000 MiB in few instructions: a minute or so, unbounded
      for _ = 1, 20000 do local s = string.rep("x", 1048576) end
      r.message = "2.1.5 the CPU time went unbounded"
    elseif who == "co" then
      coroutine.wrap(function() while true do end end)()
    elseif who == "copcall" then
      for _ = 1, 100 do pcall(coroutine.wrap(function() while true do end end)) end
      error("pcall swallowed the budget")
    elseif who == "gen" then	-- a generator resumed without end: short resumes
      local g = coroutine.wrap(function() while true do coroutine.yield(1) end end)
      while true do g() end
    end
  end)
end)
server.handlerMemory = 64 * 1024 * 1024
]]

describe("e2e: runaway handlers beyond the instruction count", function()
	local server

	after_each(function()
		if server then
			server:stop()
			server:cleanup()
			server = nil
		end
	end)

	local function rcpt_heap(c)
		return tonumber(c:cmd("RCPT TO:<heap@example.org>", "^250 2%.1%.5 heap %d+").text:match("(%d+)$"))
	end

	it("stops a memory bomb with 451, collects its heap, and serves on", function()
		-- CPU time out of the way: under ASan on a busy machine the bomb
		-- may take over the default second before it reaches 64 MiB
		server = support.start { policy = RUNAWAY .. "server.handlerCpuTime = 60\n" }
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<a@example.net>", "^250 ")
		local before = rcpt_heap(c)
		for _, who in ipairs { "bomb", "pbomb", "bomb" } do
			c:cmd("RCPT TO:<" .. who .. "@example.org>", "^451 4%.3%.0 ")
			-- the 64 MiB it held are gone again (KiB)
			local after = rcpt_heap(c)
			assert.is_true(after < before + 1024, ("heap %d KiB before, %d after %s"):format(before, after, who))
		end
		c:cmd("RSET", "^250 ")
		c:cmd("QUIT", "^221 ")
		c:close()
		local d = support.connect(server)	-- the next session
		d:hello()
		d:cmd("MAIL FROM:<b@example.net>", "^250 ")
		d:cmd("RCPT TO:<ok@example.org>", "^250 ")
		d:cmd("QUIT", "^221 ")
		d:close()

		local err = server:stderr()
		local _, n = err:gsub("handler rcpt failed: [^\n]*handler exceeded its memory budget %(64 MiB%)", "")
		assert.equal(3, n, err)
		assert.not_matches("pcall swallowed", err)
		assert.not_matches("exited", err)
		assert.not_matches("AddressSanitizer", err)
	end)

	it("stops a loop of expensive C calls by CPU time", function()
		server = support.start { policy = RUNAWAY }
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<a@example.net>", "^250 ")
		local t0 = socket.gettime()
		c:cmd("RCPT TO:<rep@example.org>", "^451 4%.3%.0 ")
		local took = socket.gettime() - t0
		assert.is_true(took < 8, ("451 after %.2f s"):format(took))
		c:cmd("RCPT TO:<ok@example.org>", "^250 ")
		c:cmd("QUIT", "^221 ")
		c:close()
		assert.matches("handler rcpt failed: handler exceeded its CPU time budget %(1000 ms%)", server:stderr())
	end)

	it("stops a runaway loop inside a coroutine the handler made, even under pcall", function()
		server = support.start { policy = RUNAWAY }
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<a@example.net>", "^250 ")
		for _, who in ipairs { "co", "copcall", "gen" } do
			local t0 = socket.gettime()
			c:cmd("RCPT TO:<" .. who .. "@example.org>", "^451 4%.3%.0 ")
			local took = socket.gettime() - t0
			assert.is_true(took < 5, ("%s: 451 after %.2f s"):format(who, took))
			c:cmd("RCPT TO:<ok@example.org>", "^250 ")
		end
		c:cmd("QUIT", "^221 ")
		c:close()
		local err = server:stderr()
		local _, n = err:gsub("handler rcpt failed: [^\n]*handler exceeded its", "")
		assert.equal(3, n, err)
		assert.not_matches("pcall swallowed", err)
	end)
end)
