-- spec/e2e/metrics_spec.lua -- --metrics: the Prometheus endpoint, summed
-- over every worker.
--
-- Two workers serve a known load: one is held in a HELO listener (outside
-- its event loop) while the other serves three transactions, so both serve
-- some.  /metrics is then parsed by Python's prometheus_client (the
-- Debian package) and every counter must match the load exactly.  A worker
-- killed with SIGKILL and a reload must not take any count back; the
-- restart and the reload are counted.
local support = require "spec.e2e.support"

-- HELO's reply names the worker; HELO hold.example holds its worker until
-- DIR/go exists; RCPT bad... is refused, RCPT boom... raises; a message
-- from refuse@ is rejected at its end.
local POLICY = [==[
local smtp = require "smtp"
local OUT = @OUT@

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
		h.message = "worker " .. pid()
	end)
	conn:on("RCPT", function(r)
		if r.address:find("boom", 1, true) then error("boom") end
		if r.address:find("bad", 1, true) then r.valid = false end
	end)
	conn:on("DATA", function(message)
		message:on("end", function()
			if message.sender.address:find("refuse", 1, true) then message:reject() else message:accept() end
		end)
	end)
end):listen(2525)
]==]

-- Prints every sample as "name|label=value,...|value" and every family as
-- "#TYPE|name|type"; the parser raises on anything not in the text format.
local SCRAPE = [[
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    assert r.status == 200, r.status
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
    text = r.read().decode("utf-8")
for fam in text_string_to_metric_families(text):
    print("#TYPE|%s|%s" % (fam.name, fam.type))
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s|%s|%r" % (s.name, labels, s.value))
]]

-- Prints "PATH METHOD STATUS" for a few requests that are not a scrape.
local CODES = [[
import sys, urllib.request, urllib.error
for path, method in (("/", "GET"), ("/metrics/x", "GET"), ("/metrics", "POST")):
    try:
        urllib.request.urlopen(urllib.request.Request(sys.argv[1].replace("/metrics", path), method=method), timeout=10)
        print(path, method, 200)
    except urllib.error.HTTPError as e:
        print(path, method, e.code)
]]

local BODY = "Subject: hi\r\n\r\nhello\r\n"	-- 22 octets, then "."

