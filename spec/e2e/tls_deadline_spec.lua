-- spec/e2e/tls_deadline_spec.lua -- every TLS handshake ends in time: a client
-- silent after STARTTLS, or trickling a ClientHello (after STARTTLS or on the
-- implicit-TLS port), has its socket closed once commandTimeout or
-- tlsHandshakeTimeout is over, however many octets it sends.  Each test awaits
-- the server's close with a bound; none sleeps to synchronise.
local socket = require "socket"
local support = require "spec.e2e.support"


local POLICY = [==[
local smtp = require "smtp"
local server = smtp.createServer(function(conn) end)
server.tls = { cert = @CERT@, key = @KEY@ }
server.commandTimeout = @COMMAND@
server.tlsHandshakeTimeout = @HANDSHAKE@
server:listen(@IMPLICIT@, "127.0.0.1", { tls = true })
]==]

-- The start of a TLS record holding a 512-octet handshake message: OpenSSL
-- waits for the rest, which the trickle never completes.
local RECORD_HEAD = "\22\3\1\2\0"

-- Reads until the server closes; returns the seconds it took, or fails after
-- bound seconds.  ("*a" says "closed" when nothing came before the close; a
-- reset counts as a close too: the server may drop unread input.)
local function await_close(tcp, bound)
	local t0 = socket.gettime()
	tcp:settimeout(bound)
	local data, err = tcp:receive("*a")
	local took = socket.gettime() - t0
	if data == nil and err ~= "closed" and err ~= "connection reset by peer" then
		error(("the server did not close within %.1f s (%s)"):format(bound, tostring(err)), 2)
	end
	return took
end

-- Sends bytes one octet every step seconds (the wait is a receive that also
-- notices the close) until the server closes; returns the seconds it took.
local function trickle_until_closed(tcp, bytes, step, bound)
	local t0, i = socket.gettime(), 1
	tcp:settimeout(step)
	while socket.gettime() - t0 < bound do
		if i <= #bytes then
			tcp:send(bytes:sub(i, i))
			i = i + 1
		end
		local data, err = tcp:receive("*a")
		if data ~= nil or err == "connection reset by peer" or err == "closed" then
			return socket.gettime() - t0, i - 1
		end
	end
	error(("the server did not close within %.1f s; %d octets sent"):format(bound, i - 1), 2)
end

describe("e2e: TLS handshake deadlines", function()
	local server, implicit, certdir

	lazy_setup(function()
		certdir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=localhost -keyout %s/key.pem -out %s/cert.pem")
			:format(certdir, certdir), 30)
		assert(ok, out)
		implicit = support.free_port()
		local policy = POLICY:gsub("@(%u+)@", {
			CERT = ("%q"):format(certdir .. "/cert.pem"), KEY = ("%q"):format(certdir .. "/key.pem"),
			COMMAND = "0.5", HANDSHAKE = "1", IMPLICIT = tostring(implicit) })
		server = support.start { policy = policy, args = { "--listen", "127.0.0.1:" .. implicit } }
	end)

	lazy_teardown(function()
		if server then
			server:stop()
			server:cleanup()
		end
		if certdir then os.execute("rm -rf " .. support.shquote(certdir)) end
	end)

	local function after_starttls()
		local c = support.connect(server)
		c:hello()
		c:cmd("STARTTLS", "^220 ")
		return c
	end

	it("closes a client silent after STARTTLS once commandTimeout is over", function()
		local c = after_starttls()
		local took = await_close(c.tcp, 5)
		c:close()
		assert.is_true(took >= 0.4, ("closed after %.2f s"):format(took))
		assert.matches("TLS handshake not done within 0%.5 s of STARTTLS %(commandTimeout%)", server:stderr())
	end)

	it("closes a client trickling a ClientHello after STARTTLS", function()
		local c = after_starttls()
		local took, sent = trickle_until_closed(c.tcp, RECORD_HEAD .. ("\0"):rep(200), 0.05, 5)
		c:close()
		assert.is_true(sent >= 5, "the trickle had started")
		assert.is_true(took >= 0.4, ("closed after %.2f s"):format(took))
	end)

	it("closes a client trickling a ClientHello on the implicit-TLS port after tlsHandshakeTimeout", function()
		local tcp = assert(socket.tcp())
		tcp:settimeout(5)
		assert(tcp:connect("127.0.0.1", implicit))
		local took, sent = trickle_until_closed(tcp, RECORD_HEAD .. ("\0"):rep(200), 0.05, 5)
		tcp:close()
		assert.is_true(sent >= 10, "the trickle had started")
		assert.is_true(took >= 0.9, ("closed after %.2f s"):format(took))
		assert.matches("TLS handshake with 127%.0%.0%.1 port %d+ failed: not done within 1 s %(tlsHandshakeTimeout%)",
			server:stderr())
	end)

	it("closes a client silent on the implicit-TLS port", function()
		local tcp = assert(socket.tcp())
		tcp:settimeout(5)
		assert(tcp:connect("127.0.0.1", implicit))
		local took = await_close(tcp, 5)
		tcp:close()
		assert.is_true(took >= 0.9, ("closed after %.2f s"):format(took))
	end)

	it("still serves STARTTLS and a session after it", function()
		local out
		local ok, code
		ok, code, out = support.run(("swaks --server %s --port %d --tls --from a@example.net"
			.. " --to b@example.com --body 'in time'"):format(server.host, server.port), 30)
		assert(ok, ("swaks failed (%s):\n%s\n%s"):format(tostring(code), out, server:stderr()))
		assert.matches("250 2%.0%.0 Message accepted", out)
	end)
end)
