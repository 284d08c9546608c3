-- spec/e2e/clients_spec.lua -- real SMTP clients deliver through the real binary.
--
-- Python's smtplib, swaks and curl's smtp:// client each send one message to
-- luasmtpd on an ephemeral loopback port; the RECORDER policy writes what it
-- accepted, and the spec checks envelope and body arrived intact.
local support = require "spec.e2e.support"

describe("e2e: real clients deliver a message", function()
	local server = support.serve { policy = support.RECORDER }

	-- Runs cmd (bounded), asserts success, returns the one new delivery.
	local function deliver(cmd)
		local before = #server:deliveries()
		local ok, code, out = support.run(cmd, 30)
		assert(ok, ("client failed (exit %s):\n%s\n--- server stderr ---\n%s")
			:format(tostring(code), out, server:stderr()))
		local list = server:deliveries()
		assert.equal(before + 1, #list, "deliveries after: " .. out)
		return list[#list], out
	end

	it("from Python's smtplib", function()
		local script = support.shquote([[
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10) as s:
    s.ehlo("py.example")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime"), s.esmtp_features
    refused = s.sendmail("py@client.example", ["one@dest.example", "invalid@dest.example", "two@dest.example"],
        "Subject: from python\r\n\r\nHello from smtplib.\r\n.leading dot\r\n")
    assert list(refused) == ["invalid@dest.example"], refused
]])
		local m = deliver(("/usr/bin/python3 -c %s %s %d"):format(script, server.host, server.port))
		assert.equal("py@client.example", m.from)
		assert.same({ "one@dest.example", "two@dest.example" }, m.to)
		assert.matches("Subject: from python\r\n\r\nHello from smtplib%.\r\n", m.body)
		-- smtplib dot-stuffs the leading dot; the policy sees it unstuffed
		assert.matches("\r\n%.leading dot\r\n$", m.body)
		assert.not_matches("%.%.leading", m.body)
	end)

	it("from swaks", function()
		local m = deliver(("swaks --server %s --port %d --ehlo swaks.example"
			.. " --from swaks@client.example --to rcpt@dest.example"
			.. " --header 'Subject: from swaks' --body 'Hello from swaks.'")
			:format(server.host, server.port))
		assert.equal("swaks@client.example", m.from)
		assert.same({ "rcpt@dest.example" }, m.to)
		assert.matches("Subject: from swaks\r\n", m.body, 1, true)
		assert.matches("Hello from swaks.", m.body, 1, true)
		assert.matches("\r\n$", m.body)
	end)

	it("from curl's smtp:// client", function()
		local file = server.dir .. "/curl-mail.txt"
		support.spit(file, "From: curl@client.example\r\nSubject: from curl\r\n\r\nHello from curl.\r\n")
		local m = deliver(("curl -sS --max-time 20 --url smtp://%s:%d/curl.example"
			.. " --mail-from curl@client.example --mail-rcpt a@dest.example"
			.. " --mail-rcpt b@dest.example --upload-file %s")
			:format(server.host, server.port, support.shquote(file)))
		assert.equal("curl@client.example", m.from)
		assert.same({ "a@dest.example", "b@dest.example" }, m.to)
		assert.equal("From: curl@client.example\r\nSubject: from curl\r\n\r\nHello from curl.\r\n", m.body)
		-- the engine's trace field on top: the client's address, no "for" with two recipients
		assert.matches("^Received: from %S+ %(%[127%.0%.0%.1%]%)\r?\n?%s*by ", m.received)
		assert.matches(" with ESMTP\r?\n?%s*id %x+;", m.received)
	end)

	it("and the server logged nothing alarming", function()
		local err = server:stderr()
		assert.not_matches("AddressSanitizer", err)
		assert.not_matches("runtime error", err)
		assert.is_true(server:alive())
	end)
end)
