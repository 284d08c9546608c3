-- spec/e2e/protocol_spec.lua -- the wire protocol of the real binary over TCP.
--
-- Pipelined transactions, over-long command and text lines, NUL bytes in
-- commands and data, bare IPv6 EHLO names, and clients that vanish
-- mid-command or mid-DATA: one server (RECORDER policy) serves these, and
-- every spec checks what was (or was not) delivered and that the server
-- still serves afterwards.  Then servers of their own: the debug log with
-- AUTH in every spelling (no credential may reach it), and the one 451 text
-- of a policy failure.
local mime = require "mime"
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
		assert.same({ "8BITMIME", "BINARYMIME", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES",
			"PIPELINING", "SIZE", "SMTPUTF8" }, names)
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

		-- Large bodies in one write: the server reads what the socket holds in
		-- one go (not libevent's 4 KiB at a time), up to its input's high
		-- watermark; the lines, the dots and the pipelined commands after the
		-- final dot come out the same wherever a read ends.
		it("answers transactions with bodies far over the input buffer, sent in one write", function()
			local before = #server:deliveries()
			local function body(seed)
				local lines = {}
				for i = 1, 4000 do	-- ~190 KiB; every 7th line starts with a dot
					lines[i] = (i % 7 == 0 and "." or "") .. string.char(97 + (i + seed) % 26):rep(i % 97)
				end
				return table.concat(lines, "\r\n") .. "\r\n"
			end
			local function stuffed(text) return (("\n" .. text):gsub("\n%.", "\n.."):sub(2)) end
			local b1, b2 = body(1), body(2)
			local c = session()
			c:send("MAIL FROM:<big1@client.example>\r\nRCPT TO:<a@dest.example>\r\nDATA\r\n"
				.. stuffed(b1) .. ".\r\nMAIL FROM:<big2@client.example>\r\nRCPT TO:<b@dest.example>\r\n"
				.. "DATA\r\n" .. stuffed(b2) .. ".\r\nQUIT\r\n")
			local want = { "^250 2%.1%.0", "^250 2%.1%.5", "^354", "^250 2%.0%.0",
				"^250 2%.1%.0", "^250 2%.1%.5", "^354", "^250 2%.0%.0", "^221 2%.0%.0" }
			for i, pattern in ipairs(want) do c:expect(pattern, "reply " .. i) end
			c:expect_closed()
			c:close()
			local list = server:deliveries()
			assert.equal(before + 2, #list)
			assert.equal("big1@client.example", list[#list - 1].from)
			assert.is_true(list[#list - 1].body == b1, "the first body arrived byte-exact")
			assert.equal("big2@client.example", list[#list].from)
			assert.is_true(list[#list].body == b2, "the second body arrived byte-exact")
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

		it("counts a text line after unstuffing: a 998-octet line starting with a dot is legal", function()
			local before = #server:deliveries()
			local c = session()
			c:cmd("MAIL FROM:<dot@client.example>", "^250")
			c:cmd("RCPT TO:<dot@dest.example>", "^250")
			c:cmd("DATA", "^354")
			-- on the wire "." .. 998 octets: 999 and CRLF
			local line = "." .. ("d"):rep(997)
			c:send("Subject: dots\r\n\r\n." .. line .. "\r\n.\r\n")
			c:expect("^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
			local list = server:deliveries()
			assert.equal(before + 1, #list)
			assert.equal("Subject: dots\r\n\r\n" .. line .. "\r\n", list[#list].body)
			assert.equal(998, #line)
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

		it("refuses a message with a NUL with 550 5.6.0 after its real end (RFC 6152)", function()
			local before = #server:deliveries()
			local c = session()
			c:cmd("MAIL FROM:<nuldata@client.example>", "^250")
			c:cmd("RCPT TO:<nuldata@dest.example>", "^250")
			c:cmd("DATA", "^354")
			c:send("Subject: nul\r\n\r\nbefore\0after\r\n.\0\r\nRSET\r\n.\r\n")
			c:expect("^550 5%.6%.0 Message contains a NUL")
			c:cmd("RCPT TO:<x@dest.example>", "^503 5%.5%.1")	-- no transaction left
			c:cmd("QUIT", "^221")
			c:close()
			assert.equal(before, #server:deliveries())
			still_serves()
		end)
	end)

	describe("HELO names", function()
		it("takes a bare IPv6 address, as real clients send it", function()
			local c = support.connect(server)
			c:expect("^220 ")
			c:cmd("EHLO 2001:db8::1", "^250")
			c:cmd("HELO ::1", "^250")
			c:cmd("EHLO 2001:db8::zz", "^501 5%.5%.4")
			c:cmd("QUIT", "^221")
			c:close()
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


describe("e2e: credentials never reach the log, even at --log-level debug", function()
	local insecure = support.free_port()
	local server = support.serve {
		args = { "--log-level", "debug", "--listen", "127.0.0.1:" .. insecure },
		policy = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("AUTH", function(auth) auth.valid = false end)
end)
server.authMethods = { "PLAIN", "LOGIN" }
server.maxAuthFailures = 20
server:listen(]] .. insecure .. [[, "127.0.0.1", { insecureAuth = true })
]],
	}

	-- the password i, in plain text and as the client sends it (base64)
	local function secret(i) return "PipelinedSecret" .. i end
	local function b64(s) return (mime.b64(s)) end

	local function dialogue(port, lines)
		local c = support.connect({ host = server.host, port = port,
			stderr = function() return server:stderr() end })
		c:expect("^220 ")
		c:send(table.concat(lines, "\r\n") .. "\r\nQUIT\r\n")
		local r
		repeat r = c:reply() until r == nil or r.code == 221
		assert(r, "no 221: " .. c:transcript())
		c:close()
	end

	it("neither AUTH lines in any spelling nor the lines pipelined after a refused AUTH", function()
		-- the plain listener does not offer AUTH (no TLS): 538, responses pipelined behind it
		dialogue(server.port, {
			"EHLO c.example",
			"AUTH PLAIN", b64("\0alice\0" .. secret(1)),
			"AUTH LOGIN", b64("alice"), b64(secret(2)),
			"AUTH\tPLAIN " .. b64("\0alice\0" .. secret(3)),
			" AUTH PLAIN " .. b64("\0alice\0" .. secret(4)),
			"AUTHPLAIN " .. b64("\0alice\0" .. secret(5)),
			"auth plain " .. b64("\0alice\0" .. secret(6)),
			"NOOP plain listener done",
		})
		-- AUTH offered: an unknown mechanism (504), a real LOGIN, PLAIN with and without an initial response
		dialogue(insecure, {
			"EHLO c.example",
			"AUTH CRAM-MD5", b64(secret(7)),
			"AUTH LOGIN", b64("alice"), b64(secret(8)),
			"AUTH PLAIN " .. b64("\0alice\0" .. secret(9)),
			"AUTH PLAIN", b64("\0alice\0" .. secret(10)), b64(secret(11)),
			"NOOP insecure listener done",
		})
		local log = support.wait_until(function()
			local text = server:stderr()
			local _, quits = text:gsub(">>> QUIT", "")
			return quits == 2 and text
		end, 10, "both sessions in the log")
		-- the log is at debug level: commands show, AUTH lines are masked
		assert.matches(">>> NOOP plain listener done", log, 1, true)
		assert.matches(">>> NOOP insecure listener done", log, 1, true)
		assert.matches(">>> AUTH ...", log, 1, true)
		assert.matches("<<< 538 5.7.11", log, 1, true)
		assert.matches("<<< 504 5.5.4", log, 1, true)
		assert.matches("<<< 535 5.7.8", log, 1, true)
		for i = 1, 11 do
			assert.not_matches(secret(i), log, 1, true)
			assert.not_matches(b64(secret(i)):sub(1, 16), log, 1, true)
			assert.not_matches(b64("\0alice\0" .. secret(i)):sub(1, 24), log, 1, true)
		end
	end)
end)

describe("e2e: long policy texts and failing policies", function()
	local server = support.serve {
		policy = [[
local smtp = require "smtp"
-- n lines of width octets
local function lines(n, width)
	local t = {}
	for i = 1, n do t[i] = string.char(96 + i):rep(width) end
	return table.concat(t, "\n")
end
smtp.createServer(function(conn)
	conn:on("EHLO", function(helo)
		local n = tonumber(helo.name:match("^lines(%d+)%."))
		if n then helo.message = lines(n, 450) end
	end)
	conn:on("VRFY", function(v)
		if v.argument == "boom" then error("boom") end	-- Lua reports it
		if v.argument == "ctl" then v.message = "badtext" return end	-- the engine finds these
		v.valid, v.code = true, 550
	end)
end):listen(2525)
]],
	}

	it("sends a 4 KB multi-line EHLO text whole, every line within 512 octets", function()
		local c = support.connect(server)
		c:expect("^220 ")
		local r = c:cmd("EHLO lines9.example", "^250")
		assert.equal(9 + 8, #r.lines)	-- the text, then the extensions
		assert.equal("250-" .. ("a"):rep(450), r.lines[1]:gsub("^(250%-)%S+ ", "%1"))
		assert.equal("250-" .. ("i"):rep(450), r.lines[9])
		assert.equal("250 SMTPUTF8", r.lines[17])
		for _, l in ipairs(r.lines) do assert.is_true(#l + 2 <= 512) end
		-- with the extensions, 25 lines would pass the 32 a reply may have
		c:cmd("EHLO lines25.example", "^451 4%.3%.0 Local error in policy")
		c:cmd("EHLO lines2.example", "^250")
		c:cmd("QUIT", "^221")
		c:close()
		assert.is_true(server:alive())
	end)

	it("gets one 451 text for a Lua error and for an invalid decision", function()
		local c = support.connect(server)
		c:hello()
		local err = c:cmd("VRFY boom", "^451 4%.3%.0 ")
		local bad = c:cmd("VRFY other", "^451 4%.3%.0 ")
		local ctl = c:cmd("VRFY ctl", "^451 4%.3%.0 ")
		assert.equal("Local error in policy, try again later", err.text:match("4%.3%.0 (.*)$"))
		assert.equal(err.text, bad.text)
		assert.equal(err.text, ctl.text)
		assert.matches("invalid verdict for VRFY", server:stderr(), 1, true)
		c:cmd("QUIT", "^221")
		c:close()
	end)
end)