describe("e2e: --metrics", function()
	local server, url

	-- { ["name{k=v,...}"] = number, types = { family = type } }
	local function scrape()
		local ok, _, out = support.run(("/usr/bin/python3 %s/scrape.py %s"):format(server.dir, url), 30)
		assert(ok, "scrape failed:\n" .. out)
		local m = { types = {} }
		for line in out:gmatch("[^\n]+") do
			local fam, ty = line:match("^#TYPE|([^|]*)|(.*)$")
			if fam then
				m.types[fam] = ty
			else
				local name, labels, v = line:match("^([^|]+)|([^|]*)|(.*)$")
				assert(name, "bad line " .. line)
				m[labels == "" and name or (name .. "{" .. labels .. "}")] = tonumber(v)
			end
		end
		return m
	end

	local function transaction(c, from, rcpts, body)
		c:cmd("MAIL FROM:<" .. from .. ">", "^250 ")
		for _, r in ipairs(rcpts) do
			c:cmd("RCPT TO:<" .. r .. ">", r:find("bad", 1, true) and "^550 " or "^250 ")
		end
		c:cmd("DATA", "^354 ")
		c:send(body .. ".\r\n")
	end

	setup(function()
		server = support.start { policy = POLICY, workers = 2, grace = 5,
			args = { "--metrics", "127.0.0.1:0" } }
		url = server:await_log("metrics on (http://127%.0%.0%.1:%d+/metrics)")
		support.spit(server.dir .. "/scrape.py", SCRAPE)
	end)

	teardown(function()
		if server then
			server:stop(15)
			server:cleanup()
		end
	end)

	local totals		-- the counters after the load

	it("counts a known load over two workers exactly", function()
		-- worker A is held in HELO: the next clients go to worker B
		local held = support.connect(server)
		held:expect("^220 ")
		held:send("HELO hold.example\r\n")
		support.wait_until(function() return server:read("held") end, 10, "a worker to be held")

		local pid_b
		for _ = 1, 3 do
			local c = support.connect(server)
			c:expect("^220 ")
			local r = c:cmd("HELO client.example", "^250 worker %d+")
			local pid = tonumber(r.text:match("worker (%d+)"))
			assert.truthy(pid_b == nil or pid_b == pid)
			pid_b = pid
			transaction(c, "a@client.example", { "b@dest.example", "bad@dest.example" }, BODY)
			c:expect("^250 ")
			c:cmd("QUIT", "^221 ")
			c:close()
		end

		support.spit(server.dir .. "/go", "")
		local pid_a = tonumber(held:expect("^250 worker %d+").text:match("worker (%d+)"))
		assert.are_not.equal(pid_a, pid_b)
		transaction(held, "a@client.example", { "c@dest.example" }, BODY)
		held:expect("^250 ")
		transaction(held, "refuse@client.example", { "c@dest.example" }, BODY)
		held:expect("^550 ")
		transaction(held, "a@client.example", { "c@dest.example" }, "Subject: x\nbare LF\r\n")
		held:expect("^550 5%.6%.0 ")
		held:cmd("QUIT", "^221 ")
		held:close()

		-- one more connection: a handler error (451), on either worker
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("HELO client.example", "^250 ")
		c:cmd("MAIL FROM:<a@client.example>", "^250 ")
		c:cmd("RCPT TO:<boom@dest.example>", "^451 ")
		c:cmd("QUIT", "^221 ")
		c:close()

		-- the server frees a connection a moment after the client's QUIT
		local m
		support.wait_until(function()
			m = scrape()
			return m.luasmtpd_connections_open == 0
		end, 10, "luasmtpd_connections_open to be 0")

		assert.equal("counter", m.types.luasmtpd_connections)
		assert.equal("gauge", m.types.luasmtpd_connections_open)
		assert.equal("histogram", m.types.luasmtpd_handler_seconds)
		assert.equal(5, m.luasmtpd_connections_total)
		assert.equal(0, m["luasmtpd_connections_refused_total{reason=limit}"])
		assert.equal(5, m["luasmtpd_commands_total{verb=helo}"])
		assert.equal(7, m["luasmtpd_commands_total{verb=mail}"])
		assert.equal(10, m["luasmtpd_commands_total{verb=rcpt}"])
		assert.equal(6, m["luasmtpd_commands_total{verb=data}"])
		assert.equal(5, m["luasmtpd_commands_total{verb=quit}"])
		assert.equal(0, m["luasmtpd_commands_total{verb=other}"])
		assert.equal(5, m["luasmtpd_replies_total{class=2xx,event=connect}"])
		assert.equal(5, m["luasmtpd_replies_total{class=2xx,event=helo}"])
		assert.equal(6, m["luasmtpd_replies_total{class=2xx,event=rcpt}"])
		assert.equal(3, m["luasmtpd_replies_total{class=5xx,event=rcpt}"])
		assert.equal(1, m["luasmtpd_replies_total{class=4xx,event=rcpt}"])
		assert.equal(6, m["luasmtpd_replies_total{class=3xx,event=data}"])
		assert.equal(4, m["luasmtpd_replies_total{class=2xx,event=data_end}"])
		assert.equal(2, m["luasmtpd_replies_total{class=5xx,event=data_end}"])
		assert.equal(4, m["luasmtpd_messages_total{result=accepted}"])
		assert.equal(1, m["luasmtpd_messages_total{result=rejected}"])
		assert.equal(1, m["luasmtpd_messages_total{result=failed}"])
		assert.equal(4 * #BODY, m["luasmtpd_message_octets_total{result=accepted}"])
		assert.equal(#BODY, m["luasmtpd_message_octets_total{result=rejected}"])
		assert.truthy(m["luasmtpd_message_octets_total{result=failed}"] <= #"Subject: x\nbare LF\r\n")
		assert.equal(1, m.luasmtpd_handler_errors_total)
		assert.equal(0, m.luasmtpd_handler_budget_stops_total)
		-- every RCPT and HELO ran its listener once, each timed
		assert.equal(10, m["luasmtpd_handler_seconds_count{event=rcpt}"])
		assert.equal(10, m["luasmtpd_handler_seconds_bucket{event=rcpt,le=+Inf}"])
		assert.equal(5, m["luasmtpd_handler_seconds_count{event=helo}"])
		-- the held HELO took as long as the hold, at least the three transactions
		assert.truthy(m["luasmtpd_handler_seconds_sum{event=helo}"] > 0)
		assert.truthy(m["luasmtpd_lua_memory_bytes{pid=" .. pid_a .. ",worker=0}"]
			or m["luasmtpd_lua_memory_bytes{pid=" .. pid_a .. ",worker=1}"])
		assert.truthy(m["luasmtpd_lua_memory_bytes{pid=" .. pid_b .. ",worker=0}"]
			or m["luasmtpd_lua_memory_bytes{pid=" .. pid_b .. ",worker=1}"])
		assert.equal(0, m["luasmtpd_tls_handshakes_total{result=success}"])
		assert.equal(0, m["luasmtpd_auth_total{result=failure}"])
		assert.equal(0, m.luasmtpd_worker_restarts_total)
		assert.equal(0, m["luasmtpd_reloads_total{result=success}"])
		totals = m
		totals.pid_b = pid_b
	end)

	-- the counters that must never go back
	local KEPT = {
		"luasmtpd_connections_total", "luasmtpd_commands_total{verb=rcpt}",
		"luasmtpd_replies_total{class=5xx,event=rcpt}", "luasmtpd_messages_total{result=accepted}",
		"luasmtpd_message_octets_total{result=accepted}", "luasmtpd_handler_errors_total",
		"luasmtpd_handler_seconds_count{event=rcpt}",
	}

	it("keeps a killed worker's counts and counts its restart", function()
		assert.truthy(totals, "the load ran")
		assert.is_true(os.execute("kill -KILL " .. totals.pid_b) == true)
		local slot = server:await_log("worker(%d)%[" .. totals.pid_b .. "%] was killed by signal 9")
		server:await_log("worker" .. slot .. "%[%d+%] accepting", 10,
			(server:stderr():find("was killed by signal 9", 1, true)))
		local m = scrape()
		for _, k in ipairs(KEPT) do assert.equal(totals[k], m[k], k) end
		assert.equal(1, m.luasmtpd_worker_restarts_total)
		for k in pairs(m) do
			assert.falsy(k:find("pid=" .. totals.pid_b .. ",", 1, true), "a dead worker's gauge: " .. k)
		end
	end)

	it("keeps every count across a reload and counts it", function()
		assert.truthy(totals, "the load ran")
		local old = server:children()
		server:signal("HUP")
		server:await_log("reload: generation 2 serving")
		support.wait_until(function()
			for _, pid in ipairs(old) do
				if os.execute("kill -0 " .. pid .. " 2>/dev/null") == true then return false end
			end
			return true
		end, 15, "the old workers to exit")
		local m = scrape()
		for _, k in ipairs(KEPT) do assert.equal(totals[k], m[k], k) end
		assert.equal(1, m["luasmtpd_reloads_total{result=success}"])
		assert.equal(1, m.luasmtpd_worker_restarts_total)
		assert.equal(0, m.luasmtpd_connections_open)
	end)

	it("answers 404 elsewhere and 405 to other methods", function()
		support.spit(server.dir .. "/codes.py", CODES)
		local ok, _, out = support.run(("/usr/bin/python3 %s/codes.py %s"):format(server.dir, url), 30)
		assert(ok, out)
		assert.matches("/ GET 404", out, 1, true)
		assert.matches("/metrics/x GET 404", out, 1, true)
		assert.matches("/metrics POST 405", out, 1, true)
	end)
end)

-- --workers 0: the single process serves the endpoint; TLS handshakes,
-- refusals by maxConnections, budget stops and AUTH results are counted.
local POLICY0 = [==[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("AUTH", function(a) a.valid = a.username == "alice" and a.password == "secret" end)
	conn:on("RCPT", function(r)
		if r.address:find("loop", 1, true) then while true do end end
	end)
end)
server.maxConnections = 1
server.handlerBudget = 1000000
server.authMethods = { "PLAIN" }
server.tls = { cert = @DIR@ .. "/cert.pem", key = @DIR@ .. "/key.pem" }
server:listen(@PORT@, "127.0.0.1", { insecureAuth = true })
server:listen(@IMPLICIT@, "127.0.0.1", { tls = true })
]==]

describe("e2e: --metrics with --workers 0", function()
	local server, url, port, implicit, certdir

	setup(function()
		port, implicit = support.free_port(), support.free_port()
		-- the certificate exists before the script loads
		certdir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=localhost -keyout %s/key.pem -out %s/cert.pem")
			:format(certdir, certdir), 30)
		assert(ok, out)
		local policy = POLICY0:gsub("@PORT@", port):gsub("@IMPLICIT@", implicit)
			:gsub("@DIR@", function() return ("%q"):format(certdir) end)
		server = support.start { policy = policy, workers = 0,
			args = { "--metrics", "127.0.0.1:0", "--listen", "127.0.0.1:" .. port,
				"--listen", "127.0.0.1:" .. implicit } }
		url = server:await_log("metrics on (http://127%.0%.0%.1:%d+/metrics)")
		support.spit(server.dir .. "/scrape.py", SCRAPE)
	end)

	teardown(function()
		if server then
			server:stop(15)
			server:cleanup()
		end
		if certdir then os.execute("rm -rf " .. support.shquote(certdir)) end
	end)

	it("counts TLS handshakes, refusals, budget stops and AUTH results", function()
		-- a handshake that succeeds, then one that fails (plaintext on the implicit-TLS port)
		local ok, _, out = support.run(("openssl s_client -connect 127.0.0.1:%d </dev/null")
			:format(implicit), 30)
		assert(ok, out)
		local _, seen = server:await_find("TLS started")
		server:await_find("connection [^\n]* end=", 10, seen)
		local t = support.connect(setmetatable({ port = implicit }, { __index = server }))
		t:send("EHLO plaintext.example\r\n")
		t:expect_closed()
		t:close()
		server:await_find("TLS handshake with [^\n]* failed")

		local mime = require "mime"
		local at = setmetatable({ port = port }, { __index = server })	-- the insecureAuth listener
		local c = support.connect(at)
		c:expect("^220 ")
		-- the one place is taken: the next client is refused before any Lua
		local r = support.connect(at)
		r:expect("^421 4%.7%.0 ")
		r:close()
		c:cmd("EHLO client.example", "^250[ -]")
		c:cmd("AUTH PLAIN " .. mime.b64("\0alice\0wrong"), "^535 ")
		c:cmd("AUTH PLAIN " .. mime.b64("\0alice\0secret"), "^235 ")
		c:cmd("MAIL FROM:<a@client.example>", "^250 ")
		c:cmd("RCPT TO:<loop@dest.example>", "^451 ")
		c:cmd("QUIT", "^221 ")
		c:close()

		local ok, _, out = support.run(("/usr/bin/python3 %s/scrape.py %s"):format(server.dir, url), 30)
		assert(ok, out)
		local function value(series)
			return tonumber(out:match("\n" .. series:gsub("%p", "%%%0") .. "|(%S+)"))
		end
		assert.equal(3, value("luasmtpd_connections_total|"))	-- two TLS, one SMTP; the refused one is not
		assert.equal(1, value("luasmtpd_connections_refused_total|reason=limit"))
		assert.equal(1, value("luasmtpd_auth_total|result=success"))
		assert.equal(1, value("luasmtpd_auth_total|result=failure"))
		assert.equal(2, value("luasmtpd_commands_total|verb=auth"))
		assert.equal(1, value("luasmtpd_replies_total|class=5xx,event=auth"))
		assert.equal(1, value("luasmtpd_handler_budget_stops_total|"))
		assert.equal(1, value("luasmtpd_handler_errors_total|"))
		assert.equal(0, value("luasmtpd_worker_restarts_total|"))
		assert.equal(1, value("luasmtpd_tls_handshakes_total|result=success"))
		assert.equal(1, value("luasmtpd_tls_handshakes_total|result=failure"))
		assert.truthy(out:find("\nluasmtpd_lua_memory_bytes|pid=" .. server.pid .. ",worker=0|", 1, true))
	end)
end)
