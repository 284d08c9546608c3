-- spec/e2e/bdat_spec.lua -- CHUNKING (RFC 3030) through the real binary: a raw
-- BDAT dialogue over TCP (luasocket), and Python's smtplib sending BDAT by
-- hand (smtplib has no BDAT: putcmd, send, getreply; Postfix's smtp-source
-- has none either).  The RECORDER policy writes what it accepted.
local support = require "spec.e2e.support"

describe("e2e: BDAT", function()
	local server = support.serve { policy = support.RECORDER }

	it("a raw dialogue: pipelined chunks, split across writes, BDAT 0 LAST", function()
		local before = #server:deliveries()
		local c = support.connect(server)
		local ehlo = table.concat(c:hello("raw.example").lines, "\n")
		assert.matches("CHUNKING", ehlo, 1, true)
		assert.matches("BINARYMIME", ehlo, 1, true)
		-- MAIL, RCPT and two chunks in one write; the second holds a "." line and a command
		c:send("MAIL FROM:<raw@client.example>\r\nRCPT TO:<rcpt@dest.example>\r\n"
			.. "BDAT 14\r\nSubject: raw\r\n" .. "BDAT 17\r\n\r\n.\r\nQUIT\r\nbody\r\n")
		c:expect("^250 2%.1%.0 ")
		c:expect("^250 2%.1%.5 ")
		c:expect("^250 2%.0%.0 14 octets")
		c:expect("^250 2%.0%.0 17 octets")
		-- a chunk whose octets come in three writes
		c:send("BDAT 11\r\nmore")
		c:send(" te")
		c:send("xt\r\n")
		c:expect("^250 2%.0%.0 11 octets")
		c:cmd("DATA", "^503 5%.5%.1 DATA not allowed after BDAT")
		c:cmd("BDAT 0 LAST", "^250 2%.0%.0 ")
		c:cmd("NOOP", "^250 ")
		c:cmd("QUIT", "^221 ")
		c:close()
		local list = server:deliveries()
		assert.equal(before + 1, #list)
		assert.equal("raw@client.example", list[#list].from)
		assert.equal("Subject: raw\r\n\r\n.\r\nQUIT\r\nbody\r\nmore text\r\n", list[#list].body)
	end)

	it("Python's smtplib sends a BINARYMIME message in BDAT chunks", function()
		local before = #server:deliveries()
		local script = support.shquote([==[
import smtplib, sys
body = b"Subject: bin\r\n\r\n" + bytes(range(256)) + b"\n.\n"
chunks = [body[:100], body[100:]]
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10) as s:
    s.ehlo("py.example")
    assert s.has_extn("chunking") and s.has_extn("binarymime"), s.esmtp_features
    assert s.mail("py@client.example", ["BODY=BINARYMIME"])[0] == 250
    assert s.rcpt("rcpt@dest.example")[0] == 250
    for i, c in enumerate(chunks):
        s.putcmd("BDAT", "%d%s" % (len(c), " LAST" if i == len(chunks) - 1 else ""))
        s.send(c)
        code, msg = s.getreply()
        assert code == 250, (code, msg)
    print("sent", len(body))
]==])
		local ok, code, out = support.run(("/usr/bin/python3 -c %s %s %d")
			:format(script, server.host, server.port), 30)
		assert(ok, ("client failed (exit %s):\n%s\n--- server stderr ---\n%s")
			:format(tostring(code), out, server:stderr()))
		local list = server:deliveries()
		assert.equal(before + 1, #list)
		local bytes = {}
		for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
		assert.equal("Subject: bin\r\n\r\n" .. table.concat(bytes) .. "\n.\n", list[#list].body)
	end)
end)
