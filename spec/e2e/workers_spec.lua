-- spec/e2e/workers_spec.lua -- the master and its worker processes.
--
-- Several workers serve the same sockets; a worker killed with SIGKILL is
-- restarted; SIGHUP loads a changed script into new workers while sessions
-- open on the old ones finish under the old policy; a broken script is
-- reported and changes nothing; SIGTERM drains every worker and the master
-- exits 0 with no process left; workers do not outlive a killed master.
-- Everything is awaited on the ready file, log lines, replies or process
-- exits, with bounded polling.
local support = require "spec.e2e.support"

-- The policy tells who answered: HELO's reply is "250 worker PID VERSION",
-- an accepted RCPT "250 2.1.5 ok VERSION".  HELO hold.example keeps its
-- worker busy (outside the event loop) until the spec creates DIR/go, so the
-- next client must be accepted by another worker.
local POLICY = [==[
local smtp = require "smtp"
local OUT = @OUT@
local VERSION = "@VERSION@"

local function pid()
	local f = assert(io.open("/proc/self/stat", "r"))
	local stat = f:read("l")
	f:close()
	return stat:match("^(%d+)")
end

smtp.createServer(function(conn)
	conn:on("HELO", function(h)
		if h.name == "hold.example" then
			os.execute(("touch %s/held; i=0; until [ -e %s/go ] || [ $i -ge 1500 ]; do sleep 0.01; i=$((i+1)); done")
				:format(OUT, OUT))
		end
		h.message = "worker " .. pid() .. " " .. VERSION
	end)
	conn:on("RCPT", function(r)
		if r.address:find("invalid", 1, true) then
			r.valid = false
		else
			r.message = "2.1.5 ok " .. VERSION
		end
	end)
end):listen(2525)
]==]

local function policy(version)
	return (POLICY:gsub("@VERSION@", version))
end

local function alive(pid)
	return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end



-- Writes the script anew (the server reads DIR/policy.lua on SIGHUP).
local function rewrite(server, text)
	local out = ("%q"):format(server.dir)
	support.spit(server.dir .. "/policy.lua.new", (text:gsub("@OUT@", function() return out end)))
	assert(os.rename(server.dir .. "/policy.lua.new", server.dir .. "/policy.lua"))
end

-- A whole transaction on a new connection; returns the worker pid and version of HELO's reply.
local function transaction(server, rcpt)
	local c = support.connect(server)
	c:expect("^220 ")
	local helo = c:cmd("HELO client.example", "^250 worker %d+ ")
	c:cmd("MAIL FROM:<a@client.example>", "^250")
	local r = c:cmd("RCPT TO:<" .. (rcpt or "b@dest.example") .. ">", "^250")
	c:cmd("DATA", "^354")
	c:send("Subject: hi\r\n\r\nhello\r\n.\r\n")
	c:expect("^250 ")
	c:cmd("QUIT", "^221")
	c:close()
	local pid, version = helo.text:match("^250 worker (%d+) (%S+)")
	return tonumber(pid), version, r.text
end

