-- The next hops the forwarding specs use, proven on their own: Dovecot's LMTP
-- stores into both users' Maildirs and refuses an unknown user at RCPT;
-- smtp-sink writes what it was sent.  Python's smtplib is the client.

local support = require "spec.e2e.support"
local peers = require "spec.e2e.peers"

local PYTHON = "/usr/bin/python3"

local function python(src, timeout)
	local file = os.tmpname()
	support.spit(file, src)
	local ok, code, out = support.run(PYTHON .. " " .. support.shquote(file), timeout or 30)
	os.remove(file)
	return ok, code, out
end

describe("Dovecot's LMTP (peers.dovecot_lmtp)", function()
	local lmtp
	lazy_setup(function() lmtp = peers.dovecot_lmtp() end)
	lazy_teardown(function() if lmtp then lmtp:stop() end end)

	it("stores a message in both users' Maildirs; an unknown user gets Dovecot's 550 at RCPT", function()
		local ok, code, out = python(([[
import smtplib
l = smtplib.LMTP("127.0.0.1", %d)
l.ehlo("client.example")
print("mail", l.mail("sender@example.net"))
for r in ("alice", "bob", "nobody-here"):
    print("rcpt", r, l.rcpt(r))
print("data", l.data(b"Subject: to two\r\n\r\nhello, both\r\n"))
print("more", l.getreply())
l.quit()
]]):format(lmtp.port))
		assert(ok, ("python failed (exit %s):\n%s\n%s"):format(tostring(code), out, lmtp:log()))
		assert.matches("rcpt alice %(250,", out)
		assert.matches("rcpt bob %(250,", out)
		assert.matches("rcpt nobody%-here %(550, b\"5%.1%.1 <nobody%-here> User doesn't exist", out)
		assert.matches("data %(250, b'2%.0%.0 <alice> [^']* Saved'%)", out)
		assert.matches("more %(250, b'2%.0%.0 <bob> [^']* Saved'%)", out)
		for _, user in ipairs { "alice", "bob" } do
			local msgs = lmtp:messages(user)
			assert.equal(1, #msgs, user .. "\n" .. lmtp:log())
			assert.matches("\nSubject: to two\r?\n\r?\nhello, both\r?\n$", msgs[1])
		end
		assert.matches("saved mail to INBOX", lmtp:log())
	end)

	it("is stopped by its PID, leaving nothing listening", function()
		local other = peers.dovecot_lmtp { users = { "carol" } }
		local port, pid = other.port, other.pid
		other:stop()
		assert.is_nil(other.pid)
		assert.is_false(os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true)
		local c = require("socket").tcp()
		c:settimeout(1)
		assert.is_nil((c:connect("127.0.0.1", port)))
		c:close()
	end)
end)

describe("Postfix's smtp-sink (peers.smtp_sink)", function()
	local sink
	lazy_setup(function() sink = peers.smtp_sink() end)
	lazy_teardown(function() if sink then sink:stop() end end)

	it("writes each transaction, with its envelope, to a file", function()
		local ok, code, out = python(([[
import smtplib
s = smtplib.SMTP("127.0.0.1", %d)
s.ehlo("client.example")
print(s.sendmail("a@example.net", ["b@example.org", "c@example.org"],
    b"Subject: sink\r\n\r\n.leading dot\r\nline two\r\n"))
s.quit()
]]):format(sink.port))
		assert(ok, ("python failed (exit %s):\n%s\n%s"):format(tostring(code), out, sink:log()))
		local msgs
		support.wait_until(function()	-- the file is complete once the transaction ended
			msgs = sink:messages()
			return #msgs == 1 and msgs[1].data and msgs[1].data:find("line two", 1, true)
		end, 10, "smtp-sink's file")
		local m = msgs[1]
		assert.equal("127.0.0.1", m.client)
		assert.equal("ESMTP", m.proto)
		assert.equal("client.example", m.helo)
		assert.equal("<a@example.net>", m.mail)
		assert.same({ "<b@example.org>", "<c@example.org>" }, m.rcpt)
		assert.matches("%(smtp%-sink%)", m.received)
		assert.equal("Subject: sink\n\n.leading dot\nline two\n\n", m.data)	-- smtp-sink's form
		assert.equal("Subject: sink\r\n\r\n.leading dot\r\nline two\r\n", m.text)	-- the client's
	end)
end)
