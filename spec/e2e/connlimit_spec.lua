-- spec/e2e/connlimit_spec.lua -- server.maxConnections and
-- server.maxConnectionsPerClient, counted across worker processes.
--
-- HELO hold.example keeps its worker busy outside its event loop until the
-- spec creates DIR/go, so the next client is accepted by the other worker:
-- that worker can only refuse it if it sees the held worker's count.  A
-- connection closed, or held by a worker killed with SIGKILL, frees its place;
-- everything is awaited with bounded polling, never slept on.
local support = require "spec.e2e.support"

local POLICY = [==[
local smtp = require "smtp"
local OUT = @OUT@
local server = smtp.createServer(function(conn)
	conn:on("HELO", function(h)
		if h.name == "hold.example" then
			os.execute(("touch %s/held; i=0; until [ -e %s/go ] || [ $i -ge 1500 ]; do sleep 0.01; i=$((i+1)); done")
				:format(OUT, OUT))
		end
		h.message = "count " .. conn.clientConnections
	end)
end)
@LIMITS@
server:listen(2525)
]==]

local function policy(limits)
	return (POLICY:gsub("@LIMITS@", limits))
end

local TOO_MANY = "^421 4%.7%.0 Too many connections"

-- A client that got its greeting (a place).
local function greeted(server)
	local c = support.connect(server)
	c:expect("^220 ")
	return c
end

-- A client refused at once: 421, then closed.
local function refused(server)
	local c = support.connect(server)
	c:expect(TOO_MANY)
	c:expect_closed()
	c:close()
end

-- A client accepted once the server has counted a close: retries on 421, bounded.
local function accepted_soon(server)
	local c
	support.wait_until(function()
		local try = support.connect(server)
		local r = try:reply()
		if r.code == 220 then
			c = try
			return true
		end
		assert(r.text:match(TOO_MANY), "expected 220 or 421, got " .. r.text)
		try:close()
		return false
	end, 10, "a place to be freed")
	return c
end

-- Holds a worker: HELO hold.example, returned once the worker is inside the handler.
local function hold(server)
	local c = greeted(server)
	c:send("HELO hold.example\r\n")
	support.wait_until(function() return server:read("held") end, 10, "a worker to be held")
	return c
end

describe("e2e: connection limits", function()
	local server

	after_each(function()
		if server then
			support.spit(server.dir .. "/go", "")
			server:stop(15)
			server:cleanup()
			server = nil
		end
	end)

	it("maxConnectionsPerClient = 2 with two workers: the third gets 421 whichever worker takes it", function()
		server = support.start { workers = 2,
			policy = policy("server.maxConnectionsPerClient = 2") }
		local c1 = hold(server)
		-- worker A is held: worker B takes the next ones, and sees A's client
		local c2 = greeted(server)
		refused(server)
		support.spit(server.dir .. "/go", "")
		c1:expect("^250 count 2")
		-- either worker now: still two places, both taken
		for _ = 1, 4 do refused(server) end
		assert.equal("250 count 2", c2:cmd("HELO client.example", "^250").text)

		c2:cmd("QUIT", "^221")
		c2:close()
		local c3 = accepted_soon(server)
		refused(server)
		c1:close()
		c3:close()
		-- the refusal was logged, before any Lua ran
		assert.matches("connection from 127%.0%.0%.1 refused: 421 too many connections %(2 from this client: maxConnectionsPerClient",
			server:stderr())
	end)

	it("maxConnections = 3 with two workers: the fourth gets 421", function()
		server = support.start { workers = 2, policy = policy([[
server.maxConnections = 3
server.maxConnectionsPerClient = 0]]) }
		local c1 = hold(server)
		local c2, c3 = greeted(server), greeted(server)
		refused(server)
		support.spit(server.dir .. "/go", "")
		c1:expect("^250 count 3")
		refused(server)
		c3:close()
		local c4 = accepted_soon(server)
		refused(server)
		for _, c in ipairs { c1, c2, c4 } do c:close() end
		assert.matches("refused: 421 too many connections %(3 in all: maxConnections", server:stderr())
	end)

	it("a worker killed with SIGKILL while it holds connections leaves no count behind", function()
		server = support.start { workers = 2,
			policy = policy("server.maxConnectionsPerClient = 2") }
		local c1 = hold(server)
		local c2 = greeted(server)
		refused(server)
		c2:cmd("HELO client.example", "^250 count 2")
		local kids = server:children()
		assert.equal(2, #kids)
		-- the held worker runs the shell of os.execute: it has a child
		local victim
		for _, k in ipairs(kids) do
			local f = io.open("/proc/" .. k .. "/task/" .. k .. "/children")
			local sub = f and f:read("a") or ""
			if f then f:close() end
			if sub:match("%d") then victim = k end	-- it runs the shell of os.execute
		end
		assert.truthy(victim, "the held worker")
		assert.is_true(os.execute("kill -KILL " .. victim) == true)
		c1:expect_closed()
		c1:close()
		-- its count is gone with it: two places again (c2 holds one)
		local c3 = accepted_soon(server)
		refused(server)
		c2:close()
		c3:close()
		assert.matches("worker%d%[" .. victim .. "%] was killed by signal 9", server:stderr())
	end)

	it("a client that resets its connection before it is accepted leaves no count behind", function()
		server = support.start { workers = 0,
			policy = policy("server.maxConnectionsPerClient = 2") }
		local c1 = hold(server)
		-- the one process is held: these wait in the accept queue, then reset
		for _ = 1, 5 do
			local tcp = support.connect(server).tcp
			assert(tcp:setoption("linger", { on = true, timeout = 0 }))
			tcp:close()
		end
		support.spit(server.dir .. "/go", "")
		c1:expect("^250 count 1")
		local c2 = greeted(server)
		refused(server)
		c1:close()
		c2:close()
	end)

	it("--workers 0 counts in the one process", function()
		server = support.start { workers = 0,
			policy = policy("server.maxConnectionsPerClient = 1") }
		local c1 = greeted(server)
		refused(server)
		assert.equal("250 count 1", c1:cmd("HELO client.example", "^250").text)
		c1:cmd("QUIT", "^221")
		c1:close()
		accepted_soon(server):close()
	end)
end)
