-- spec/e2e/tls_spec.lua -- STARTTLS, implicit TLS and AUTH through the real binary.
--
-- A self-signed certificate is made in the server's temporary directory at
-- test time (openssl req -x509).  The policy requires AUTH before MAIL,
-- accepts alice/secret, records every RSET and accepted message, and
-- serves three listeners: the support's plain one (STARTTLS), a second
-- plain port whose listen options allow AUTH before TLS, and an
-- implicit-TLS port (RFC 8314).  Real clients (Python's smtplib and ssl,
-- swaks, curl) authenticate and deliver; the injection, bad handshake,
-- wrong password and AUTH-before-TLS cases are each checked.
local socket = require "socket"
local support = require "spec.e2e.support"

local PY = "/usr/bin/python3"


local POLICY = support.RECORD_PRELUDE .. [==[
local server = smtp.createServer(function(conn)
	conn:on("AUTH", function(auth)
		smtp.sleep(0.01)	-- an AUTH handler may wait like any other
		auth.valid = auth.username == "alice" and auth.password == "secret"
	end)
	conn:on("RSET", function() record("rset", conn.secure and "secure" or "plain") end)
	conn:on("MAIL", function(from)
		if not conn.user then
			from.valid, from.code, from.message = false, 530, "5.7.0 Authentication required"
		end
	end)
	conn:on("DATA", function(msg)
		local chunks = {}
		msg:on("data", function(c) chunks[#chunks + 1] = c end)
		msg:on("end", function()
			local tls = conn.tls or {}
			record("msg", ("USER %s\nTLS %s %s\n\n%s"):format(tostring(conn.user),
				tostring(tls.version), tostring(conn.secure), table.concat(chunks)))
			msg:accept()
		end)
	end)
end)
server.tls = { cert = OUT .. "/cert.pem", key = OUT .. "/key.pem" }
server.authMethods = { "PLAIN", "LOGIN" }
server:listen(@INSECURE@, "127.0.0.1", { insecureAuth = true })
server:listen(@IMPLICIT@, "127.0.0.1", { tls = true })
]==]

describe("e2e: TLS and AUTH", function()
	local server, insecure, implicit

	lazy_setup(function()
		insecure, implicit = support.free_port(), support.free_port()
		local policy = POLICY:gsub("@INSECURE@", tostring(insecure)):gsub("@IMPLICIT@", tostring(implicit))
		-- the certificate must exist before the script loads: make it in a
		-- directory of its own and point the policy at it
		local dir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=localhost -keyout %s/key.pem -out %s/cert.pem")
			:format(dir, dir), 30)
		assert(ok, out)
		policy = policy:gsub('OUT %.%. "/cert%.pem"', ("%q"):format(dir .. "/cert.pem"))
			:gsub('OUT %.%. "/key%.pem"', ("%q"):format(dir .. "/key.pem"))
		server = support.start { policy = policy, args = { "--listen", "127.0.0.1:" .. insecure,
			"--listen", "127.0.0.1:" .. implicit } }
		server.certdir = dir
	end)

	lazy_teardown(function()
		if server then
			server:stop()
			server:cleanup()
			os.execute("rm -rf " .. support.shquote(server.certdir))
		end
	end)

	local function run(cmd)
		local ok, code, out = support.run(cmd, 30)
		assert(ok, ("client failed (exit %s):\n%s\n--- server stderr ---\n%s")
			:format(tostring(code), out, server:stderr()))
		return out
	end

	local function deliver(cmd)
		local before = #server:files("^msg%-")
		local out = run(cmd)
		local list = server:files("^msg%-")
		assert.equal(before + 1, #list, "deliveries after: " .. out)
		return server:read(list[#list]), out
	end

	local function python(src, ...)
		local args = { ... }
		for i, a in ipairs(args) do args[i] = support.shquote(a) end
		return run(("%s -c %s %s"):format(PY, support.shquote(src), table.concat(args, " ")))
	end

	it("offers STARTTLS and refuses AUTH before it with 538", function()
		local c = support.connect(server)
		local ehlo = c:hello()
		local text = table.concat(ehlo.lines, "\n")
		assert.matches("STARTTLS", text)
		assert.not_matches("AUTH", text, 1, true)	-- not offered in plaintext
		c:cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "^538 5%.7%.11 ")
		c:cmd("MAIL FROM:<a@example.net>", "^530 5%.7%.0 ")
		c:cmd("QUIT", "^221")
		c:close()
	end)

	it("Python's smtplib: starttls(), login(), deliver; a wrong password gets 535", function()
		python([[
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10) as s:
    s.ehlo("py.example")
    s.starttls(context=ctx)
    s.ehlo("py.example")
    assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
    try:
        s.login("alice", "wrong")
        raise SystemExit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login("alice", "secret")
    s.sendmail("alice@example.net", ["bob@example.com"], "Subject: py\r\n\r\nover TLS\r\n")
]], server.host, tostring(server.port))
		local msg = server:read(server:files("^msg%-")[#server:files("^msg%-")])
		assert.matches("^USER alice\nTLS TLSv1%.[23] true\n", msg)
		assert.matches("over TLS", msg, 1, true)
	end)

	it("swaks --tls with AUTH PLAIN and AUTH LOGIN", function()
		for _, mech in ipairs { "PLAIN", "LOGIN" } do
			local msg = deliver(("swaks --server %s --port %d --tls --auth %s"
				.. " --auth-user alice --auth-password secret --from alice@example.net"
				.. " --to bob@example.com --body 'via swaks %s'"):format(server.host, server.port, mech, mech))
			assert.matches("^USER alice\nTLS TLSv1%.[23] true\n", msg)
			assert.matches("via swaks " .. mech, msg, 1, true)
		end
	end)

	it("swaks --tlsc on the implicit-TLS port", function()
		local msg = deliver(("swaks --server 127.0.0.1 --port %d --tlsc --auth LOGIN"
			.. " --auth-user alice --auth-password secret --from alice@example.net"
			.. " --to bob@example.com --body 'implicit'"):format(implicit))
		assert.matches("^USER alice\nTLS TLSv1%.[23] true\n", msg)
	end)

	it("curl --ssl-reqd --user, and smtps://", function()
		local body = server.dir .. "/body.txt"
		support.spit(body, "Subject: curl\r\n\r\nfrom curl\r\n")
		for _, url in ipairs { ("smtp://%s:%d"):format(server.host, server.port),
				("smtps://127.0.0.1:%d"):format(implicit) } do
			local msg = deliver(("curl -sS -k --ssl-reqd --max-time 20 --url %s --user alice:secret"
				.. " --mail-from alice@example.net --mail-rcpt bob@example.com --upload-file %s")
				:format(url, support.shquote(body)))
			assert.matches("^USER alice\nTLS TLSv1%.[23] true\n", msg)
			assert.matches("from curl", msg, 1, true)
		end
	end)

	it("never runs a command pipelined after STARTTLS (CVE-2011-0411)", function()
		local out = python([[
import socket, ssl, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline()
        assert l, "closed"
        lines.append(l)
        if l[3:4] != b"-":
            return lines
assert reply()[0].startswith(b"220")
s.sendall(b"EHLO inject.example\r\n"); reply()
s.sendall(b"STARTTLS\r\nRSET\r\n")          # one packet
r = reply(); assert r[0].startswith(b"220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="localhost")
g = t.makefile("rb")
t.sendall(b"MAIL FROM:<x@example.net>\r\n")   # the session started over: no EHLO yet
l = g.readline(); print("AFTER", l.decode().strip())
t.sendall(b"QUIT\r\n"); print("QUIT", g.readline().decode().strip())
]], server.host, tostring(server.port))
		assert.matches("AFTER 503 ", out, 1, true)
		assert.matches("QUIT 221", out, 1, true)
		assert.same({}, server:files("^rset%-"))	-- RSET never reached the policy
		assert.matches("discarded %d+ octets sent after STARTTLS", server:stderr())
	end)

	it("closes cleanly after a bad handshake and keeps serving", function()
		local c = support.connect(server)
		c:hello()
		c:cmd("STARTTLS", "^220 ")
		c:send("EHLO not-tls.example\r\n")	-- plaintext where a ClientHello belongs
		c:expect_closed()
		c:close()
		-- the implicit-TLS port: plaintext is a bad handshake too
		local raw = assert(socket.tcp())
		raw:settimeout(10)
		assert(raw:connect("127.0.0.1", implicit))
		raw:send("EHLO plain.example\r\n")
		local line, err = raw:receive("*l")
		assert.is_nil(line)
		assert.equal("closed", err)
		raw:close()
		assert.matches("TLS handshake with 127%.0%.0%.1 port %d+ failed", server:stderr())
		-- still serving
		local c2 = support.connect(server)
		c2:hello()
		c2:cmd("QUIT", "^221")
		c2:close()
	end)

	it("allows AUTH before TLS where the listener says insecureAuth", function()
		local c = support.connect({ host = "127.0.0.1", port = insecure, stderr = function() return server:stderr() end })
		local ehlo = c:hello()
		assert.matches("AUTH PLAIN LOGIN", table.concat(ehlo.lines, "\n"), 1, true)
		c:cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "^535 ")		-- alice / wrong
		c:cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "^235 ")	-- alice / secret
		c:cmd("MAIL FROM:<alice@example.net>", "^250 ")
		c:cmd("QUIT", "^221")
		c:close()
		assert.not_matches("secret", server:stderr(), 1, true)	-- credentials never logged
	end)
end)
