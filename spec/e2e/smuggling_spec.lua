-- spec/e2e/smuggling_spec.lua -- SMTP smuggling over TCP against the real binary.
--
-- Each variant hides an end-of-data sequence made of bare CR or LF inside a
-- message, followed by a smuggled MAIL/RCPT/DATA, and ends the whole thing
-- with the real CRLF.CRLF.  luasmtpd must treat everything up to the real end
-- as data and execute none of the smuggled commands, with either setting of
-- server.bareLineFeed: with "reject" (the default) the message is refused
-- with 550 5.6.0 and nothing is delivered; with "accept" a bare LF is a line
-- end, so a variant made only of bare LFs is one message whose text holds the
-- smuggled lines, while a bare CR is still refused.
local support = require "spec.e2e.support"

-- name, sequence, made only of LFs (no bare CR)
local variants = {
	{ "\\n.\\n", "\n.\n", true },
	{ "\\n.\\r\\n", "\n.\r\n", true },
	{ "\\r.\\r", "\r.\r", false },
	{ "\\r\\n.\\n", "\r\n.\n", true },
	{ "\\n.\\r", "\n.\r", false },
	{ "\\r\\n.\\r", "\r\n.\r", false },
	{ "\\r.\\r\\n", "\r.\r\n", false },
}

local SMUGGLED = "MAIL FROM:<smuggled@evil.example>\r\n"
	.. "RCPT TO:<victim@dest.example>\r\n"
	.. "DATA\r\n"
	.. "Subject: smuggled\r\n\r\nforged\r\n"

-- The RECORDER policy with server.bareLineFeed = mode.
local function recorder(mode)
	local policy = support.RECORDER:gsub("\nsmtp%.createServer%(", "\nlocal server = smtp.createServer(", 1)
	assert(policy ~= support.RECORDER)
	return policy .. ("server.bareLineFeed = %q\n"):format(mode)
end

-- Python's smtplib sends a bytes message as it is: here with LF line ends.
local PYTHON = [[
import smtplib, sys
from email.message import EmailMessage
msg = EmailMessage()
msg["Subject"] = "bare lf"
msg["From"] = "py@client.example"
msg["To"] = "lf@dest.example"
msg.set_content("line one\n.leading dot\nlast\n")
data = msg.as_bytes()
assert b"\n" in data and b"\r" not in data, data
try:
    with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10) as s:
        s.sendmail("py@client.example", ["lf@dest.example"], data)
    print("sent 250")
except smtplib.SMTPDataError as e:
    print("sent", e.smtp_code)
]]

