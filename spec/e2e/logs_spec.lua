-- spec/e2e/logs_spec.lua -- the summary lines, as text, as JSON and through syslog.
--
-- One known dialogue, the same for each server: a plaintext session (raw
-- client) with an accepted message for two recipients and one refused
-- RCPT, then a message the policy rejects at the end of its data, then QUIT;
-- a second session (Python's smtplib) that does STARTTLS, AUTH PLAIN as
-- alice and delivers one message.  The transaction, refusal and connection
-- lines are checked field by field: the text lines as key=value, the JSON
-- lines parsed (every line by Python's json, strictly; the fields with
-- dkjson) with their set of keys compared exactly.  A third server logs to
-- a unix datagram socket this spec binds, as the local syslog.
local socket = require "socket"
local json = require "dkjson"
local support = require "spec.e2e.support"

local PY = "/usr/bin/python3"

local POLICY = [==[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("EHLO", function()
		-- a format error and a client's raw bytes: logged, escaped, never lost
		conn:log("info", "after %d s", 2.5)
		conn:log("info", "raw %s", "a\1\255\"b")
	end)
	conn:on("AUTH", function(auth)
		auth.valid = auth.username == "alice" and auth.password == "secret"
	end)
	conn:on("RCPT", function(rcpt)
		if rcpt.address:find("^unknown@") then
			rcpt.valid, rcpt.code, rcpt.message = false, 550, "5.1.1 User unknown"
		end
	end)
	conn:on("DATA", function(msg)
		local body = {}
		msg:on("data", function(c) body[#body + 1] = c end)
		msg:on("end", function()
			if table.concat(body):find("REJECTME", 1, true) then
				return msg:reject(554, "5.7.1 Content \"refused\"")
			end
			msg:accept()
		end)
	end)
end)
server.tls = { cert = @CERT@, key = @KEY@ }
server.authMethods = { "PLAIN" }
server:listen(2525)
]==]

local BODY1 = "Subject: one\r\n\r\nhello\r\n"
local BODY2 = "Subject: two\r\n\r\nREJECTME\r\n"

-- The plaintext session; returns the client's port.
local function plain_dialogue(server)
	local c = support.connect(server)
	local _, port = c.tcp:getsockname()
	c:hello("client.example")
	c:cmd("MAIL FROM:<alice@example.org>", "^250 ")
	c:cmd("RCPT TO:<bob@example.net>", "^250 ")
	c:cmd("RCPT TO:<unknown@example.net>", "^550 5%.1%.1 User unknown")
	c:cmd('RCPT TO:<"carol x"@example.net>', "^250 ")
	c:cmd("DATA", "^354 ")
	c:cmd(BODY1 .. ".", "^250 ")
	c:cmd("MAIL FROM:<>", "^250 ")
	c:cmd("RCPT TO:<bob@example.net>", "^250 ")
	c:cmd("DATA", "^354 ")
	c:cmd(BODY2 .. ".", '^554 5%.7%.1 Content "refused"')
	c:cmd("QUIT", "^221 ")
	c:expect_closed()
	return tonumber(port)
end

-- The TLS session: STARTTLS, AUTH, one message; returns the client's port and cipher.
local function tls_dialogue(server)
	local ok, code, out = support.run(("%s -c %s %s %d"):format(PY, support.shquote([[
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10) as s:
    s.ehlo("tls.example")
    s.starttls(context=ctx)
    s.ehlo("tls.example")
    s.login("alice", "secret")
    s.sendmail("alice@example.org", ["dave@example.net"], b"Subject: three\r\n\r\nhi\r\n")
    print(s.sock.getsockname()[1], s.sock.cipher()[0])
]]), server.host, server.port), 30)
	assert(ok, ("smtplib failed (%s):\n%s\n--- server ---\n%s"):format(tostring(code), out,
		server:stderr()))
	local port, cipher = out:match("(%d+) (%S+)")
	return tonumber(port), cipher
end

local function certs()
	local dir = support.tmpdir()
	local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
		.. " -nodes -days 2 -subj /CN=localhost -keyout %s/key.pem -out %s/cert.pem"):format(dir, dir), 30)
	assert(ok, out)
	return dir, POLICY:gsub("@CERT@", ("%q"):format(dir .. "/cert.pem"))
		:gsub("@KEY@", ("%q"):format(dir .. "/key.pem"))
