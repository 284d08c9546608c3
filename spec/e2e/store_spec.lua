-- spec/e2e/store_spec.lua -- smtp.store on LMDB in the real server: one
-- memory for every worker, kept across SIGHUP and a restart.
--
-- scripts/greylist.lua itself runs (tarpit 0, retry window 1 s), under a
-- prelude that adds a HELO listener: its reply names the worker's pid, and
-- HELO hold-N.example keeps that worker busy (outside its event loop) until
-- the spec creates DIR/go-N, so the next client must go to the other one.
local support = require "spec.e2e.support"

local PRELUDE = [==[
local getenv = os.getenv
os.getenv = function(k)
	if k == "GREYLIST_TARPIT" then return "0" end
	if k == "GREYLIST_RETRY_AFTER" then return "1" end
	return getenv(k)
end
local OUT = @OUT@
local smtp = require "smtp"
local create = smtp.createServer
smtp.createServer = function(fn)
	local s = create(fn)
	s:on("connection", function(conn)
		conn:on("HELO", function(h)
			local n = h.name:match("^hold%-(%d+)%.example$")
			if n then
				os.execute(("echo $PPID >%s/held-%s; i=0; until [ -e %s/go-%s ] || [ $i -ge 1500 ]; do sleep 0.01; i=$((i+1)); done")
					:format(OUT, n, OUT, n))
			end
			local f = assert(io.open("/proc/self/stat", "r"))
			h.message = "worker " .. f:read("l"):match("^(%d+)")
			f:close()
		end)
	end)
	return s
end
dofile(@SCRIPT@)
]==]

local function policy()
	local script = assert(io.popen("pwd")):read("l") .. "/scripts/greylist.lua"
	return (PRELUDE:gsub("@SCRIPT@", function() return ("%q"):format(script) end))
end


-- A session up to RCPT on connection c (HELO done); returns RCPT's reply text.
local function envelope(c, rcpt)
	c:cmd("MAIL FROM:<a@client.example>", "^250")
	return c:cmd("RCPT TO:<" .. (rcpt or "b@dest.example") .. ">", "^%d").text
end

-- A new connection: returns it and the pid of the worker that took it.
local function hello(server)
	local c = support.connect(server)
	c:expect("^220 ")
	local r = c:cmd("HELO client.example", "^250 worker %d+")
	return c, tonumber(r.text:match("(%d+)$"))
end

-- Holds a worker with connection c (HELO hold-n.example); returns its pid.
local function hold(server, c, n)
	c:send("HELO hold-" .. n .. ".example\r\n")
	local pid
	support.wait_until(function()
		local t = server:read("held-" .. n)
		pid = t and tonumber(t:match("%d+"))
		return pid
	end, 10, "a worker to be held")
	return pid
end

local function release(server, c, n)
	support.spit(server.dir .. "/go-" .. n, "")
	c:expect("^250 worker %d+")
end

describe("e2e: smtp.store on LMDB, scripts/greylist.lua with two workers", function()
	local server, state

	before_each(function() state = support.tmpdir() end)
	after_each(function()
		if server then
			server:stop(15)
			server:cleanup()
			server = nil
		end
		os.execute("rm -rf " .. support.shquote(state))
	end)

	local function start()
		return support.start { policy = policy(), workers = 2, args = { "--state-dir", state } }
	end

	it("a retry after the window passes on the other worker, after SIGHUP and after a restart", function()
		server = start()
		-- the first attempt, on worker A while worker B is held
		local c0 = support.connect(server)
		c0:expect("^220 ")
		local b = hold(server, c0, 1)
		local c1, a = hello(server)
		assert.are_not.equal(a, b)
		assert.matches("^450 4%.7%.1 Greylisted", envelope(c1))
		local t0 = os.time()
		release(server, c0, 1)
		c0:close()

		-- the retry window passes (1 s: real time is what is tested here)
		support.wait_until(function() return os.time() >= t0 + 2 end, 5, "the retry window")

		-- worker A is held by the first client: the retry goes to B
		assert.equal(a, hold(server, c1, 2))
		local c2, other = hello(server)
		assert.equal(b, other)
		assert.matches("^250 ", envelope(c2))
		c2:close()
		release(server, c1, 2)
		c1:close()
		server:await_log("worker%d%[" .. b .. "%] %[%x+%] greylist: b@dest%.example passed after %d+ s")

		-- SIGHUP: new workers, the same memory (and the client's network is allowlisted)
		server:signal("HUP")
		server:await_log("reload: generation 2 serving")
		local c3 = hello(server)
		assert.matches("^250 ", envelope(c3))
		c3:cmd("RSET", "^250")
		assert.matches("^250 ", envelope(c3, "new@dest.example"))
		c3:close()

		-- a restart on the same state directory
		assert.equal(0, server:stop(15))
		server:cleanup()
		server = start()
		local c4 = hello(server)
		assert.matches("^250 ", envelope(c4))
		c4:close()
		assert.is_nil(server:stderr():match("greylist: new triplet"))
	end)

	it("a store that cannot be opened stops the server before it serves, naming the store", function()
		local f = io.open(state .. "/file", "w")
		f:close()
		local ok, err = pcall(support.start, { policy = policy(), workers = 2,
			args = { "--state-dir", state .. "/file/sub" } })
		if ok then server = err end	-- stopped by after_each
		assert.is_false(ok)
		assert.matches("store greylist: state directory .*/file/sub", err)
	end)
end)
