-- spec/e2e/store_dump_spec.lua -- luasmtpd --store-dump: an LMDB store's
-- live keys as text, and as Redis commands that redis-cli --pipe loads into a
-- real redis-server (started here on a free loopback port, stopped by PID),
-- where the Redis backend reads back every value with its type and ttl.
local support = require "spec.e2e.support"
local R = require "spec.e2e.redis_support"
local testing = require "smtp.testing"
local shquote = support.shquote

local TRIPLET = "t:192.0.2.0\0a@client.example\0b@dest.example"

-- writes store "grey" in dir through the LMDB backend, as a worker would
local function write_store(dir)
	local now = os.time()
	local s = require("smtp_store").open(dir .. "/grey.mdb", 1 << 20, "grey")
	s:set(TRIPLET, "passed", 3600, now, false)
	s:set("count", 42, nil, now, false)
	s:set("half", 2.5, nil, now, false)
	s:set("whole", 3.0, nil, now, false)
	s:set("odd\tkey", 'say "hi"\n', nil, now, false)
	s:set("gone", "x", 1, now - 10, false)	-- expired already: not dumped
	s:close()
end

local function dump(dir, name, format)
	local cmd = shquote(support.binary()) .. " --store-dump " .. shquote(name) .. " --state-dir " .. shquote(dir)
	if format then cmd = cmd .. " --dump-format " .. format end
	return support.run(cmd, 30)
end

describe("e2e: luasmtpd --store-dump", function()
	local dir

	before_each(function()
		dir = support.tmpdir()
		write_store(dir)
	end)
	after_each(function() os.execute("rm -rf " .. shquote(dir)) end)

	it("lists every live key: key, seconds left, value, escaped", function()
		local ok, _, out = dump(dir, "grey")
		assert.is_true(ok, out)
		local lines = {}
		for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
		table.sort(lines)
		assert.equal(5, #lines, out)
		assert.equal("count\t-\t42", lines[1])
		assert.equal("half\t-\t2.5", lines[2])
		assert.equal('odd\\tkey\t-\t"say \\"hi\\"\\n"', lines[3])
		local key, left, value = lines[4]:match("^([^\t]*)\t([^\t]*)\t(.*)$")
		assert.equal("t:192.0.2.0\\x00a@client.example\\x00b@dest.example", key)
		assert.is_true(tonumber(left) > 3500 and tonumber(left) <= 3600, left)
		assert.equal('"passed"', value)
		assert.equal("whole\t-\t3.0", lines[5])
	end)

	it("fails with a clear message for a store that is not there or a bad name", function()
		local ok, code, out = dump(dir, "nosuch")
		assert.is_false(ok)
		assert.equal(1, code)
		assert.matches("luasmtpd: store nosuch: cannot read .*/nosuch%.mdb: No such file", out)
		ok, code, out = dump(dir, "../grey")
		assert.is_false(ok)
		assert.matches("bad store name '%.%./grey'", out)
		ok, code, out = dump(dir, "grey", "json")
		assert.equal(2, code)
		assert.matches("bad %-%-dump%-format 'json' %(text or redis%)", out)
	end)

	describe("moved to Redis", function()
		local rdir, port, pid
		before_each(function()
			rdir = support.tmpdir()
			port = support.free_port()
			pid = R.start(port, rdir)
		end)
		after_each(function()
			R.stop(pid)
			os.execute("rm -rf " .. shquote(rdir))
		end)

		it("loads with redis-cli --pipe and reads back through the Redis backend", function()
			local cmd = shquote(support.binary()) .. " --store-dump grey --state-dir " .. shquote(dir)
				.. " --dump-format redis | redis-cli -p " .. port .. " --pipe"
			local ok, _, out = support.run(cmd, 30)
			assert.is_true(ok, out)
			assert.matches("errors: 0, replies: 5", out)
			-- the keys and values the Redis backend would have written
			assert.equal("42", R.cli(port, "GET grey:count"))
			assert.equal("2.5", R.cli(port, "GET grey:half"))
			assert.equal("3.0", R.cli(port, "GET grey:whole"))
			assert.equal("-1", R.cli(port, "PTTL grey:count"))
			assert.equal("", R.cli(port, "GET grey:gone"))
			-- a policy on the Redis backend reads each value back with its type, and the ttl
			local h = testing.load_string([==[
				local smtp = require "smtp"
				local db = smtp.store.open("grey", { redis = "127.0.0.1:6379" })
				smtp.createServer(function(connection)
					connection:on("RCPT", function(recipient)
						local t = {}
						for _, k in ipairs { TRIPLET, "count", "half", "whole", "odd\tkey", "gone" } do
							local v = db:get(k)
							t[#t + 1] = ("%s=%s"):format(math.type(v) or type(v), tostring(v))
						end
						t[#t + 1] = ("ttl=%d"):format(math.floor(db:ttl(TRIPLET)))
						recipient.message = "2.1.5 " .. table.concat(t, " "):gsub("[\r\n]", "|")
					end)
				end)
			]==], { redis = "127.0.0.1:" .. port, globals = { TRIPLET = TRIPLET } })
			local s = h:connect()
			s:expect(220)
			s:send("HELO client.example"):expect(250)
			s:send("MAIL FROM:<a@client.example>"):expect(250)
			local r = s:send("RCPT TO:<b@dest.example>"):expect(250)
			local text = r.lines[1]
			assert.matches("^string=passed integer=42 float=2%.5 float=3%.0 string=say \"hi\"| nil=nil ttl=%d+$", text)
			local ttl = tonumber(text:match("ttl=(%d+)$"))
			assert.is_true(ttl > 3500 and ttl <= 3600, text)
		end)
	end)
end)
