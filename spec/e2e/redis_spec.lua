-- spec/e2e/redis_spec.lua -- smtp.store on Redis in the real server: a
-- redis-server from the system (started here on a free loopback port, with
-- no persistence, stopped by PID), two luasmtpd instances that share one
-- counter exactly, the API's semantics against a real Redis, and what
-- handlers see while Redis is down and after it is back.
local support = require "spec.e2e.support"
local shquote = support.shquote

local R = require "spec.e2e.redis_support"
local redis_start, redis_stop, redis_cli = R.start, R.stop, R.cli

-- one session up to RCPT on server: the RCPT reply's code and text
local function rcpt(server, to)
	local c = support.connect(server)
	c:expect("^220 ")
	c:cmd("HELO client.example", "^250")
	c:cmd("MAIL FROM:<a@client.example>", "^250")
	local r = c:cmd("RCPT TO:<" .. (to or "b@dest.example") .. ">", "^%d")
	c:cmd("QUIT", "^221")
	c:close()
	return r.code or tonumber(r.text:match("^(%d+)")), r.text
end

-- a rate limit of LIMIT messages per hour, shared through Redis
local LIMIT = 5
local POLICY = [==[
local smtp = require "smtp"
local db = smtp.store.open("limits", { redis = "127.0.0.1:@PORT@", timeout = 2 })
smtp.createServer(function(connection)
	connection:on("RCPT", function(recipient)
		local n, err = db:incr("count", 1, 3600)
		if not n then
			recipient.valid, recipient.code = false, 451
			recipient.message = "4.3.0 Rate limit unavailable, try later"
			smtp.log("warn", "ratelimit: %s", err)
		elseif n > @LIMIT@ then
			recipient.valid, recipient.code = false, 452
			recipient.message = "4.7.1 Too many messages this hour"
		end
	end)
end):listen(2525)
]==]

