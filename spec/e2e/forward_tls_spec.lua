-- spec/e2e/forward_tls_spec.lua -- message:forward with STARTTLS and AUTH:
-- the next hop is a second luasmtpd with a certificate made here (openssl
-- req -x509), AUTH PLAIN after TLS only, recording what it accepted, and a
-- second one that offers AUTH LOGIN only.  The front verifies the
-- certificate against it (cafile) and a name; a wrong name, a wrong
-- password and a next hop without STARTTLS each give the client 451, never
-- a bounce.
local support = require "spec.e2e.support"
local shquote = support.shquote

local NEXTHOP = support.RECORD_PRELUDE .. [==[
local server = smtp.createServer(function(conn)
	conn:on("AUTH", function(a) a.valid = a.username == "relay" and a.password == "secret" end)
	conn:on("MAIL", function(sender)
		if not conn.user then sender.valid, sender.code, sender.message = false, 530, "5.7.0 Authentication required" end
	end)
	conn:on("DATA", function(msg)
		local chunks = {}
		msg:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
		msg:on("end", function()
			record("msg", ("TLS %s USER %s\n%s"):format(tostring(conn.secure), tostring(conn.user),
				table.concat(chunks)))
			msg:accept(250, "2.0.0 Stored over TLS")
		end)
	end)
end)
server.tls = { cert = CERT, key = KEY }
server.authMethods = { METHODS }
server:listen(2525)
]==]

local FRONT = [[
local smtp = require "smtp"
local routes = {
	ok = { servername = "localhost", auth = { user = "relay", password = "secret" } },
	login = { servername = "localhost", auth = { user = "relay", password = "secret" }, port = PORT2 },
	badname = { servername = "wrong.example", auth = { user = "relay", password = "secret" } },
	badpass = { servername = "localhost", auth = { user = "relay", password = "nope" } },
}
smtp.createServer(function(conn)
	conn:on("DATA", function(m)
		local r = routes[m.recipients[1].localPart]
		local ok, err = m:forward { host = "127.0.0.1", port = r.port or PORT, tls = "require", cafile = CAFILE,
			servername = r.servername, auth = r.auth, timeout = 10 }
		if not ok then conn:log("info", "not forwarded: %s", err) end
	end)
end):listen(2525)
]]

describe("e2e: message:forward over STARTTLS with AUTH", function()
	local certdir, nexthop, nexthop_login, front

	lazy_setup(function()
		certdir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost"
			.. " -keyout %s/key.pem -out %s/cert.pem"):format(shquote(certdir), shquote(certdir)), 60)
		assert(ok, out)
		local cert, key = ("%q"):format(certdir .. "/cert.pem"), ("%q"):format(certdir .. "/key.pem")
		local function nexthop_policy(methods)
			return (NEXTHOP:gsub("CERT", cert):gsub("KEY", key):gsub("METHODS", methods))
		end
		nexthop = support.start { policy = nexthop_policy('"PLAIN"') }
		nexthop_login = support.start { policy = nexthop_policy('"LOGIN"') }
		front = support.start { policy = (FRONT:gsub("PORT2", tostring(nexthop_login.port))
			:gsub("PORT", tostring(nexthop.port)):gsub("CAFILE", cert)) }
	end)

	lazy_teardown(function()
		for _, s in ipairs { front, nexthop, nexthop_login } do
			if s then s:stop() ; s:cleanup() end
		end
		os.execute("rm -rf " .. shquote(certdir))
	end)

	local function send(to)
		local c = support.connect(front)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@client.example>", "^250")
		c:cmd("RCPT TO:<" .. to .. "@example.org>", "^250")
		local r = c:cmd("DATA", "^%d")
		if r.code == 354 then
			c:send("Subject: tls\r\n\r\nover TLS\r\n.\r\n")
			r = c:expect("^%d")
		end
		c:close()
		return r.lines[1]
	end

	it("delivers through STARTTLS, the certificate verified, after AUTH PLAIN", function()
		assert.matches("^250 2%.0%.0 Stored over TLS", send("ok"))
		local files = nexthop:files("^msg%-")
		assert.equal(1, #files)
		local got = nexthop:read(files[1])	-- each server's Received field on top, the front's first
		assert.matches("^TLS true USER relay\nReceived: ", got)
		assert.equal("Subject: tls\r\n\r\nover TLS\r\n", got:match("\r\n(Subject:.*)$"))
		local _, n = got:gsub("Received: ", "")
		assert.equal(2, n)
	end)

	it("authenticates with AUTH LOGIN to a next hop that offers only that", function()
		assert.matches("^250 2%.0%.0 Stored over TLS", send("login"))
		local files = nexthop_login:files("^msg%-")
		assert.equal(1, #files)
		assert.matches("^TLS true USER relay\n", nexthop_login:read(files[1]))
	end)

	it("refuses a certificate for another name: 451", function()
		assert.matches("^451 4%.4%.2 Next hop 127%.0%.0%.1:%d+: tls: certificate verify failed", send("badname"))
	end)

	it("answers 451, not the next hop's 535, when its password is refused", function()
		assert.matches("^451 4%.4%.0 Next hop 127%.0%.0%.1:%d+ refused the session: 535", send("badpass"))
	end)
end)
