-- spec/e2e/testing_redis_spec.lua -- smtp.testing with opts.redis: a policy's
-- Redis stores on a real redis-server (started here on a free loopback port,
-- stopped by PID) instead of in memory; two harnesses share it as two
-- machines would; Redis down is nil, err for the handler, and service comes
-- back with Redis.
local support = require "spec.e2e.support"
local R = require "spec.e2e.redis_support"
local testing = require "smtp.testing"

-- a limit of 2 recipients a minute, shared through Redis; the script names
-- an address of its own, which the harness replaces
local POLICY = [==[
local smtp = require "smtp"
local db = smtp.store.open("limits", { redis = "10.255.255.1:6379", timeout = 2 })
smtp.createServer(function(connection)
	connection:on("RCPT", function(recipient)
		local n, err = db:incr("rcpt", 1, 60)
		if not n then
			recipient.valid, recipient.code = false, 451
			recipient.message = "4.3.0 limits unavailable: " .. err
		elseif n > 2 then
			recipient.valid, recipient.code = false, 452
			recipient.message = "4.7.1 Too many recipients this minute (" .. n .. ")"
		end
	end)
end)
]==]

local function rcpt(h)
	local s = h:connect()
	s:expect(220)
	s:send("HELO client.example"):expect(250)
	s:send("MAIL FROM:<a@client.example>"):expect(250)
	local reply = s:send("RCPT TO:<b@dest.example>"):reply()
	s:close()
	assert(reply, "no reply to RCPT")
	return reply
end

describe("e2e: smtp.testing with opts.redis", function()
	local dir, port, pid

	before_each(function()
		dir = support.tmpdir()
		port = support.free_port()
		pid = R.start(port, dir)
	end)
	after_each(function()
		R.stop(pid)
		os.execute("rm -rf " .. support.shquote(dir))
	end)

	it("puts the script's Redis stores on that server: two harnesses share one counter", function()
		local a = testing.load_string(POLICY, { redis = "127.0.0.1:" .. port })
		local b = testing.load_string(POLICY, { redis = "127.0.0.1:" .. port })
		assert.equal(250, rcpt(a).code)
		assert.equal(250, rcpt(b).code)
		local third = rcpt(a)
		assert.equal(452, third.code)
		assert.matches("%(3%)", third.lines[1])
		-- the key is Redis's, in the backend's format, with the ttl set once
		assert.equal("3", R.cli(port, "GET limits:rcpt"))
		local pttl = tonumber(R.cli(port, "PTTL limits:rcpt"))
		assert.is_true(pttl > 0 and pttl <= 60000, "PTTL " .. tostring(pttl))
		-- without opts.redis the same script counts in memory, alone
		local m = testing.load_string(POLICY)
		assert.equal(250, rcpt(m).code)
	end)

	it("Redis down: the handler gets nil, err at once; service resumes when it is back", function()
		local h = testing.load_string(POLICY, { redis = "127.0.0.1:" .. port })
		assert.equal(250, rcpt(h).code)
		R.stop(pid)
		local down = rcpt(h)
		assert.equal(451, down.code)
		assert.matches("redis 127%.0%.0%.1:" .. port, down.lines[1])
		pid = R.start(port, dir)	-- empty again: no persistence
		assert.equal(250, rcpt(h).code)
		assert.equal("1", R.cli(port, "GET limits:rcpt"))
	end)

	it("refuses an address that is not host:port", function()
		assert.has_error(function() testing.load_string(POLICY, { redis = "localhost" }) end,
			'testing: opts.redis is "host:port" (got localhost)')
	end)
end)