describe("e2e: smtp.store on Redis", function()
	local dir, port, rpid, servers

	before_each(function()
		dir = support.tmpdir()
		port = support.free_port()
		rpid = redis_start(port, dir)
		servers = {}
	end)
	after_each(function()
		for _, s in ipairs(servers) do
			s:stop(15)
			s:cleanup()
		end
		redis_stop(rpid)
		os.execute("rm -rf " .. shquote(dir))
	end)

	local function start(policy)
		local s = support.start { policy = (policy:gsub("@PORT@", port):gsub("@LIMIT@", LIMIT)) }
		servers[#servers + 1] = s
		return s
	end

	it("two instances sharing one Redis enforce one limit exactly", function()
		local a, b = start(POLICY), start(POLICY)
		for i = 1, LIMIT do
			local code, text = rcpt(i % 2 == 1 and a or b)
			assert.equal(250, code, text)
		end
		-- the limit+1th, on either instance, is refused
		local code, text = rcpt(LIMIT % 2 == 1 and b or a)
		assert.equal(452, code)
		assert.matches("Too many messages this hour", text)
		code = rcpt(a)
		assert.equal(452, code)
		assert.equal(tostring(LIMIT + 2), redis_cli(port, "GET limits:count"))
		-- the ttl was set once, by the incr that created the key
		local ttl = tonumber(redis_cli(port, "TTL limits:count"))
		assert.is_true(ttl > 3500 and ttl <= 3600, "ttl " .. tostring(ttl))
	end)

	it("has the API's semantics on a real Redis", function()
		local s = start([==[
local smtp = require "smtp"
local db = smtp.store.open("sem", { redis = "127.0.0.1:@PORT@" })
local function show(v) return math.type(v) or type(v) end
smtp.createServer(function(connection)
	connection:on("RCPT", function(recipient)
		local out = {}
		local function put(...) local t = table.pack(...) for i = 1, t.n do out[#out + 1] = tostring(t[i]) end end
		put(db:get("none"), db:set("s", "a b"), db:get("s"))
		put(db:set("i", 42), db:get("i"), show(db:get("i")))
		put(db:set("f", 0.5), db:get("f"), show(db:get("f")), db:set("g", 2.0), show(db:get("g")))
		put(db:add("s", "x"), db:add("n", "y", 100), db:get("n"))
		put(db:incr("c", 2, 100), db:incr("c", 3, 5), show(db:incr("c")))
		local t = db:ttl("c")
		put(t > 99 and t <= 100, db:ttl("none"), db:ttl("s") == math.huge)
		put(db:incr("f", 1), db:incr("i", 0.5))
		put(db:delete("s"), db:delete("s"), db:get("s"))
		put(pcall(db.incr, db, "n", 1))
		recipient.message = "2.1.5 " .. table.concat(out, ","):gsub("[^%w%.,: ]", "_")
	end)
end):listen(2525)
]==])
		local code, text = rcpt(s)
		assert.equal(250, code, text)
		local r = text:match("^250 2%.1%.5 (.*)$")
		assert.truthy(r, text)
		local parts = {}
		for p in (r .. ","):gmatch("(.-),") do parts[#parts + 1] = p end
		assert.same({ "nil", "true", "a b",
			"true", "42", "integer",
			"true", "0.5", "float", "true", "float",
			"false", "true", "y",
			"2", "5", "integer",
			"true", "nil", "true",
			"1.5", "42.5",
			"true", "false", "nil",
			"false" }, { table.unpack(parts, 1, 26) })
		assert.matches("store sem: redis", r)
		assert.equal("s:y", redis_cli(port, "GET sem:n"))
	end)

	it("handlers get nil, err while Redis is down, and service resumes when it is back", function()
		local a, b = start(POLICY), start(POLICY)
		assert.equal(250, (rcpt(a)))
		assert.equal(250, (rcpt(b)))
		redis_stop(rpid, "KILL")
		for _, s in ipairs { a, b, a } do
			local code, text = rcpt(s)
			assert.equal(451, code)
			assert.matches("Rate limit unavailable", text)
		end
		assert.matches("ratelimit: redis 127%.0%.0%.1:%d+: ", a:stderr())
		rpid = redis_start(port, dir)
		for _, s in ipairs { a, b } do
			support.wait_until(function() return rcpt(s) == 250 end, 15, "the store to work again")
		end
		assert.is_true(a:alive() and b:alive())
	end)

	it("a Redis that does not answer is a timeout: nil, err, and service resumes", function()
		local a = start(POLICY)
		assert.equal(250, (rcpt(a)))
		os.execute(("kill -STOP %d"):format(rpid))
		local ok, code, text = pcall(rcpt, a)
		os.execute(("kill -CONT %d"):format(rpid))
		assert.is_true(ok, code)
		assert.equal(451, code)
		assert.matches("Rate limit unavailable", text)
		assert.matches("ratelimit: redis 127%.0%.0%.1:%d+: timeout %(2 s%)", a:stderr())
		support.wait_until(function() return rcpt(a) == 250 end, 15, "the store to work again")
		-- the timed-out incr was sent: Redis may have done it when it woke
		assert.matches("^[23]$", redis_cli(port, "GET limits:count"))
	end)

	it("is refused at the top level, and never connects while checking", function()
		-- a store on a port nobody listens on: --check passes (no connection)
		local p = support.tmpdir()
		support.spit(p .. "/policy.lua", ([==[
local smtp = require "smtp"
local db = smtp.store.open("x", { redis = "127.0.0.1:1" })
smtp.createServer(function(connection)
	connection:on("RCPT", function() db:incr("k") end)
end):listen(2525)
]==]))
		local ok, _, out = support.run(shquote(support.binary()) .. " --check " .. shquote(p .. "/policy.lua"), 30)
		assert.is_true(ok, out)
		support.spit(p .. "/top.lua", ([==[
local smtp = require "smtp"
local db = smtp.store.open("x", { redis = "127.0.0.1:1" })
smtp.createServer():listen(2525)
db:get("k")
]==]))
		ok, _, out = support.run(shquote(support.binary()) .. " --check " .. shquote(p .. "/top.lua"), 30)
		assert.is_false(ok)
		assert.matches("store x: not open yet", out)
		os.execute("rm -rf " .. shquote(p))
	end)
end)
