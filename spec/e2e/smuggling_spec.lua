-- spec/e2e/smuggling_spec.lua -- SMTP smuggling over TCP against the real binary.
--
-- Each variant hides an end-of-data sequence made of bare CR or LF inside a
-- message, followed by a smuggled MAIL/RCPT/DATA, and ends the whole thing
-- with the real CRLF.CRLF.  luasmtpd must treat everything up to the real end
-- as data, reject that message with 550 5.6.0 (bare CR/LF are not accepted in
-- data), execute none of the smuggled commands and deliver nothing.
local support = require "spec.e2e.support"

local variants = {
	{ "\\n.\\n", "\n.\n" },
	{ "\\n.\\r\\n", "\n.\r\n" },
	{ "\\r.\\r", "\r.\r" },
	{ "\\r\\n.\\n", "\r\n.\n" },
	{ "\\n.\\r", "\n.\r" },
	{ "\\r\\n.\\r", "\r\n.\r" },
	{ "\\r.\\r\\n", "\r.\r\n" },
}

describe("e2e: SMTP smuggling", function()
	local server = support.serve { policy = support.RECORDER }

	for _, v in ipairs(variants) do
		local name, seq = v[1], v[2]
		it("with " .. name .. ": smuggled commands never run, 550 5.6.0, nothing delivered", function()
			local before = #server:deliveries()
			local c = support.connect(server)
			c:hello()
			c:cmd("MAIL FROM:<honest@client.example>", "^250 2%.1%.0")
			c:cmd("RCPT TO:<honest@dest.example>", "^250 2%.1%.5")
			c:cmd("DATA", "^354")
			c:send("Subject: innocent\r\n\r\nbody" .. seq
				.. "MAIL FROM:<smuggled@evil.example>\r\n"
				.. "RCPT TO:<victim@dest.example>\r\n"
				.. "DATA\r\n"
				.. "Subject: smuggled\r\n\r\nforged\r\n"
				.. ".\r\n")
			-- exactly one reply for the whole thing: the rejection
			c:expect("^550 5%.6%.0", "the real end of data")
			c:cmd("NOOP", "^250 2%.0%.0")
			-- the session is back to no transaction: RCPT is out of sequence
			c:cmd("RCPT TO:<victim@dest.example>", "^503 5%.5%.1")
			c:cmd("QUIT", "^221 2%.0%.0")
			c:expect_closed()
			c:close()

			assert.equal(before, #server:deliveries())
			local seen = server:envelope_log()
			assert.not_matches("smuggled@evil", seen)
			assert.not_matches("victim@", seen)
		end)
	end

	it("still delivers a clean message, dot-stuffed lines intact", function()
		local before = #server:deliveries()
		local c = support.connect(server)
		c:hello()
		c:cmd("MAIL FROM:<clean@client.example>", "^250")
		c:cmd("RCPT TO:<clean@dest.example>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: clean\r\n\r\n..\r\n...x\r\n.\r\n")
		c:expect("^250 2%.0%.0")
		c:cmd("QUIT", "^221")
		c:close()
		local list = server:deliveries()
		assert.equal(before + 1, #list)
		assert.equal("Subject: clean\r\n\r\n.\r\n..x\r\n", list[#list].body)
	end)
end)
