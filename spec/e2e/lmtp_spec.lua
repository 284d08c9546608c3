-- spec/e2e/lmtp_spec.lua -- LMTP (RFC 2033) through the real binary: Python's
-- smtplib.LMTP delivers over a {lmtp = true} TCP listener and over a unix
-- socket, to recipients the policy settles one by one (message:settle()).
--
-- smtplib.LMTP says LHLO but reads one reply after DATA; the script reads the
-- others with getreply(), one per accepted recipient, in RCPT order.
local support = require "spec.e2e.support"

local POLICY = support.RECORD_PRELUDE .. [==[
local server = smtp.createServer(function(conn)
	conn:on("EHLO", function(helo) record("lhlo", tostring(conn.lmtp) .. " " .. helo.name) end)
	conn:on("DATA", function(m)
		local chunks = {}
		m:on("data", function(chunk) chunks[#chunks + 1] = chunk end)
		m:on("end", function()
			local ok = {}
			for _, r in ipairs(m.recipients) do
				if r.address:find("^full@") then
					r.valid, r.code, r.message = false, 552, "5.2.2 Mailbox full"
				elseif r.address:find("^later@") then
					r.valid, r.code, r.message = false, 450, "4.2.1 Try again later"
				else
					ok[#ok + 1] = r.address
				end
			end
			record("msg", ("FROM %s\nTO %s\n\n%s"):format(m.sender.address,
				table.concat(ok, ","), table.concat(chunks)))
			m:settle(250, "2.0.0 Delivered")
		end)
	end)
end)
server:listen(@LMTP_PORT@, "127.0.0.1", { lmtp = true })
server:listen(@LMTP_SOCK@, { lmtp = true })
]==]

local CLIENT = [==[
import json, smtplib, sys
host = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
rcpts = ["ok1@dest.example", "full@dest.example", "later@dest.example", "ok2@dest.example"]
with smtplib.LMTP(host, port, timeout=10) as s:
    code, _ = s.ehlo("py.example")
    assert code == 250 and s.has_extn("pipelining"), s.esmtp_features
    assert s.mail("py@client.example")[0] == 250
    for r in rcpts:
        assert s.rcpt(r)[0] == 250, r
    replies = [s.data(b"Subject: lmtp\r\n\r\nHello over LMTP.\r\n")]
    replies += [s.getreply() for _ in rcpts[1:]]
    print(json.dumps([[c, m.decode()] for c, m in replies]))
]==]

describe("e2e: LMTP service", function()
	local server, sockdir, port, sock

	lazy_setup(function()
		sockdir = support.tmpdir()
		port, sock = support.free_port(), sockdir .. "/lmtp.sock"
		local policy = POLICY:gsub("@LMTP_PORT@", tostring(port))
			:gsub("@LMTP_SOCK@", function() return ("%q"):format(sock) end)
		server = support.start { policy = policy, args = {
			"--listen", "127.0.0.1:" .. port, "--listen", sock } }
	end)

	lazy_teardown(function()
		if server then
			server:stop()
			server:cleanup()
		end
		if sockdir then os.execute("rm -rf " .. support.shquote(sockdir)) end
	end)

	local function deliver(...)
		local before = #server:deliveries()
		local args = table.concat({ ... }, " ")
		local ok, code, out = support.run(("/usr/bin/python3 -c %s %s")
			:format(support.shquote(CLIENT), args), 30)
		assert(ok, ("client failed (exit %s):\n%s\n--- server stderr ---\n%s")
			:format(tostring(code), out, server:stderr()))
		local list = server:deliveries()
		assert.equal(before + 1, #list)
		return list[#list], out
	end

	local EXPECTED = {
		{ 250, "2.0.0 Delivered" }, { 552, "5.2.2 Mailbox full" },
		{ 450, "4.2.1 Try again later" }, { 250, "2.0.0 Delivered" },
	}

	for _, where in ipairs { "tcp", "unix" } do
		it("replies once per recipient, each its own verdict, over " .. where, function()
			local m, out
			if where == "tcp" then
				m, out = deliver("127.0.0.1", tostring(port))
			else
				m, out = deliver(support.shquote(sock))
			end
			local replies = {}
			for c, t in out:gmatch('%[(%d+), "([^"]*)"%]') do replies[#replies + 1] = { tonumber(c), t } end
			assert.same(EXPECTED, replies)
			assert.equal("py@client.example", m.from)
			assert.same({ "ok1@dest.example", "ok2@dest.example" }, m.to)
			assert.matches("Hello over LMTP.\r\n", m.body, 1, true)
			assert.matches("true py.example", server:envelope_log(), 1, true)
		end)
	end

	it("binds the unix socket with mode 0666, and the SMTP port says ESMTP and refuses LHLO", function()
		local ok, _, out = support.run("stat -c %a " .. support.shquote(sock), 10)
		assert(ok, out)
		assert.equal("666", out:match("%d+"))
		local c = support.connect(server)
		c:expect("^220 %S+ ESMTP")
		c:cmd("LHLO c.example", "^500 5%.5%.2 ")
		c:cmd("QUIT", "^221 ")
		c:close()
		c = support.connect { host = "127.0.0.1", port = port, stderr = function() return server:stderr() end }
		c:expect("^220 %S+ LMTP")
		c:cmd("EHLO c.example", "^500 5%.5%.1 ")
		c:cmd("QUIT", "^221 ")
		c:close()
	end)
end)
