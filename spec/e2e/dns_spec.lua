-- spec/e2e/dns_spec.lua -- smtp.dns in the real server against a real
-- authoritative server: knotd (spec/e2e/knot.lua, on a free loopback port,
-- stopped by PID) serving a DNSBL zone, a zone with MX, TXT, CNAME, TLSA and
-- an RRset too big for 512 octets of UDP, a reverse zone, and a zone it has
-- no file for (SERVFAIL); a UDP socket that never answers stands for a
-- silent server.  scripts/dnsbl.lua runs against it; a thousand timed-out
-- lookups leave the worker with the descriptors it had.
local support = require "spec.e2e.support"
local knot = require "spec.e2e.knot"
local socket = require "socket"

local BIG = {}
for i = 1, 12 do BIG[i] = ('big TXT "%02d%s"'):format(i, ("x"):rep(60)) end

local ZONES = {
	["dnsbl.test"] = [[
$ORIGIN dnsbl.test.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
2.0.0.127 A 127.0.0.2
2.0.0.127 TXT "Listed by dnsbl.test, see https://dnsbl.test/?ip=127.0.0.2"
]],
	["bl2.test"] = [[
$ORIGIN bl2.test.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
2.0.0.127 A 127.0.0.4
]],
	["mail.test"] = [[
$ORIGIN mail.test.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
@ MX 20 mx2
@ MX 10 mx1
@ TXT "v=spf1 " "-all"
mx1 60 A 127.0.0.10
mx1 AAAA 2001:db8::10
mx2 A 127.0.0.11
client A 127.0.0.1
www CNAME mx1
implicit A 192.0.2.7
nullmx MX 0 .
_25._tcp.mx1 TLSA 3 1 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
]] .. table.concat(BIG, "\n") .. "\n",
	["0.0.127.in-addr.arpa"] = [[
$ORIGIN 0.0.127.in-addr.arpa.
$TTL 300
@ SOA ns.mail.test. hostmaster.mail.test. 1 3600 600 86400 60
@ NS ns.mail.test.
1 PTR client.mail.test.
]],
	["broken.test"] = false,	-- no zone file: SERVFAIL
}

