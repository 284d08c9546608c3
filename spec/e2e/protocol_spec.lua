-- spec/e2e/protocol_spec.lua -- the wire protocol of the real binary over TCP.
--
-- Pipelined transactions, over-long command and text lines, NUL bytes in
-- commands, and clients that vanish mid-command or mid-DATA.  One server
-- (RECORDER policy) serves the whole file; every spec checks what was (or
-- was not) delivered and that the server still serves afterwards.
local support = require "spec.e2e.support"

describe("e2e: protocol", function()
	local server = support.serve { policy = support.RECORDER }

	local function session()
		local c = support.connect(server)
		c:hello()
		return c
	end

	-- A full transaction on a fresh connection: the server still serves.
	local function still_serves()
		local before = #server:deliveries()
		local c = session()
		c:cmd("MAIL FROM:<after@client.example>", "^250 2%.1%.0")
		c:cmd("RCPT TO:<after@dest.example>", "^250 2%.1%.5")
		c:cmd("DATA", "^354")
		c:send("Subject: still serving\r\n\r\nok\r\n.\r\n")
		c:expect("^250 2%.0%.0")
		c:cmd("QUIT", "^221 2%.0%.0")
		c:close()
		local list = server:deliveries()
		assert.equal(before + 1, #list)
		assert.equal("after@client.example", list[#list].from)
	end

	it("greets with 220 and lists exactly the enabled extensions", function()
		local c = support.connect(server)
		local g = c:expect("^220 ")
		assert.matches("^220 %S+ ESMTP", g.text)
		local r = c:cmd("EHLO client.example", "^250")
		local ext = {}
		for i = 2, #r.lines do ext[#ext + 1] = r.lines[i]:match("^250[ -](%S+)") end
		table.sort(ext)
		local names = {}
		for _, e in ipairs(ext) do names[#names + 1] = e end
		-- SIZE may carry the limit as an argument; the keywords are the contract
		assert.same({ "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SIZE", "SMTPUTF8" }, names)
		c:cmd("QUIT", "^221 2%.0%.0")
		c:expect_closed()
		c:close()
	end)

	describe("pipelining", function()
		it("answers several transactions sent in one write, in order", function()
			local before = #server:deliveries()
			local c = session()
			c:send(table.concat({
				"MAIL FROM:<p1@client.example>",
				"RCPT TO:<a@dest.example>",
				"RCPT TO:<invalid@dest.example>",
				"RCPT TO:<b@dest.example>",
				"DATA",
				"Subject: one",
				"",
				"first",
				".",
				"MAIL FROM:<p2@client.example>",
				"RCPT TO:<c@dest.example>",
				"DATA",
				"Subject: two",
				"",
				"..second",
				".",
				"RSET",
				"NOOP",
				"QUIT",
				"",
			}, "\r\n"))
			local want = {
				"^250 2%.1%.0", "^250 2%.1%.5", "^5%d%d 5%.", "^250 2%.1%.5", "^354",
				"^250 2%.0%.0",
				"^250 2%.1%.0", "^250 2%.1%.5", "^354", "^250 2%.0%.0",
				"^250 2%.0%.0", "^250 2%.0%.0", "^221 2%.0%.0",
			}
			for i, pattern in ipairs(want) do c:expect(pattern, "reply " .. i) end
			c:expect_closed()
			c:close()

			local list = server:deliveries()
			assert.equal(before + 2, #list)
			local m1, m2 = list[#list - 1], list[#list]
			assert.equal("p1@client.example", m1.from)
			assert.same({ "a@dest.example", "b@dest.example" }, m1.to)
			assert.equal("Subject: one\r\n\r\nfirst\r\n", m1.body)
			assert.equal("p2@client.example", m2.from)
			assert.same({ "c@dest.example" }, m2.to)
			assert.equal("Subject: two\r\n\r\n.second\r\n", m2.body)
		end)

		it("answers a whole batch of commands byte by byte as well", function()
			local c = session()
			for ch in ("MAIL FROM:<bytes@client.example>\r\nRCPT TO:<x@dest.example>\r\nRSET\r\n"):gmatch(".") do
				c:send(ch)
			end
			c:expect("^250 2%.1%.0")
			c:expect("^250 2%.1%.5")
			c:expect("^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
		end)
	end)

	describe("over-long lines", function()
		it("rejects a command line over 512 octets with 500 5.5.2 and keeps going", function()
			local c = session()
			-- 510 octets + CRLF = 512: the limit itself is fine
			c:cmd("NOOP " .. ("x"):rep(505), "^250 2%.0%.0")
			c:cmd("NOOP " .. ("x"):rep(600), "^500 5%.5%.2")
			-- the rest of the long line was not taken as a command
			c:cmd("NOOP", "^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
		end)

		it("survives a command line far over the limit (64 KiB, no CRLF for a while)", function()
			local c = session()
			c:send(("A"):rep(65536))
			c:send("\r\nNOOP\r\n")
			-- one or more 500 5.5.2, then the NOOP's 250, or a 421 and close
			local r
			repeat r = c:expect("^[245]%d%d") until r.code ~= 500
			if r.code == 421 then
				c:expect_closed()
			else
				assert.matches("^250 2%.0%.0", r.text)
				c:cmd("QUIT", "^221")
			end
			c:close()
			assert.is_true(server:alive())
		end)

		it("rejects a message with a text line over 1000 octets after the final dot", function()
			local before = #server:deliveries()
			local c = session()
			c:cmd("MAIL FROM:<long@client.example>", "^250")
			c:cmd("RCPT TO:<long@dest.example>", "^250")
			c:cmd("DATA", "^354")
			c:send("Subject: long\r\n\r\n" .. ("x"):rep(1200) .. "\r\nshort\r\n.\r\n")
			c:expect("^5%d%d 5%.")
			c:cmd("NOOP", "^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
			assert.equal(before, #server:deliveries())
		end)
	end)

	describe("NUL bytes in commands", function()
		it("rejects a command with a NUL with 500 and does not execute it", function()
			local c = session()
			c:send("MAIL FROM:<nul@client.example>\0 X\r\n")
			c:expect("^500 5%.5%.2")
			-- the MAIL did not happen: RCPT is out of sequence
			c:cmd("RCPT TO:<nul@dest.example>", "^503 5%.5%.1")
			c:send("NO\0OP\r\n")
			c:expect("^500 5%.5%.2")
			c:cmd("NOOP", "^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
			assert.not_matches("nul@", server:envelope_log())
		end)
	end)

	describe("abrupt disconnects", function()
		it("mid-command: nothing happens, the server keeps serving", function()
			local before = #server:deliveries()
			local c = session()
			c:send("MAIL FROM:<gone@cli")
			c:close()
			still_serves()
			assert.equal(before + 1, #server:deliveries())
			assert.not_matches("gone@", server:envelope_log())
		end)

		it("mid-DATA: the message is not delivered, the server keeps serving", function()
			local before = #server:deliveries()
			local c = session()
			c:cmd("MAIL FROM:<middata@client.example>", "^250")
			c:cmd("RCPT TO:<middata@dest.example>", "^250")
			c:cmd("DATA", "^354")
			c:send("Subject: cut\r\n\r\nhalf a message\r\n.")
			c:close()
			still_serves()
			local list = server:deliveries()
			assert.equal(before + 1, #list)
			for _, m in ipairs(list) do assert.not_equal("middata@client.example", m.from) end
		end)

		it("before the greeting is read: the server keeps serving", function()
			for _ = 1, 20 do
				local c = support.connect(server)
				c:close()
			end
			still_serves()
		end)
	end)
end)