describe("e2e: worker processes", function()
	local server

	after_each(function()
		if server then
			-- reaches the workers through the master; a killed master's workers
			-- stop by themselves
			server:stop(15)
			server:cleanup()
			server = nil
		end
	end)

	it("serve with two workers: two processes accept on the same socket", function()
		server = support.start { policy = policy("v1"), workers = 2 }
		local workers = server:children()
		assert.equal(2, #workers, "children of the master; stderr:\n" .. server:stderr())

		local held = support.connect(server)
		held:expect("^220 ")
		held:send("HELO hold.example\r\n")
		support.wait_until(function() return server:read("held") end, 10, "the first worker to be held")

		-- the held worker is outside its event loop: another one takes this client
		local pid2 = transaction(server)
		support.spit(server.dir .. "/go", "")
		local r = held:expect("^250 worker %d+ v1")
		local pid1 = tonumber(r.text:match("^250 worker (%d+)"))
		held:cmd("QUIT", "^221")
		held:close()

		assert.are_not.equal(pid1, pid2)
		assert.truthy(pid1 == workers[1] or pid1 == workers[2], "pid " .. pid1 .. " is a worker")
		assert.truthy(pid2 == workers[1] or pid2 == workers[2], "pid " .. pid2 .. " is a worker")
		-- log lines carry the worker's index and pid
		local err = server:stderr()
		for _, pid in ipairs { pid1, pid2 } do
			assert.matches("worker%d%[" .. pid .. "%] %[%x+%] connection from 127%.0%.0%.1", err)
		end
		assert.matches("master%[" .. server.pid .. "%] ready: 2 worker%(s%) accepting", err)
	end)

	it("restart a worker killed with SIGKILL, and service continues", function()
		server = support.start { policy = policy("v1"), workers = 2 }
		local before = server:children()
		assert.equal(2, #before)
		local victim = before[1]
		assert.is_true(os.execute("kill -KILL " .. victim) == true)

		local slot = server:await_log("worker(%d)%[" .. victim .. "%] was killed by signal 9")
		-- the slot gets a new process, which says when it accepts
		local newpid = tonumber(server:await_log("worker" .. slot .. "%[(%d+)%] accepting",
			10, (server:stderr():find("was killed by signal 9", 1, true))))
		assert.are_not.equal(victim, newpid)
		support.wait_until(function() return not alive(victim) end, 5, "the killed worker to be reaped")
		local after = server:children()
		assert.equal(2, #after)
		assert.truthy(after[1] == newpid or after[2] == newpid)
		assert.is_true(server:alive())

		for _ = 1, 6 do
			local pid, version = transaction(server)
			assert.equal("v1", version)
			assert.truthy(pid == after[1] or pid == after[2], "served by a live worker")
		end
	end)

	it("reload on SIGHUP: new sessions get the new script, an open one finishes under the old", function()
		server = support.start { policy = policy("v1"), workers = 2, grace = 20 }
		local old = server:children()

		local c = support.connect(server)
		c:expect("^220 ")
		local r = c:cmd("HELO client.example", "^250 worker %d+ v1")
		local oldpid = tonumber(r.text:match("worker (%d+)"))
		c:cmd("MAIL FROM:<early@client.example>", "^250")

		rewrite(server, policy("v2"))
		server:signal("HUP")
		server:await_log("reload: generation 2 serving")

		-- new connections: the new policy, in new processes
		for _ = 1, 4 do
			local pid, version, rcpt = transaction(server)
			assert.equal("v2", version)
			assert.matches("^250 2%.1%.5 ok v2", rcpt)
			assert.is_nil(({ [old[1]] = true, [old[2]] = true })[pid], "served by an old worker")
		end

		-- the session open across the reload completes its transaction, old policy
		c:cmd("RCPT TO:<late@dest.example>", "^250 2%.1%.5 ok v1")
		c:cmd("DATA", "^354")
		c:send("Subject: across\r\n\r\nreload\r\n.\r\n")
		c:expect("^250 2%.0%.0")
		c:cmd("QUIT", "^221")
		c:expect_closed()
		c:close()

		-- then its worker, and the other old one, are gone
		support.wait_until(function() return not alive(old[1]) and not alive(old[2]) end, 10,
			"the old workers to exit")
		local err = server:stderr()
		assert.matches("worker%d%[" .. oldpid .. "%] %(generation 1%) exited with status 0", err)
		assert.equal(2, #server:children())
		assert.not_matches("AddressSanitizer", err)
	end)

	it("reload with a broken script: the error is logged and the old workers keep serving", function()
		server = support.start { policy = policy("v1"), workers = 2 }
		local before = server:children()

		support.spit(server.dir .. "/policy.lua", "local smtp = require 'smtp'\nsmtp.createServer(\n")
		server:signal("HUP")
		local where = server:await_log("reload failed: [^\n]*(policy%.lua:%d+)")
		assert.equal("policy.lua:3", where)
		assert.matches("generation 1 keeps serving", server:stderr())

		for _ = 1, 4 do
			local pid, version = transaction(server)
			assert.equal("v1", version)
			assert.truthy(pid == before[1] or pid == before[2])
		end
		assert.same(before, server:children())
		assert.is_true(server:alive())
	end)

	it("reload with an unknown event in the connection listener: refused, the old policy keeps serving", function()
		server = support.start { policy = policy("v1"), workers = 2 }
		local before = server:children()

		-- loads fine; only running the connection listener shows the typo
		local text = policy("v2"):gsub('conn:on%("RCPT"', 'conn:on("RCTP"')
		local line = select(2, text:sub(1, text:find("RCTP", 1, true)):gsub("\n", "")) + 1
		rewrite(server, text)
		server:signal("HUP")
		local where = server:await_log("reload failed: [^\n]*(policy%.lua:%d+): unknown event RCTP")
		assert.equal("policy.lua:" .. line, where)
		assert.matches("generation 1 keeps serving", server:stderr())

		for _ = 1, 4 do
			local pid, version, rcpt = transaction(server)
			assert.equal("v1", version)
			assert.matches("^250 2%.1%.5 ok v1", rcpt)
			assert.truthy(pid == before[1] or pid == before[2])
		end
		assert.same(before, server:children())
		assert.is_true(server:alive())
	end)

	it("SIGTERM: the workers drain, the master exits 0 and no worker is left", function()
		server = support.start { policy = policy("v1"), workers = 2, grace = 10 }
		local workers = server:children()
		assert.equal(2, #workers)

		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("HELO client.example", "^250 worker")
		c:cmd("MAIL FROM:<late@client.example>", "^250")
		server:signal("TERM")
		-- nothing listens any more once the master and the workers closed the socket
		support.wait_until(function() return not server:accepting() end, 10, "the listening socket to close")
		c:cmd("RCPT TO:<late@dest.example>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: late\r\n\r\nstill delivered\r\n.\r\n")
		c:expect("^250 2%.0%.0")
		c:cmd("QUIT", "^221")
		c:close()

		local rc = server:wait(10)
		assert.equal(0, rc, "exit status; stderr:\n" .. server:stderr())
		for _, pid in ipairs(workers) do
			assert.is_false(alive(pid), "worker " .. pid .. " outlived the master")
		end
		assert.is_nil(server:read("ready"), "the ready file is removed")
		assert.not_matches("AddressSanitizer", server:stderr())
		assert.not_matches("runtime error", server:stderr())
	end)

	it("a worker spinning in a coroutine of its handler ends when the master is killed", function()
		server = support.start { workers = 1, grace = 1, policy = [==[
			local smtp = require "smtp"
			local OUT = @OUT@
			smtp.createServer(function(conn)
				conn:on("HELO", function()
					io.open(OUT .. "/held", "w"):close()
					coroutine.wrap(function() while true do end end)()
				end)
			end):listen(2525)
		]==] }
		local worker = server:children()[1]
		local c = support.connect(server)
		c:expect("^220 ")
		c:send("HELO spin.example\r\n")
		support.wait_until(function() return server:read("held") end, 10, "the handler to spin")
		server:signal("KILL")
		server:wait(5)
		support.wait_until(function()
			local f = io.open("/proc/" .. worker .. "/stat")
			local state = f and f:read("a"):match("^%d+ %b() (%a)")
			if f then f:close() end
			return state == nil or state == "Z"
		end, 10, "the spinning worker of a killed master to end")
		c:close()
	end)

	it("workers stop by themselves when the master is killed", function()
		server = support.start { policy = policy("v1"), workers = 2, grace = 5 }
		local workers = server:children()
		assert.equal(2, #workers)
		server:signal("KILL")
		server:wait(5)
		support.wait_until(function() return not alive(workers[1]) and not alive(workers[2]) end,
			10, "the workers of a killed master to exit")
	end)
end)