-- a policy whose 'start' listener runs `body` (smtp in scope, resolvers the
-- knotd) and writes `return <what body returned>` to DIR/result
local function probe_policy(port, body, opts)
	return ([[
local smtp = require "smtp"
local server = smtp.createServer(function(c)
	c:on("HELO", function(h) h.message = "hostname=" .. tostring(c.hostname) end)
end)
server.resolvers = { "127.0.0.1:%d" }
-- knotd answers at once, but a loaded machine may stall either process for
-- seconds: no lookup here is meant to time out
server.dnsTimeout = 10
%s
local function dump(v)
	if type(v) ~= "table" then return type(v) == "string" and ("%%q"):format(v) or tostring(v) end
	local t = {}
	for k, x in pairs(v) do t[#t + 1] = "[" .. dump(k) .. "]=" .. dump(x) end
	return "{" .. table.concat(t, ",") .. "}"
end
server:on("start", function()
	local r = (function() %s end)()
	local f = io.open(@OUT@ .. "/result.tmp", "w")
	f:write("return " .. dump(r))
	f:close()
	os.rename(@OUT@ .. "/result.tmp", @OUT@ .. "/result")
end)
server:listen(2525)
]]):format(port, opts or "", body)
end

local function result(server)
	local text
	support.wait_until(function()
		text = support.slurp(server.dir .. "/result")
		return text
	end, 60, "the policy's result")
	return assert(load(text))(), text
end

describe("smtp.dns against knotd #dns", function()
	local ns, silent
	lazy_setup(function()
		ns = knot.start { zones = ZONES }
		silent = assert(socket.udp())	-- bound, never read: a server that never answers
		assert(silent:setsockname("127.0.0.1", 0))
	end)
	lazy_teardown(function()
		if ns then ns.stop() end
		if silent then silent:close() end
	end)

	it("gives records of every type, and tells the failures apart", function()
		local server = support.start { policy = probe_policy(ns.port, [[
			local q = smtp.dns.query
			local function all(...) return { ... } end
			return {
				mx = q("mail.test", "MX"), txt = q("mail.test", "TXT"), a = q("mx1.mail.test", "A"),
				aaaa = q("mx1.mail.test", "AAAA"), cname = q("www.mail.test", "CNAME"),
				chased = q("www.mail.test", "A"), ptr = smtp.dns.ptr("127.0.0.1"),
				tlsa = q("_25._tcp.mx1.mail.test", "TLSA"), big = q("big.mail.test", "TXT"),
				nx = all(q("nope.mail.test", "A")), nodata = all(q("mx2.mail.test", "AAAA")),
				servfail = all(q("x.broken.test", "A")), refused = all(q("other.example", "A")),
				implicit = smtp.dns.mx("implicit.mail.test"), nullmx = all(smtp.dns.mx("nullmx.mail.test")),
				mxs = smtp.dns.mx("mail.test"),
				-- the options change while an answer's handler runs (inside c-ares):
				-- the channel stays for now, the next lookup outside makes the new one
				again = (function()
					server.dnsTimeout = 12
					local r1 = q("mx2.mail.test", "A", { cache = false })
					smtp.sleep(0)
					local r2 = q("mx2.mail.test", "A", { cache = false })
					return { r1 and r1[1].address, r2 and r2[1].address }
				end)(),
			}
		]]) }
		local text
		local ok, err = xpcall(function()
			local r
			r, text = result(server)
			-- from the cache (mx asked first below): what is left of the TTL
			for _, m in ipairs(r.mxs) do
				assert.is_true(m.ttl > 0 and m.ttl <= 300)
				m.ttl = nil
			end
			assert.same({ { type = "MX", preference = 10, exchange = "mx1.mail.test" },
				{ type = "MX", preference = 20, exchange = "mx2.mail.test" } }, r.mxs)
			assert.equal(2, #r.mx)
			assert.same({ { type = "TXT", text = "v=spf1 -all", strings = { "v=spf1 ", "-all" }, ttl = 300 } }, r.txt)
			assert.same({ { type = "A", address = "127.0.0.10", ttl = 60 } }, r.a)
			assert.same({ { type = "AAAA", address = "2001:db8::10", ttl = 300 } }, r.aaaa)
			assert.same({ { type = "CNAME", name = "mx1.mail.test", ttl = 300 } }, r.cname)
			assert.equal("127.0.0.10", r.chased[1].address)
			assert.same({ "client.mail.test" }, r.ptr)
			assert.equal(3, r.tlsa[1].usage)
			assert.equal(("00112233445566778899aabbccddeeff"):rep(2), r.tlsa[1].hex)
			-- all twelve strings: the UDP answer was truncated (below) and c-ares asked again over TCP
			assert.equal(12, #r.big)
			assert.same({ [2] = "nxdomain", [3] = "NXDOMAIN" }, r.nx)
			assert.same({ [2] = "nodata", [3] = "NOERROR" }, r.nodata)
			assert.same({ [2] = "servfail", [3] = "SERVFAIL" }, r.servfail)
			assert.same({ [2] = "refused", [3] = "REFUSED" }, r.refused)
			assert.same({ { type = "MX", preference = 0, exchange = "implicit.mail.test", ttl = 300,
				implicit = true } }, r.implicit)
			assert.same({ [2] = "null MX", [3] = "NOERROR" }, r.nullmx)
			assert.same({ "127.0.0.11", "127.0.0.11" }, r.again)
		end, debug.traceback)
		local log = server:stderr()
		server:stop()
		server:cleanup()
		assert(ok, ("%s\n--- result ---\n%s\n--- server stderr ---\n%s"):format(tostring(err),
			tostring(text), log))
		-- the big RRset does not fit 512 octets: knotd sets TC over UDP without EDNS
		local _, _, out = support.run(("dig +ignore +noedns +notcp -p %d @127.0.0.1 big.mail.test TXT"):format(ns.port), 10)
		assert.matches("flags: qr aa tc", out)
	end)

	it("confirms the client's reverse name for connection.hostname", function()
		local server = support.start { policy = probe_policy(ns.port, "return true") }
		local ok, err = pcall(function()
			local c = support.connect(server)
			c:expect("^220 ")
			c:cmd("HELO client.example", "^250 .*hostname=client%.mail%.test")
			c:close()
			c = support.connect(server, "127.0.0.2")	-- no PTR for 127.0.0.2
			c:expect("^220 ")
			c:cmd("HELO client.example", "^250 .*hostname=nil")
			c:close()
		end)
		server:stop()
		server:cleanup()
		assert(ok, err)
	end)

	it("runs scripts/dnsbl.lua: listed clients refused with the reason, others greeted", function()
		local server = support.start {
			policy = support.slurp("scripts/dnsbl.lua"),
			-- (a lookup that timed out on a loaded machine would greet the listed client)
			env = { DNSBL_ZONES = "dnsbl.test,bl2.test,mail.test", DNSBL_RESOLVERS = "127.0.0.1:" .. ns.port,
				DNSBL_TIMEOUT = "10" },
		}
		local ok, err = pcall(function()
			local c = support.connect(server, "127.0.0.2")
			c:expect("^554 5%.7%.1 .*client %[127%.0%.0%.2%] blocked using dnsbl%.test; "
				.. "Listed by dnsbl%.test, see https://dnsbl%.test/%?ip=127%.0%.0%.2")
			c:close()
			c = support.connect(server)	-- 127.0.0.1: listed nowhere
			c:expect("^220 ")
			c:cmd("QUIT", "^221")
			c:close()
		end)
		server:stop()
		server:cleanup()
		assert(ok, err)
	end)

	it("says 421 when a zone's server never answers, with DNSBL_ON_FAILURE=tempfail", function()
		local _, sport = silent:getsockname()
		local server = support.start {
			policy = support.slurp("scripts/dnsbl.lua"),
			env = { DNSBL_ZONES = "dnsbl.test", DNSBL_RESOLVERS = "127.0.0.1:" .. sport,
				DNSBL_TIMEOUT = "0.2", DNSBL_ON_FAILURE = "tempfail" },
		}
		local ok, err = pcall(function()
			local c = support.connect(server)
			c:expect("^421 4%.7%.1 .*Cannot check your address now")
			c:close()
			server:await_log("dnsbl: dnsbl%.test: timeout", 30)
		end)
		server:stop()
		server:cleanup()
		assert(ok, err)
	end)

	it("leaves no descriptor behind after a thousand timed-out lookups", function()
		local _, sport = silent:getsockname()
		local server = support.start { policy = ([[
local smtp = require "smtp"
local server = smtp.createServer(function(c)
	c:on("HELO", function(h)
		if h.name == "warm.example" then	-- one lookup: the resolver and its socket exist
			local _, err = smtp.dns.query("warm.silent.test", "A")
			h.message = "warm " .. tostring(err)
			return
		end
		local timeouts, fns = 0, {}
		for i = 1, 100 do
			fns[i] = function(n)
				local r, err = smtp.dns.query(("t%%d-%%d.silent.test"):format(n, i), "A")
				if err == "timeout" then timeouts = timeouts + 1 end
			end
		end
		for batch = 1, 10 do
			local round = {}
			for i = 1, 100 do round[i] = function() return fns[i](batch) end end
			smtp.all(round)
		end
		h.message = "timeouts=" .. timeouts
	end)
end)
server.resolvers = { "127.0.0.1:%d" }
server.dnsTimeout = 0.05
server.dnsRetries = 0
server:listen(2525)
]]):format(sport) }
		local ok, err = pcall(function()
			local worker
			support.wait_until(function()
				worker = server:children()[1]
				return worker
			end, 30, "the worker")
			local c = support.connect(server)
			c.tcp:settimeout(60)
			c:expect("^220 ")
			c:cmd("HELO warm.example", "^250 .*warm timeout")
			c:quit()	-- the server's EOF: the session's socket is closed
			local before = support.fd_count(worker)
			c = support.connect(server)
			c.tcp:settimeout(60)	-- ten rounds of timeouts, on a loaded machine
			c:expect("^220 ")
			c:cmd("HELO client.example", "^250 .*timeouts=1000")
			c:quit()
			-- the resolver keeps its one UDP socket, as before
			support.await_fd_count(worker, before, "the worker after a thousand timed-out lookups")
		end)
		server:stop()
		server:cleanup()
		assert(ok, err)
	end)
end)
