-- spec/e2e/proxy_spec.lua -- the PROXY protocol behind a real HAProxy.
--
-- HAProxy (Debian's) listens on loopback ports of its own and forwards to a
-- {proxy = true} listener of luasmtpd with send-proxy (v1) and send-proxy-v2.
-- The client connects to HAProxy from 127.0.0.2 (or ::1), so the address the
-- policy sees differs from HAProxy's own source (127.0.0.1): only the header
-- can have told it.  A source outside proxyFrom, a bad header and a header
-- that does not come in time are each closed with a log line.  A header in
-- the socket by the accept is read at once (the worker is stopped while the
-- client sends it); one that is not, or only in part, is waited for.
local socket = require "socket"
local support = require "spec.e2e.support"

local POLICY = [==[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("EHLO", function(h)
		h.message = ("client %s port %d local %s port %d"):format(conn.remoteAddress,
			conn.remotePort, conn.localAddress, conn.localPort)
	end)
end)
server:listen(@PROXIED@, "127.0.0.1", { proxy = true, proxyFrom = { "10.0.0.0/8", "127.0.0.1" },
	proxyTimeout = 1 })
server:listen(@UNTRUSTED@, "127.0.0.1", { proxy = true, proxyFrom = { "192.0.2.0/24" } })
server:listen(@IMPLICIT@, "127.0.0.1", { tls = true, proxy = true, proxyFrom = { "127.0.0.1" } })
server.tls = { cert = @CERT@, key = @KEY@ }
]==]

local HAPROXY_CFG = [==[
global
	maxconn 100
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend v1
	bind 127.0.0.1:@V1@
	default_backend v1
frontend v2
	bind 127.0.0.1:@V2@
	bind [::1]:@V2@
	default_backend v2
frontend tls
	bind 127.0.0.1:@V3@
	default_backend tls
backend v1
	server smtp 127.0.0.1:@PROXIED@ send-proxy
backend v2
	server smtp 127.0.0.1:@PROXIED@ send-proxy-v2
backend tls
	server smtp 127.0.0.1:@IMPLICIT@ send-proxy-v2
]==]

-- Python's TLS client from 127.0.0.2 through HAProxy to the implicit-TLS port:
-- prints the EHLO reply
local TLS_CLIENT = [==[
import socket, ssl, sys
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10,
    source_address=("127.0.0.2", 0))
port = raw.getsockname()[1]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(raw)
f = s.makefile("rb")
def reply():
    out = []
    while True:
        line = f.readline().decode()
        out.append(line.strip())
        if line[3:4] != "-":
            return " | ".join(out)
print(reply())
s.sendall(b"EHLO tls.example\r\n")
print(reply())
print("client port %d" % port)
s.sendall(b"QUIT\r\n")
print(reply())
]==]

-- Python's TLS client straight to the implicit-TLS port with a v2 header of
-- its own (client 192.0.2.48 port 4848): sends the header's first CUT
-- octets, prints its port, sends the rest once the file GO exists (when
-- CUT is short of the header), then does TLS and prints the EHLO reply.
local TLS_SPLIT = [==[
import os, socket, ssl, struct, sys, time
port, go, cut = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
hdr = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", 12) + \
    socket.inet_aton("192.0.2.48") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 4848, 465)
raw = socket.create_connection(("127.0.0.1", port), timeout=30)
raw.sendall(hdr[:cut])
print("port %d" % raw.getsockname()[1], flush=True)
if cut < len(hdr):
    deadline = time.time() + 30
    while not os.path.exists(go):
        if time.time() > deadline:
            sys.exit("no go file")
        time.sleep(0.01)
    raw.sendall(hdr[cut:])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(raw)
f = s.makefile("rb")
def reply():
    out = []
    while True:
        line = f.readline().decode()
        out.append(line.strip())
        if line[3:4] != "-":
            return " | ".join(out)
print(reply())
s.sendall(b"EHLO split.example\r\n")
print(reply())
s.sendall(b"QUIT\r\n")
print(reply())
]==]

local function have_ipv6()
	local s = socket.tcp6()
	local ok = s and s:bind("::1", 0)
	if s then s:close() end
	return ok ~= nil
end

-- A client of host:port whose own address is from (luasocket bind, port 0).
local function connect_from(from, host, port)
	local tcp = assert(from:find(":", 1, true) and socket.tcp6() or socket.tcp())
	tcp:settimeout(10)
	assert(tcp:bind(from, 0))
	assert(tcp:connect(host, port))
	return support.wrap and support.wrap(tcp) or tcp
end

