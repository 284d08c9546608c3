-- spec/e2e/forward_dovecot_spec.lua -- the two forwarding examples in the
-- real server against real next hops (spec/e2e/peers.lua, stopped by PID):
-- scripts/lmtp.lua in front of Dovecot's LMTP (recipients checked by
-- Dovecot at RCPT, one recipient per transaction, the message in both
-- users' Maildirs) and scripts/relay.lua in front of Postfix's smtp-sink.
local support = require "spec.e2e.support"
local peers = require "spec.e2e.peers"

local function script(path) return support.slurp(path) end

describe("e2e: scripts/lmtp.lua in front of Dovecot", function()
	local dovecot, server

	lazy_setup(function()
		dovecot = peers.dovecot_lmtp { users = { "alice@example.org", "bob@example.org" } }
		server = support.start { policy = script("scripts/lmtp.lua"),
			env = { LMTP_ADDRESS = "127.0.0.1:" .. dovecot.port, LMTP_DOMAINS = "example.org" } }
	end)

	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		if dovecot then dovecot:stop() end
	end)

	it("refuses an unknown user at RCPT with Dovecot's reply, and delivers to both users", function()
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<sender@example.net>", "^250")
		c:cmd("RCPT TO:<nobody@example.org>", "^550 5%.1%.1 <nobody@example%.org> User doesn't exist")
		c:cmd("RCPT TO:<alice@example.org>", "^250")
		-- the second recipient of the transaction: sent again in the next one
		c:cmd("RCPT TO:<bob@example.org>", "^452 4%.5%.3 ")
		c:cmd("DATA", "^354")
		c:send("Subject: to both\r\n\r\n..dot line\r\nhello\r\n.\r\n")
		c:expect("^250 2%.0%.0 <alice@example%.org> ")
		c:cmd("MAIL FROM:<sender@example.net>", "^250")
		c:cmd("RCPT TO:<bob@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: to both\r\n\r\n..dot line\r\nhello\r\n.\r\n")
		c:expect("^250 2%.0%.0 <bob@example%.org> ")
		c:cmd("QUIT", "^221")
		c:close()
		for _, user in ipairs { "alice@example.org", "bob@example.org" } do
			local msgs = dovecot:messages(user)
			assert.equal(1, #msgs, user .. ": " .. dovecot:log())
			assert.matches("Received: from client%.example", msgs[1])
			-- a Maildir keeps LF line ends; Dovecot adds its own fields on top
			assert.equal("Subject: to both\n\n.dot line\nhello\n",
				msgs[1]:gsub("\r\n", "\n"):match("\n(Subject: to both.*)$"))
		end
	end)
end)

describe("e2e: scripts/relay.lua in front of smtp-sink", function()
	local sink, server

	lazy_setup(function()
		sink = peers.smtp_sink()
		server = support.start { policy = script("scripts/relay.lua"),
			env = { RELAY_DOMAINS = "example.org", RELAY_NEXTHOP = "127.0.0.1:" .. sink.port, RELAY_TLS = "none" } }
	end)

	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		if sink then sink:stop() end
	end)

	it("relays its domains to the smarthost and refuses the others", function()
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<sender@example.net>", "^250")
		c:cmd("RCPT TO:<eve@elsewhere.example>", "^550 5%.7%.1 Relaying denied")
		c:cmd("RCPT TO:<bob@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: relayed\r\n\r\nhello\r\n.\r\n")
		c:expect("^250 ")
		c:cmd("QUIT", "^221")
		c:close()
		local msgs = support.wait_until(function()
			local m = sink:messages()
			return #m > 0 and m
		end, 15, "the message at smtp-sink")
		assert.same({ "<bob@example.org>" }, msgs[1].rcpt)
		assert.equal("Subject: relayed\r\n\r\nhello\r\n", msgs[1].text:match("\r\n(Subject:.*)$"))
	end)
end)
