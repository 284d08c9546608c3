-- spec/e2e/blocked_spec.lua -- a worker stuck in one call into Lua.
--
-- A blocking call (os.execute) or one long C call (a pathological pattern)
-- stops a worker's event loop where no budget can: the master sees it in
-- the worker's busy record, logs it after a few seconds and, past the
-- script's blockedLimit, kills it (with what it started) and starts another,
-- while the other worker serves.  A worker stuck like that when its master
-- dies ends by itself within the same limit.
local socket = require "socket"
local support = require "spec.e2e.support"

-- HELO sleep.example blocks in os.execute, HELO pattern.example in one
-- string.find (17 s of CPU or more); DIR/held-PID says it got there.
-- HELO's reply names the worker's pid.
local POLICY = [==[
local smtp = require "smtp"
local OUT = @OUT@
local PID = io.open("/proc/self/stat"):read("l"):match("^%d+")

local function held() io.open(OUT .. "/held-" .. PID, "w"):close() end

local server = smtp.createServer(function(conn)
	conn:on("HELO", function(h)
		if h.name == "sleep.example" then
			held()
			os.execute("sleep 60")
		elseif h.name == "pattern.example" then
			held()
			local _ = ("a"):rep(200):find(".-.-.-.-b")
		end
		h.message = "worker " .. PID
	end)
end)
server.blockedLimit = 3
]==]

-- Running: not gone, and not a zombie waiting for whoever reaps orphans.
local function alive(pid)
	local f = io.open("/proc/" .. pid .. "/stat")
	if not f then return false end
	local state = (f:read("a") or ""):match("^%d+ %b() (%a)")
	f:close()
	return state ~= nil and state ~= "Z"
end




-- Sends HELO name and waits until its handler is in; returns the client and the worker's pid.
local function block(server, name)
	local c = support.connect(server)
	c:expect("^220 ")
	c:send("HELO " .. name .. "\r\n")
	local pid = support.wait_until(function()
		local f = server:files("^held%-%d+$")[1]
		return f and tonumber(f:match("%d+"))
	end, 10, "a handler to block")
	return c, pid
end

describe("e2e: a worker blocked in Lua", function()
	local server

	after_each(function()
		if server then
			server:stop(15)
			server:cleanup()
			server = nil
		end
	end)

	it("is logged, then replaced past blockedLimit, while another worker serves", function()
		server = support.start { policy = POLICY, workers = 2 }
		local c, blocked = block(server, "sleep.example")
		local t0 = socket.gettime()

		-- the other worker serves meanwhile
		local d = support.connect(server)
		d:expect("^220 ")
		local r = d:cmd("HELO client.example", "^250 worker %d+")
		assert.are_not.equal(blocked, tonumber(r.text:match("%d+$")))
		d:cmd("QUIT", "^221 ")
		d:close()

		local _, _, slot, pid, secs, id = server:await_find(
			"worker(%d)%[(%d+)%] blocked for ([%d.]+) s in helo handler %(session (%x+)%)\n")
		assert.equal(blocked, tonumber(pid))
		assert.is_true(tonumber(secs) >= 2 and tonumber(secs) < 3, secs)
		assert.matches("%[" .. id .. "%] connection from 127%.0%.0%.1", server:stderr())
		local at = server:await_find("worker" .. slot .. "%[" .. pid .. "%] blocked for [%d.]+ s in helo handler "
			.. "%(session " .. id .. "%): over blockedLimit %(3%.0 s%), replacing it")
		local _, _, newpid = server:await_find("worker" .. slot .. "%[(%d+)%] accepting", 10, at)
		newpid = tonumber(newpid)
		local took = socket.gettime() - t0
		print(("\n  (blocked worker replaced %.2f s after its handler blocked; blockedLimit 3 s)"):format(took))
		c:expect_closed()
		c:close()

		assert.are_not.equal(blocked, newpid)
		support.wait_until(function() return not alive(blocked) end, 5, "the blocked worker to go")
		-- what it started (sh, sleep 60) went with it
		support.wait_until(function() return #support.pids("-g " .. blocked) == 0 end, 5, "the blocked worker's group to go")
		assert.matches("worker" .. slot .. "%[" .. pid .. "%] was killed by signal 9[^\n]* for blocking",
			server:stderr())
		assert.equal(2, #server:children())
		-- and the replacement serves
		local e = support.connect(server)
		e:expect("^220 ")
		e:cmd("HELO client.example", "^250 worker %d+")
		e:cmd("QUIT", "^221 ")
		e:close()
		assert.not_matches("AddressSanitizer", server:stderr())
	end)

	it("ends by itself within blockedLimit when its master is killed", function()
		server = support.start { policy = POLICY, workers = 1, grace = 30 }
		local c, blocked = block(server, "pattern.example")
		server:signal("KILL")
		server:wait(5)
		local t0 = socket.gettime()
		support.wait_until(function() return not alive(blocked) end, 8,
			"the blocked worker of a killed master to end")
		print(("\n  (orphaned blocked worker gone %.2f s after its master)"):format(socket.gettime() - t0))
		c:close()
		assert.matches("master gone and a handler blocked past blockedLimit", server:stderr())
	end)
end)