-- Reads one reply (all its lines) from a raw socket.
local function reply(tcp)
	local lines = {}
	repeat
		local line, err = tcp:receive("*l")
		assert(line, "connection: " .. tostring(err) .. " after " .. table.concat(lines, "|"))
		lines[#lines + 1] = line
	until line:match("^%d%d%d ")
	return table.concat(lines, "\n")
end

describe("e2e: PROXY protocol", function()
	local server, dir, hapid, ports, metrics_url

	-- luasmtpd_connections_refused_total{reason=REASON} now
	local function refused(reason)
		local body = assert(require("socket.http").request(metrics_url))
		return tonumber(body:match('\nluasmtpd_connections_refused_total{reason="' .. reason .. '"} (%d+)'))
	end

	-- Runs fn with the worker (of srv, default the spec's server) stopped
	-- (SIGSTOP): the kernel completes the client's handshake and queues what
	-- it sends, so the worker's accept finds it there.
	local function worker_stopped(fn, srv)
		local pids = (srv or server):children()
		assert.equal(1, #pids)
		assert(os.execute(("kill -STOP %d"):format(pids[1])))
		local ok, err = pcall(fn)
		os.execute(("kill -CONT %d"):format(pids[1]))
		assert(ok, err)
	end

	lazy_setup(function()
		ports = { PROXIED = support.free_port(), UNTRUSTED = support.free_port(),
			IMPLICIT = support.free_port(), V1 = support.free_port(), V2 = support.free_port(),
			V3 = support.free_port() }
		dir = support.tmpdir()
		local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
			.. " -nodes -days 2 -subj /CN=mx.test -keyout %s/key.pem -out %s/cert.pem")
			:format(support.shquote(dir), support.shquote(dir)), 30)
		assert(ok, out)
		ports.CERT, ports.KEY = ("%q"):format(dir .. "/cert.pem"), ("%q"):format(dir .. "/key.pem")
		local function fill(s) return (s:gsub("@(%u+%d?)@", function(k) return tostring(ports[k]) end)) end
		server = support.start { policy = fill(POLICY), args = {
			"--listen", "127.0.0.1:" .. ports.PROXIED, "--listen", "127.0.0.1:" .. ports.UNTRUSTED,
			"--listen", "127.0.0.1:" .. ports.IMPLICIT, "--metrics", "127.0.0.1:0",
			"--log-level", "debug" } }
		metrics_url = server:await_log("metrics on (http://127%.0%.0%.1:%d+/metrics)")
		local cfg = fill(HAPROXY_CFG)
		if not have_ipv6() then cfg = cfg:gsub("\tbind %[::1%][^\n]*\n", "") end
		support.spit(dir .. "/haproxy.cfg", cfg)
		local h = assert(io.popen(("haproxy -f %s -db >%s 2>&1 </dev/null & echo $!")
			:format(support.shquote(dir .. "/haproxy.cfg"), support.shquote(dir .. "/haproxy.log"))))
		hapid = tonumber(h:read("l"))
		h:close()
		assert(hapid, "haproxy did not start")
		support.wait_until(function()
			if os.execute(("kill -0 %d 2>/dev/null"):format(hapid)) ~= true then
				error("haproxy exited:\n" .. (support.slurp(dir .. "/haproxy.log") or ""), 0)
			end
			local t = socket.tcp()
			t:settimeout(1)
			local ok = t:connect("127.0.0.1", ports.V2)
			t:close()
			return ok
		end, 15, "haproxy to listen")
	end)

	lazy_teardown(function()
		if hapid then
			os.execute(("kill %d 2>/dev/null"):format(hapid))
			pcall(support.wait_until, function()
				return os.execute(("kill -0 %d 2>/dev/null"):format(hapid)) ~= true
			end, 10, "haproxy to exit")
			os.execute(("kill -9 %d 2>/dev/null"):format(hapid))
		end
		if server then
			server:stop()
			server:cleanup()
		end
		if dir then os.execute("rm -rf " .. support.shquote(dir)) end
	end)

	for _, case in ipairs {
		{ "send-proxy (v1)", "V1", "127.0.0.2", "127.0.0.1" },
		{ "send-proxy-v2", "V2", "127.0.0.2", "127.0.0.1" },
		{ "send-proxy-v2 from ::1 (TCP6)", "V2", "::1", "::1" },
	} do
		local name, frontend, from, to = case[1], case[2], case[3], case[4]
		it("gives the policy the client's address through HAProxy's " .. name, function()
			if from == "::1" and not have_ipv6() then
				pending("no IPv6 loopback here")
				return
			end
			local tcp = connect_from(from, to, ports[frontend])
			local greeting = reply(tcp)
			assert.matches("^220 ", greeting)
			local _, myport = tcp:getsockname()
			assert(tcp:send("EHLO client.example\r\n"))
			local ehlo = reply(tcp)
			-- the client's own address and port, and HAProxy's frontend as the local end
			assert.matches(("client %s port %d local %s port %d"):format(from:gsub("%.", "%%."),
				tonumber(myport), to:gsub("%.", "%%."), ports[frontend]), ehlo, 1, false)
			assert(tcp:send("QUIT\r\n"))
			assert.matches("^221 ", reply(tcp))
			tcp:close()
			server:await_log(("connection from %s port %d to [^\n]* via proxy 127%%.0%%.0%%.1 port %%d+")
				:format(from:gsub("%.", "%%."), tonumber(myport)))
			-- the summary line names the same client, and the proxy as the first line does
			server:await_log(("connection client=%s port=%d proxy=127%%.0%%.0%%.1 proxy_port=%%d+ helo=client%%.example ")
				:format(from:gsub("%.", "%%."), tonumber(myport)))
		end)
	end

	it("reads the header before the TLS handshake on an implicit-TLS listener (send-proxy-v2)", function()
		support.spit(dir .. "/tls_client.py", TLS_CLIENT)
		local ok, _, out = support.run(("python3 %s %d"):format(support.shquote(dir .. "/tls_client.py"),
			ports.V3), 60)
		assert(ok, out)
		assert.matches("^220 ", out)
		local myport = assert(out:match("client port (%d+)"), out)
		assert.matches(("client 127%%.0%%.0%%.2 port %s local 127%%.0%%.0%%.1 port %d"):format(myport,
			ports.V3), out)
		server:await_log("connection from 127%.0%.0%.2 port " .. myport .. " to [^\n]* via proxy "
			.. "127%.0%.0%.1 port %d+ %(implicit TLS%)")
	end)

	it("closes a source outside proxyFrom with a log line", function()
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.UNTRUSTED)
		tcp:send("PROXY TCP4 192.0.2.9 127.0.0.1 1234 25\r\n")
		local line, err = tcp:receive("*l")
		assert.is_nil(line)
		assert.equal("closed", err)
		tcp:close()
		server:await_log("connection from 127%.0%.0%.1 refused: not a trusted proxy %(proxyFrom of port "
			.. ports.UNTRUSTED .. "%)")
	end)

	it("closes a bad header from a trusted source with a log line, without a reply", function()
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
		tcp:send("EHLO direct.example\r\n")
		local line, err = tcp:receive("*l")
		assert.is_nil(line)
		assert.equal("closed", err)
		tcp:close()
		server:await_log("closed: not a PROXY protocol header %(a PROXY protocol header was expected%)")
	end)

	it("closes a header that does not come within proxyTimeout", function()
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
		tcp:send("PROXY TCP4 192.0.2.1 ")	-- and then nothing
		local line, err = tcp:receive("*l")	-- the server closes (10 s bound)
		assert.is_nil(line)
		assert.equal("closed", err)
		tcp:close()
		server:await_log("closed: no complete PROXY header within 1 s %(proxyTimeout%)")
	end)

	it("counts a source outside proxyFrom and a bad header as refused{reason=\"proxy\"}", function()
		local before = assert(refused("proxy"))
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.UNTRUSTED)
		local _, err = tcp:receive("*l")
		assert.equal("closed", err)
		tcp:close()
		tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
		tcp:send("HELO direct.example\r\n")
		_, err = tcp:receive("*l")
		assert.equal("closed", err)
		tcp:close()
		-- the count goes before the log line; two closes are two counts
		support.wait_until(function() return refused("proxy") >= before + 2 end, 20, "two proxy refusals counted")
		assert.equal(before + 2, refused("proxy"))
		assert.equal(0, refused("limit"))
	end)

	it("takes a header and a pipelined command in one segment, octet for octet", function()
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
		tcp:send("PROXY TCP4 192.0.2.44 127.0.0.1 4444 25\r\nEHLO early.example\r\n")
		assert.matches("^220 ", reply(tcp))
		assert.matches("client 192%.0%.2%.44 port 4444 local 127%.0%.0%.1 port 25", reply(tcp))
		tcp:close()
	end)

	it("reads a header that is in by the accept at once, and what came after it", function()
		local tcp, myport
		worker_stopped(function()
			tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
			myport = select(2, tcp:getsockname())
			assert(tcp:send("PROXY TCP4 192.0.2.45 127.0.0.1 4545 25\r\nEHLO early.example\r\n"))
		end)
		assert.matches("^220 ", reply(tcp))
		assert.matches("client 192%.0%.2%.45 port 4545 local 127%.0%.0%.1 port 25", reply(tcp))
		tcp:close()
		server:await_log("connection from 127%.0%.0%.1 port " .. myport
			.. ": PROXY v1 header read at the accept")
		assert.is_nil(server:stderr():find("port " .. myport .. ": no complete PROXY header yet", 1, true))
	end)

	it("waits for a header that is only in part by the accept, then reads the rest", function()
		local tcp, myport
		worker_stopped(function()
			tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
			myport = select(2, tcp:getsockname())
			assert(tcp:send("PROXY TCP4 192.0.2.46 "))
		end)
		server:await_log("connection from 127%.0%.0%.1 port " .. myport
			.. ": no complete PROXY header yet: waiting up to 1000 ms %(proxyTimeout%)")
		assert(tcp:send("127.0.0.1 4646 25\r\nEHLO late.example\r\n"))
		assert.matches("^220 ", reply(tcp))
		assert.matches("client 192%.0%.2%.46 port 4646 local 127%.0%.0%.1 port 25", reply(tcp))
		tcp:close()
		server:await_log("connection from 127%.0%.0%.1 port " .. myport
			.. ": PROXY v1 header read after a wait")
	end)

	it("waits for a v2 header sent after the accept", function()
		local tcp = connect_from("127.0.0.1", "127.0.0.1", ports.PROXIED)
		local myport = select(2, tcp:getsockname())
		server:await_log("connection from 127%.0%.0%.1 port " .. myport .. ": no complete PROXY header yet")
		-- v2, PROXY over TCP4: 192.0.2.47 port 4747 to 127.0.0.1 port 25
		assert(tcp:send("\r\n\r\n\0\r\nQUIT\n\x21\x11\0\12" .. "\192\0\2\47" .. "\127\0\0\1"
			.. "\18\143" .. "\0\25"))
		assert.matches("^220 ", reply(tcp))
		assert(tcp:send("EHLO later.example\r\n"))
		assert.matches("client 192%.0%.2%.47 port 4751 local 127%.0%.0%.1 port 25", reply(tcp))
		tcp:close()
		server:await_log("connection from 127%.0%.0%.1 port " .. myport
			.. ": PROXY v2 header read after a wait")
	end)

	it("settles the count of a client the per-client limit refuses when its header was in by the accept", function()
		local port = support.free_port()
		local srv = support.start { policy = ([[
local smtp = require "smtp"
local server = smtp.createServer()
server.maxConnections = 2
server.maxConnectionsPerClient = 1
server:listen(%d, "127.0.0.1", { proxy = true, proxyFrom = { "127.0.0.1" } })
]]):format(port), args = { "--listen", "127.0.0.1:" .. port, "--log-level", "debug" } }
		local ok, err = pcall(function()
			local function hdr(client) return ("PROXY TCP4 %s 127.0.0.1 1000 25\r\n"):format(client) end
			local a = connect_from("127.0.0.1", "127.0.0.1", port)
			assert(a:send(hdr("192.0.2.1")))
			assert.matches("^220 ", reply(a))
			local b, bport
			worker_stopped(function()
				b = connect_from("127.0.0.1", "127.0.0.1", port)
				bport = select(2, b:getsockname())
				assert(b:send(hdr("192.0.2.1")))	-- a second from one client: over the limit
			end, srv)
			assert.matches("^421 4%.7%.0 Too many connections", reply(b))
			b:close()
			srv:await_log("port " .. bport .. ": PROXY v1 header read at the accept")
			-- one live connection (a): room for exactly one more in all
			local c = connect_from("127.0.0.1", "127.0.0.1", port)
			assert(c:send(hdr("192.0.2.3")))
			assert.matches("^220 ", reply(c))
			local d = connect_from("127.0.0.1", "127.0.0.1", port)
			d:send(hdr("192.0.2.4"))
			assert.matches("^421 4%.7%.0 Too many connections", reply(d))
			for _, t in ipairs { a, c, d } do t:close() end
		end)
		srv:stop()
		srv:cleanup()
		assert(ok, err)
	end)

	for _, case in ipairs {
		{ "in by the accept, with the ClientHello after it", 28, "at the accept" },
		{ "in part by the accept", 10, "after a wait" },
	} do
		local name, cut, how = case[1], case[2], case[3]
		it("reads a v2 header " .. name .. " on an implicit-TLS listener, then does TLS", function()
			support.spit(dir .. "/tls_split.py", TLS_SPLIT)
			local go = dir .. "/go." .. cut
			local h, myport
			worker_stopped(function()
				h = assert(io.popen(("python3 %s %d %s %d 2>&1"):format(support.shquote(dir .. "/tls_split.py"),
					ports.IMPLICIT, support.shquote(go), cut)))
				myport = assert(h:read("l"):match("^port (%d+)$"))
			end)
			if cut < 28 then
				server:await_log("connection from 127%.0%.0%.1 port " .. myport
					.. ": no complete PROXY header yet")
				support.spit(go, "")
			end
			local out = h:read("a")
			h:close()
			assert.matches("^220 ", out)
			assert.matches("client 192%.0%.2%.48 port 4848 local 127%.0%.0%.1 port 465", out)
			assert.matches("221 ", out)
			server:await_log("connection from 127%.0%.0%.1 port " .. myport .. ": PROXY v2 header read " .. how)
		end)
	end
end)