end

-- Every line of the log whose (text) event is name, in order.
local function text_events(log, name)
	local lines = {}
	for line in log:gmatch("[^\n]+") do
		if line:match("^%S+ info  worker0%[%d+%] %[%x+%] " .. name .. " client=") then
			lines[#lines + 1] = line
		end
	end
	return lines
end

-- The key=value fields of a text line after its event name, unquoted; "to" collects.
local function text_fields(line)
	local rest = line:match("^%S+ info  %S+ %[%x+%] %S+ (.*)$")
	local f, i = { to = {} }, 1
	while i <= #rest do
		local key, q = rest:match("^([%w_]+)=(\"?)", i)
		assert(key, "no key at " .. i .. " in " .. line)
		i = i + #key + 1
		local val
		if q == '"' then
			local j, buf = i + 1, {}
			while true do
				local ch = rest:sub(j, j)
				assert(ch ~= "", "unterminated quote in " .. line)
				if ch == '"' then break end
				if ch == "\\" then
					local n = rest:sub(j + 1, j + 1)
					if n == "x" then
						buf[#buf + 1] = string.char(tonumber(rest:sub(j + 2, j + 3), 16))
						j = j + 4
					else
						buf[#buf + 1] = ({ n = "\n", r = "\r", t = "\t" })[n] or n
						j = j + 2
					end
				else
					buf[#buf + 1] = ch
					j = j + 1
				end
			end
			val, i = table.concat(buf), j + 1
		else
			val = rest:match("^[^ ]*", i)
			i = i + #val
		end
		if key == "to" then f.to[#f.to + 1] = val else
			assert(f[key] == nil, "key " .. key .. " twice in " .. line)
			f[key] = val
		end
		if rest:sub(i, i) == " " then i = i + 1 end
	end
	return f
end

-- Asserts that t has exactly the keys of want and equal values (want[k] == ANY: any value).
local ANY = {}
local function same(want, t, what)
	for k, v in pairs(want) do
		assert.is_not_nil(t[k], what .. ": key " .. k .. " missing")
		if v ~= ANY then assert.same(v, t[k], what .. ": key " .. k) end
	end
	for k in pairs(t) do
		assert.is_not_nil(want[k], what .. ": unexpected key " .. k)
	end
end

local function seconds(v)
	local n = tonumber(v)
	assert(n and n >= 0 and n < 600, "not a duration: " .. tostring(v))
	return n
end

describe("e2e: summary lines", function()
	local dir, policy

	lazy_setup(function() dir, policy = certs() end)
	lazy_teardown(function() if dir then os.execute("rm -rf " .. support.shquote(dir)) end end)

	describe("as text", function()
		local server, port1, port2, cipher

		lazy_setup(function()
			server = support.start { policy = policy }
			port1 = plain_dialogue(server)
			port2, cipher = tls_dialogue(server)
			server:await_log("%] connection client=127%.0%.0%.1 port=" .. port2 .. " ")
		end)
		lazy_teardown(function() if server then server:stop(); server:cleanup() end end)

		it("one line per transaction: client, HELO, sender, each recipient's code, size, reply, result", function()
			local tx = text_events(server:stderr(), "transaction")
			assert.equal(3, #tx, server:stderr())
			local f = text_fields(tx[1])
			local d = seconds(f.duration)
			same({ client = "127.0.0.1", port = tostring(port1), helo = "client.example",
				from = "<alice@example.org>", to = { "<bob@example.net>:250/2.1.5",
				"<unknown@example.net>:550/5.1.1", '<"carol x"@example.net>:250/2.1.5' },
				size = tostring(#BODY1), code = "250", enhanced = "2.0.0", result = "accepted",
				duration = ANY }, f, tx[1])
			assert(d >= 0)
			-- the quoted local part is quoted again, escaped, in the text line
			assert.matches([[ to="<\"carol x\"@example.net>:250/2.1.5" ]], tx[1], 1, true)
			f = text_fields(tx[2])
			same({ client = "127.0.0.1", port = tostring(port1), helo = "client.example",
				from = "<>", to = { "<bob@example.net>:250/2.1.5" }, size = tostring(#BODY2),
				code = "554", enhanced = "5.7.1", result = "rejected", duration = ANY }, f, tx[2])
			f = text_fields(tx[3])
			same({ client = "127.0.0.1", port = tostring(port2), helo = "tls.example",
				tls = "TLSv1.3", cipher = cipher, user = "alice", from = "<alice@example.org>",
				to = { "<dave@example.net>:250/2.1.5" }, size = tostring(#"Subject: three\r\n\r\nhi\r\n"),
				code = "250", enhanced = "2.0.0", result = "accepted", duration = ANY }, f, tx[3])
		end)

		it("one line per refusal, with the command and the reply", function()
			local r = text_events(server:stderr(), "refusal")
			assert.equal(2, #r, server:stderr())
			same({ client = "127.0.0.1", port = tostring(port1), helo = "client.example",
				command = "RCPT", address = "<unknown@example.net>", code = "550",
				enhanced = "5.1.1", text = "User unknown", to = {} }, text_fields(r[1]), r[1])
			same({ client = "127.0.0.1", port = tostring(port1), helo = "client.example",
				command = "DATA_END", code = "554", enhanced = "5.7.1",
				text = 'Content "refused"', to = {} }, text_fields(r[2]), r[2])
		end)

		it("one line per connection, with its counts, bytes and reason", function()
			local c = text_events(server:stderr(), "connection")
			assert.equal(2, #c, server:stderr())
			local f = text_fields(c[1])
			same({ client = "127.0.0.1", port = tostring(port1), helo = "client.example",
				transactions = "2", accepted = "1", rejected = "1", deferred = "0", rcpts = "4",
				rcpts_accepted = "3", refusals = "2", bytes_in = ANY, bytes_out = ANY,
				["end"] = "session ended", duration = ANY, to = {} }, f, c[1])
			seconds(f.duration)
			assert(tonumber(f.bytes_in) > #BODY1 + #BODY2 and tonumber(f.bytes_out) > 0)
			f = text_fields(c[2])
			same({ client = "127.0.0.1", port = tostring(port2), helo = "tls.example",
				tls = "TLSv1.3", cipher = cipher, user = "alice", transactions = "1",
				accepted = "1", rejected = "0", deferred = "0", rcpts = "1", rcpts_accepted = "1",
				refusals = "0", bytes_in = ANY, bytes_out = ANY, ["end"] = ANY, duration = ANY,
				to = {} }, f, c[2])
		end)

		it("logs a template that does not fit its arguments, with the error noted", function()
			assert.matches("after %d s [2.5] (format error: argument 1: number has no integer "
				.. "representation)", server:stderr(), 1, true)
		end)
	end)

	describe("as JSON", function()
		local server, port1, port2, cipher, objects

		lazy_setup(function()
			server = support.start { policy = policy, args = { "--log-format", "json" } }
			port1 = plain_dialogue(server)
			port2, cipher = tls_dialogue(server)
			server:await_log('"event":"connection","client":"127%.0%.0%.1","port":' .. port2 .. ",")
			-- Python's json, strictly: every line one object, nothing else
			local ok, code, out = support.run(("%s -c %s %s"):format(PY, support.shquote([[
import json, sys
n = 0
for line in open(sys.argv[1], "rb"):
    o = json.loads(line.decode("utf-8"))
    assert isinstance(o, dict), line
    n += 1
print(n)
]]), support.shquote(server.dir .. "/stderr")), 30)
			assert(ok, ("json.loads failed (%s): %s\n%s"):format(tostring(code), out, server:stderr()))
			objects = {}
			for line in server:stderr():gmatch("[^\n]+") do
				objects[#objects + 1] = assert(json.decode(line), line)
			end
			assert.equal(tonumber(out:match("%d+")), #objects)
		end)
		lazy_teardown(function() if server then server:stop(); server:cleanup() end end)

		local function events(name)
			local list = {}
			for _, o in ipairs(objects) do if o.event == name then list[#list + 1] = o end end
			return list
		end

		local function head(o)
			return { time = ANY, level = "info", proc = ANY, session = ANY, event = o.event }
		end

		local function with(t, more)
			for k, v in pairs(more) do t[k] = v end
			return t
		end

		it("every line has the time, level and process; session lines the session id", function()
			for _, o in ipairs(objects) do
				assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", o.time)
				assert.is_truthy(({ error = 1, warn = 1, info = 1, debug = 1 })[o.level])
				-- (the lines before the processes start have no proc)
				if o.proc or o.session then assert.matches("^%a+%d*%[%d+%]$", o.proc) end
				if o.session then assert.matches("^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x$", o.session) end
				assert.is_truthy((o.msg == nil) ~= (o.event == nil))
			end
		end)

		it("a transaction object per transaction, recipients as an array", function()
			local tx = events("transaction")
			assert.equal(3, #tx)
			same(with(head(tx[1]), { client = "127.0.0.1", port = port1, helo = "client.example",
				from = "alice@example.org", rcpts = {
					{ to = "bob@example.net", code = 250, enhanced = "2.1.5" },
					{ to = "unknown@example.net", code = 550, enhanced = "5.1.1" },
					{ to = '"carol x"@example.net', code = 250, enhanced = "2.1.5" } },
				size = #BODY1, code = 250, enhanced = "2.0.0", result = "accepted",
				duration = ANY }), tx[1], "transaction 1")
			assert.equal("number", type(tx[1].duration))
			same(with(head(tx[2]), { client = "127.0.0.1", port = port1, helo = "client.example",
				from = "", rcpts = { { to = "bob@example.net", code = 250, enhanced = "2.1.5" } },
				size = #BODY2, code = 554, enhanced = "5.7.1", result = "rejected", duration = ANY }),
				tx[2], "transaction 2")
			same(with(head(tx[3]), { client = "127.0.0.1", port = port2, helo = "tls.example",
				tls = "TLSv1.3", cipher = cipher, user = "alice", from = "alice@example.org",
				rcpts = { { to = "dave@example.net", code = 250, enhanced = "2.1.5" } },
				size = #"Subject: three\r\n\r\nhi\r\n", code = 250, enhanced = "2.0.0",
				result = "accepted", duration = ANY }), tx[3], "transaction 3")
			assert.equal(tx[1].session, tx[2].session)
			assert.are_not.equal(tx[1].session, tx[3].session)
		end)

		it("a refusal object per refused reply", function()
			local r = events("refusal")
			assert.equal(2, #r)
			same(with(head(r[1]), { client = "127.0.0.1", port = port1, helo = "client.example",
				command = "RCPT", address = "unknown@example.net", code = 550, enhanced = "5.1.1",
				text = "User unknown" }), r[1], "refusal 1")
			same(with(head(r[2]), { client = "127.0.0.1", port = port1, helo = "client.example",
				command = "DATA_END", code = 554, enhanced = "5.7.1", text = 'Content "refused"' }),
				r[2], "refusal 2")
		end)

		it("a connection object per connection", function()
			local c = events("connection")
			assert.equal(2, #c)
			same(with(head(c[1]), { client = "127.0.0.1", port = port1, helo = "client.example",
				transactions = 2, accepted = 1, rejected = 1, deferred = 0, rcpts = 4,
				rcpts_accepted = 3, refusals = 2, bytes_in = ANY, bytes_out = ANY,
				["end"] = "session ended", duration = ANY }), c[1], "connection 1")
			same(with(head(c[2]), { client = "127.0.0.1", port = port2, helo = "tls.example",
				tls = "TLSv1.3", cipher = cipher, user = "alice", transactions = 1, accepted = 1,
				rejected = 0, deferred = 0, rcpts = 1, rcpts_accepted = 1, refusals = 0,
				bytes_in = ANY, bytes_out = ANY, ["end"] = ANY, duration = ANY }), c[2], "connection 2")
		end)

		it("escapes control characters and invalid UTF-8; keeps a format error", function()
			local raw, fmt
			for _, o in ipairs(objects) do
				if o.msg and o.msg:find("^raw ") then raw = o.msg end
				if o.msg and o.msg:find("^after ") then fmt = o.msg end
			end
			assert.equal('raw a\1\239\191\189"b', raw)	-- \255 became U+FFFD
			assert.matches('"msg":"raw a\\u0001\\ufffd\\"b"', server:stderr(), 1, true)
			assert.equal("after %d s [2.5] (format error: argument 1: number has no integer "
				.. "representation)", fmt)
		end)
	end)

	it("refuses a bad --log-format or --log with a usage error (exit 2)", function()
		for _, args in ipairs({ { "--log-format", "xml", "text or json" },
			{ "--log", "syslog:relative", "stderr, syslog or syslog:/PATH" },
			{ "--log", "file", "stderr, syslog or syslog:/PATH" } }) do
			local ok, code, out = support.run(("%s %s %s --check /dev/null"):format(
				support.shquote(support.binary()), args[1], support.shquote(args[2])), 30)
			assert.is_false(ok)
			assert.equal(2, code, out)
			assert.matches(args[3], out, 1, true)
		end
	end)

	describe("to syslog", function()
		-- The syslog daemon: Python on a unix datagram socket, reading as
		-- fast as the lines come (a socket nobody reads holds 10 datagrams),
		-- each datagram a line of a file; it ends itself after 120 s.
		local server, reader, sdir, port1

		lazy_setup(function()
			sdir = support.tmpdir()
			local script = ("%s -c %s %s >/dev/null 2>&1 </dev/null & echo $!"):format(PY, support.shquote([[
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1] + "/log.sock")
s.settimeout(1)
out = open(sys.argv[1] + "/syslog", "ab", buffering=0)
end = time.time() + 120
while time.time() < end:
    try:
        out.write(s.recv(65536).replace(b"\n", b"\\n") + b"\n")
    except socket.timeout:
        pass
]]), support.shquote(sdir))
			local p = assert(io.popen(script, "r"))
			reader = tonumber(p:read("l"))
			p:close()
			assert(reader, "could not start the syslog reader")
			support.wait_until(function() return support.slurp(sdir .. "/syslog") ~= nil end, 10,
				"the syslog reader")
			server = support.start { policy = policy, workers = 2,
				args = { "--log", "syslog:" .. sdir .. "/log.sock" } }
			port1 = plain_dialogue(server)
		end)
		lazy_teardown(function()
			if server then server:stop(); server:cleanup() end
			if reader then os.execute(("kill %d 2>/dev/null"):format(reader)) end
			if sdir then os.execute("rm -rf " .. support.shquote(sdir)) end
		end)

		it("sends each line as a datagram: facility mail, ident luasmtpd, the worker's tag kept", function()
			local got
			support.wait_until(function()
				got = (support.slurp(sdir .. "/syslog") or ""):match(
					"[^\n]* connection client=127%.0%.0%.1 port=" .. port1 .. " [^\n]*")
				return got
			end, 20, "the connection line on the syslog socket")
			-- <22>: facility mail (2) * 8 + severity info (6); the time is syslog's own
			assert.matches("^<22>%a%a%a [ %d]%d %d%d:%d%d:%d%d luasmtpd%[(%d+)%]: info  worker[01]%[%1%] "
				.. "%[%x+%] connection client=127%.0%.0%.1 port=" .. port1 .. " helo=client%.example "
				.. "transactions=2 ", got)
			local log = support.slurp(sdir .. "/syslog")
			assert.matches("<22>[^\n]* luasmtpd%[%d+%]: info  master%[%d+%] ready: 2 worker", log)
			assert.matches("\n<22>[^\n]*%] refusal client=127%.0%.0%.1 port=" .. port1 .. " ", log)
			assert.equal("", server:stderr())	-- nothing on stderr
		end)
	end)
end)