for _, mode in ipairs { "reject", "accept" } do
	describe("e2e: SMTP smuggling with server.bareLineFeed = " .. mode, function()
		local server = support.serve { policy = recorder(mode) }

		local function to_data(from, to)
			local c = support.connect(server)
			c:hello()
			c:cmd("MAIL FROM:<" .. from .. ">", "^250 2%.1%.0")
			c:cmd("RCPT TO:<" .. to .. ">", "^250 2%.1%.5")
			c:cmd("DATA", "^354")
			return c
		end

		-- After the real end: no transaction is open, and the session ends cleanly.
		local function no_transaction_left(c)
			c:cmd("NOOP", "^250 2%.0%.0")
			c:cmd("RCPT TO:<victim@dest.example>", "^503 5%.5%.1")
			c:cmd("QUIT", "^221 2%.0%.0")
			c:expect_closed()
			c:close()
		end

		for _, v in ipairs(variants) do
			local name, seq, lf_only = v[1], v[2], v[3]
			if mode == "accept" and lf_only then
				it("with " .. name .. ": message text, not an end; smuggled commands never run", function()
					local before = #server:deliveries()
					local c = to_data("honest@client.example", "honest@dest.example")
					c:send("Subject: innocent\r\n\r\nbody" .. seq .. SMUGGLED .. ".\r\n")
					-- exactly one reply for the whole thing: the real end
					c:expect("^250 2%.0%.0", "the real end of data")
					no_transaction_left(c)

					local list = server:deliveries()
					assert.equal(before + 1, #list)
					local m = list[#list]
					assert.equal("honest@client.example", m.from)
					assert.same({ "honest@dest.example" }, m.to)
					-- the bare LFs became CRLF, the dot line an empty line
					assert.equal("Subject: innocent\r\n\r\nbody\r\n\r\n" .. SMUGGLED, m.body)
					local seen = server:envelope_log()
					assert.not_matches("smuggled@evil", seen)
					assert.not_matches("victim@", seen)
				end)
			else
				it("with " .. name .. ": smuggled commands never run, 550 5.6.0, nothing delivered", function()
					local before = #server:deliveries()
					local c = to_data("honest@client.example", "honest@dest.example")
					c:send("Subject: innocent\r\n\r\nbody" .. seq .. SMUGGLED .. ".\r\n")
					-- exactly one reply for the whole thing: the rejection
					c:expect("^550 5%.6%.0", "the real end of data")
					no_transaction_left(c)

					assert.equal(before, #server:deliveries())
					local seen = server:envelope_log()
					assert.not_matches("smuggled@evil", seen)
					assert.not_matches("victim@", seen)
				end)
			end
		end

		it("still delivers a clean message, dot-stuffed lines intact", function()
			local before = #server:deliveries()
			local c = to_data("clean@client.example", "clean@dest.example")
			c:send("Subject: clean\r\n\r\n..\r\n...x\r\n.\r\n")
			c:expect("^250 2%.0%.0")
			c:cmd("QUIT", "^221")
			c:close()
			local list = server:deliveries()
			assert.equal(before + 1, #list)
			assert.equal("Subject: clean\r\n\r\n.\r\n..x\r\n", list[#list].body)
		end)

		if mode == "accept" then
			it("delivers a message with bare LF line ends as CRLF, unstuffing after a bare LF", function()
				local before = #server:deliveries()
				local c = to_data("lf@client.example", "lf@dest.example")
				c:send("Subject: lf\n\nline one\n..dot\nlast\n\r\n.\r\n")
				c:expect("^250 2%.0%.0")
				c:cmd("QUIT", "^221")
				c:close()
				local list = server:deliveries()
				assert.equal(before + 1, #list)
				assert.equal("Subject: lf\r\n\r\nline one\r\n.dot\r\nlast\r\n\r\n", list[#list].body)
			end)

			it("still refuses a bare CR and a NUL", function()
				local before = #server:deliveries()
				local c = to_data("cr@client.example", "cr@dest.example")
				c:send("Subject: cr\n\nline\rone\n\r\n.\r\n")
				c:expect("^550 5%.6%.0 Message contains a bare CR or LF")
				c:cmd("MAIL FROM:<nul@client.example>", "^250")
				c:cmd("RCPT TO:<nul@dest.example>", "^250")
				c:cmd("DATA", "^354")
				c:send("Subject: nul\n\nline\0one\n\r\n.\r\n")
				c:expect("^550 5%.6%.0 Message contains a NUL")
				c:cmd("QUIT", "^221")
				c:close()
				assert.equal(before, #server:deliveries())
			end)
		else
			it("refuses a message with bare LF line ends after reading it to the end", function()
				local before = #server:deliveries()
				local c = to_data("lf@client.example", "lf@dest.example")
				c:send("Subject: lf\n\nline one\n..dot\nlast\n\r\n.\r\n")
				c:expect("^550 5%.6%.0 Message contains a bare CR or LF")
				no_transaction_left(c)
				assert.equal(before, #server:deliveries())
			end)
		end

		it("gives Python's smtplib.sendmail(msg.as_bytes()) with LF line ends "
			.. (mode == "accept" and "250" or "550"), function()
			local before = #server:deliveries()
			local ok, code, out = support.run(("/usr/bin/python3 -c %s %s %d")
				:format(support.shquote(PYTHON), server.host, server.port), 30)
			assert(ok, ("python failed (exit %s):\n%s"):format(tostring(code), out))
			local list = server:deliveries()
			if mode == "accept" then
				assert.matches("sent 250", out)
				assert.equal(before + 1, #list)
				local body = list[#list].body
				assert.matches("^Subject: bare lf\r\n", body)
				-- every line end is CRLF, the stuffed dot is gone
				assert.not_matches("[^\r]\n", body)
				assert.matches("\r\n\r\nline one\r\n%.leading dot\r\nlast\r\n", body)
			else
				assert.matches("sent 550", out)
				assert.equal(before, #list)
			end
		end)
	end)
end
