-- spec/e2e/http_spec.lua -- smtp.http in the real server against real
-- peers on loopback, started here and stopped by PID: a Python HTTP server
-- (a webhook, also on ::1, a chunked response, a route that never answers,
-- a streamed message's scanner, a recorded rspamd /checkv2 exchange), the same over TLS with a self-signed
-- certificate, a socket that never accepts, and rspamd itself for
-- scripts/rspamd.lua (GTUBE is rejected).  Timeouts fire and the client
-- gets the policy's answer; after hundreds of timed-out requests the
-- server holds as many descriptors as before.
local support = require "spec.e2e.support"
local socket = require "socket"
local shquote = support.shquote

local PYTHON = "/usr/bin/python3"

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end

local function stop(pid)
	if not pid or not alive(pid) then return end
	os.execute(("kill -TERM %d"):format(pid))
	if not pcall(support.wait_until, function() return not alive(pid) end, 30, "exit") then
		os.execute(("kill -KILL %d"):format(pid))
	end
end

-- runs cmd in the background (output to log); its pid
local function spawn(cmd, log)
	local h = assert(io.popen("sh -c " .. shquote(("exec %s >>%s 2>&1 </dev/null & echo $!")
		:format(cmd, shquote(log)))))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start " .. cmd)
	return pid
end

local function listening(port, host)
	local c = host and socket.tcp6() or socket.tcp()
	c:settimeout(1)
	local ok = c:connect(host or "127.0.0.1", port)
	c:close()
	return ok
end

-- the peer: routes of a webhook, a scanner and rspamd, over http or https
local PEER = [=[
import http.server, json, os, socket, ssl, sys, time, hashlib
# what happened, a line each, for the spec to await (beside this script)
EVENTS = os.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "events"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def record(what):
    os.write(EVENTS, (what + "\n").encode())
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# rspamd 3.4's answer to GTUBE, as recorded
RECORDED = b'{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":1.027694}'
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, status, body, ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/hang"):
            # never answers: records the request, then the client's close
            record("GET " + self.path)
            try:
                while self.rfile.read1(4096):
                    pass
            except OSError:
                pass
            record("closed " + self.path)
            self.close_connection = True
            return
        self.answer(200, b"hello")
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/hook":
            ok = body == ("to=" + self.headers.get("X-Rcpt", "")).encode()
            self.answer(200 if ok else 400, b"ok " + body)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in [b"abc", b"defgh", b"ij"]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/scan":
            self.answer(200, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest()[:16])).encode())
        elif self.path == "/checkv2":
            rcpts = self.headers.get_all("Rcpt") or []
            if GTUBE in body and self.headers.get("From") and rcpts:
                self.answer(200, RECORDED, "application/json")
            else:
                self.answer(200, b'{"action":"no action","score":0.1,"required_score":15.0}', "application/json")
        else:
            self.answer(404, b"no")
class V6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
if sys.argv[1].startswith("v6:"):
    srv = V6(("::1", int(sys.argv[1][3:])), H)
else:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
srv.daemon_threads = True
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
]=]

local POLICY = [=[
local smtp = require "smtp"
local BASE, TLS, HOLE, CLOSED, V6 = @BASE@, @TLS@, @HOLE@, @CLOSED@, @V6@

local server = smtp.createServer(function(conn)
  conn:on("RCPT", function(rcpt)
    local who = rcpt.localPart
    local function answer(ok, text)
      rcpt.valid, rcpt.code = ok, ok and 250 or 451
      rcpt.message = (ok and "2.1.5 " or "4.3.0 ") .. tostring(text)
    end
    if who == "hook" then
      local st, h, b = smtp.http.request { method = "POST", url = BASE .. "/hook",
        headers = { ["X-Rcpt"] = rcpt.address }, body = "to=" .. rcpt.address, timeout = 10 }
      if not st then return answer(false, h) end
      return answer(st == 200, ("%d %s %s"):format(st, h["Content-Type"], b))
    elseif who == "v6" then
      local st, h, b = smtp.http.request { method = "POST", url = V6 .. "/hook",
        headers = { ["X-Rcpt"] = rcpt.address }, body = "to=" .. rcpt.address, timeout = 10 }
      return answer(st == 200, st and b or h)
    elseif who == "chunked" or who == "chunkedbig" then
      local st, h, b = smtp.http.request { method = "POST", url = BASE .. "/chunked", timeout = 10,
        maxBody = who == "chunked" and 10 or 9 }
      return answer(st == 200, st and (h["transfer-encoding"] .. " " .. b) or h)
    elseif who == "hang" then
      local st, err = smtp.http.request { url = BASE .. "/hang", timeout = 0.5 }
      return answer(st ~= nil, st or err)
    elseif who == "refused" then
      local st, err = smtp.http.request { url = CLOSED, timeout = 5 }
      return answer(st ~= nil, st or err)
    elseif who == "tls" or who == "tlsnoverify" then
      local st, h, b = smtp.http.request { url = TLS .. "/", timeout = 10, verify = who == "tls" }
      return answer(st ~= nil, st and (st .. " " .. b) or h)
    end
    if who == "leave" then	-- the client leaves while this waits
      smtp.http.request { url = BASE .. "/hang/leave", timeout = 60 }
      return
    end
    -- burst-N: N requests at once to a socket that never accepts, 0.3 s
    -- each; limit-N: the same, 50 at most in flight
    local kind, n = who:match("^(%a+)%-(%d+)$")
    n = tonumber(n)
    if not n then return end
    smtp.http.maxInFlight = kind == "limit" and 50 or 1000
    local done, errs = 0, {}
    for _ = 1, n do
      smtp.setTimeout(function()
        local st, err = smtp.http.request { url = HOLE .. "/x", timeout = 0.3 }
        errs[err or st] = (errs[err or st] or 0) + 1
        done = done + 1
      end, 0)
    end
    while done < n do smtp.sleep(0.05) end
    smtp.http.maxInFlight = 1000
    answer(true, ("%d timeout, %d refused"):format(errs.timeout or 0, errs["too many requests in flight"] or 0))
  end)
  conn:on("DATA", function(message)
    local scan = smtp.http.stream { url = BASE .. "/scan", timeout = 10, maxRequestBody = 4 << 20 }
    message:on("data", function(chunk) scan:write(chunk) end)
    message:on("abort", function() scan:cancel() end)
    message:on("end", function()
      local st, h, b = scan:finish()
      if not st then return message:reject(451, "4.3.0 " .. h) end
      message:accept(250, "2.0.0 scanned " .. b)
    end)
  end)
end)
server.receivedHeader = false	-- the scanner counts the client's octets, no more
server:listen(2525)
]=]

describe("smtp.http in the server", function()
	local dir, peer_pid, tls_pid, v6_pid, hole, server
	local port, tls_port, v6_port

	lazy_setup(function()
		dir = support.tmpdir()
		support.spit(dir .. "/peer.py", PEER)
		assert(support.run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 -subj /CN=localhost")
			:format(shquote(dir .. "/key.pem"), shquote(dir .. "/cert.pem")), 60))
		port, tls_port, v6_port = support.free_port(), support.free_port(), support.free_port()
		peer_pid = spawn(("%s %s %d"):format(PYTHON, shquote(dir .. "/peer.py"), port), dir .. "/peer.log")
		tls_pid = spawn(("%s %s %d %s %s"):format(PYTHON, shquote(dir .. "/peer.py"), tls_port,
			shquote(dir .. "/cert.pem"), shquote(dir .. "/key.pem")), dir .. "/peer.log")
		v6_pid = spawn(("%s %s v6:%d"):format(PYTHON, shquote(dir .. "/peer.py"), v6_port), dir .. "/peer.log")
		support.wait_until(function() return listening(port) and listening(tls_port) and listening(v6_port, "::1") end,
			60, "the Python peers")
		hole = assert(socket.bind("127.0.0.1", 0))	-- listens, never accepts
		local _, hole_port = hole:getsockname()
		local closed = support.free_port()
		local policy = POLICY:gsub("@([%u%d]+)@", {
			BASE = ("%q"):format("http://127.0.0.1:" .. port),
			TLS = ("%q"):format("https://localhost:" .. tls_port),
			HOLE = ("%q"):format("http://127.0.0.1:" .. hole_port),
			CLOSED = ("%q"):format("http://127.0.0.1:" .. closed .. "/"),
			V6 = ("%q"):format("http://[::1]:" .. v6_port),
		})
		server = support.start { policy = policy, workers = 0 }
	end)

	lazy_teardown(function()
		if server then server:stop() ; server:cleanup() end
		stop(peer_pid)
		stop(tls_pid)
		stop(v6_pid)
		if hole then hole:close() end
		if dir then os.execute("rm -rf " .. shquote(dir)) end
	end)

	-- one session up to RCPT: the reply's first line.  It ends with QUIT and
	-- the server's EOF: then the server holds no descriptor for it.
	local function rcpt(to)
		local c = support.connect(server)
		c.tcp:settimeout(60)	-- a burst takes a while on a loaded machine
		c:expect("^220")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:send("RCPT TO:<" .. to .. ">\r\n")
		local r = c:reply()
		if not r then c:close() ; return "(no reply)" end
		c:quit()
		return r.lines[1]
	end

	it("a webhook's status, headers and body decide", function()
		assert.equal("250 2.1.5 200 text/plain ok to=hook@example.org", rcpt("hook@example.org"))
	end)

	it("an IPv6 literal in the URL", function()
		assert.equal("250 2.1.5 ok to=v6@example.org", rcpt("v6@example.org"))
	end)

	it("a chunked response is read whole, and bounded by maxBody", function()
		assert.equal("250 2.1.5 chunked abcdefghij", rcpt("chunked@example.org"))
		assert.equal("451 4.3.0 response too large", rcpt("chunkedbig@example.org"))
	end)

	it("a peer that never answers: the request's timeout is the policy's answer", function()
		assert.equal("451 4.3.0 timeout", rcpt("hang@example.org"))
	end)

	it("a port nobody listens on: connection refused", function()
		assert.equal("451 4.3.0 connection refused", rcpt("refused@example.org"))
	end)

	it("https: a self-signed certificate fails verification; verify = false takes it", function()
		assert.matches("^451 4%.3%.0 tls: certificate verify failed", rcpt("tls@example.org"))
		assert.equal("250 2.1.5 200 hello", rcpt("tlsnoverify@example.org"))
	end)

	it("streams a message to a scanner: every octet arrives", function()
		local lines = {}
		for i = 1, 20000 do lines[i] = ("line %05d of a long message, to fill many chunks"):format(i) end
		local text = "Subject: big\r\n\r\n" .. table.concat(lines, "\r\n") .. "\r\n"
		local c = support.connect(server)
		c:expect("^220")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:cmd("RCPT TO:<x@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send(text .. ".\r\n")
		local r = c:expect("^250")
		c:quit()
		local n = tonumber(r.lines[1]:match("scanned (%d+) "))
		assert.equal(#text, n)
	end)

	it("a message over the stream's maxRequestBody: the policy hears why, nothing is sent", function()
		local c = support.connect(server)
		c:expect("^220")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:cmd("RCPT TO:<x@example.org>", "^250")
		c:cmd("DATA", "^354")
		local line = ("x"):rep(998) .. "\r\n"
		c:send("Subject: huge\r\n\r\n" .. line:rep(5000) .. ".\r\n")
		c:expect("^451 4%.3%.0 request body too large")
		-- and a client that leaves mid-message: its stream is freed (ASan watches)
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:cmd("RCPT TO:<x@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send("Subject: cut\r\n\r\n" .. line:rep(100))
		c:close()
		assert.equal("250 2.1.5 200 text/plain ok to=hook@example.org", rcpt("hook@example.org"))
	end)

	it("hundreds of timed-out requests leave the descriptors as they were", function()
		rcpt("burst-5@example.org")	-- the resolver and the listeners are made once
		-- idle: rcpt saw the server's EOF (and the sessions before it were over sooner)
		local before = support.fd_count(server.pid)
		for _ = 1, 3 do
			assert.equal("250 2.1.5 300 timeout, 0 refused", rcpt("burst-300@example.org"))
		end
		support.await_fd_count(server.pid, before, "after 900 timed-out requests")
	end)

	it("past smtp.http.maxInFlight, requests fail at once", function()
		-- the setTimeout functions start one after the other: 50 wait, 70 are refused
		assert.equal("250 2.1.5 50 timeout, 70 refused", rcpt("limit-120@example.org"))
	end)

	it("a client that leaves cancels the request its handler waits for", function()
		rcpt("burst-5@example.org")
		local before = support.fd_count(server.pid)	-- idle: rcpt saw the server's EOF
		local c = support.connect(server)
		c:expect("^220")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:send("RCPT TO:<leave@example.org>\r\n")
		-- the peer has the request: its connection is open (one more
		-- descriptor, besides the client's), for 60 s if nothing cancels it
		support.await_line(dir .. "/events", "GET /hang/leave")
		local during = support.fd_count(server.pid)
		assert(during >= before + 2, ("%d descriptors while the request waits, %d before:\n%s")
			:format(during, before, support.fd_list(server.pid)))
		c:close()
		-- the server closes the request's connection when it sees the client go
		support.await_line(dir .. "/events", "closed /hang/leave")
		support.await_fd_count(server.pid, before, "after the client left")
	end)

	it("the server's log has no sanitizer report (an ASan build)", function()
		assert.is_nil(server:stderr():find("Sanitizer", 1, true))
		assert.is_nil(server:stderr():find("runtime error", 1, true))
	end)
end)

-- scripts/rspamd.lua against a real rspamd (Debian's) and a recorded exchange
describe("scripts/rspamd.lua in the server", function()
	local dir, rspamd_pid, peer_pid

	local GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

	local function script_policy(url)
		return ("local url = %q\nlocal getenv = os.getenv\n"
			.. "os.getenv = function(k) if k == 'RSPAMD_URL' then return url end return getenv(k) end\n"
			.. "dofile(%q)\n"):format(url, assert(io.popen("pwd")):read("l") .. "/scripts/rspamd.lua")
	end

	local function message(server, body)
		local c = support.connect(server)
		c:expect("^220")
		c:cmd("EHLO client.example", "^250")
		c:cmd("MAIL FROM:<a@example.net>", "^250")
		c:cmd("RCPT TO:<b@example.org>", "^250")
		c:cmd("RCPT TO:<c@example.org>", "^250")
		c:cmd("DATA", "^354")
		c:send("From: a@example.net\r\nTo: b@example.org\r\nSubject: test\r\n\r\n" .. body .. "\r\n.\r\n")
		local r = c:reply()
		c:close()
		return r and r.lines[1] or "(no reply)"
	end

	lazy_setup(function() dir = support.tmpdir() end)
	lazy_teardown(function()
		stop(rspamd_pid)
		stop(peer_pid)
		if dir then os.execute("rm -rf " .. shquote(dir)) end
	end)

	it("a recorded rspamd answer: GTUBE is rejected with rspamd's text, the rest accepted", function()
		support.spit(dir .. "/peer.py", PEER)
		local port = support.free_port()
		peer_pid = spawn(("%s %s %d"):format(PYTHON, shquote(dir .. "/peer.py"), port), dir .. "/peer.log")
		support.wait_until(function() return listening(port) end, 60, "the Python peer")
		local server = support.start { policy = script_policy("http://127.0.0.1:" .. port), workers = 0 }
		finally(function() server:stop() ; server:cleanup() end)
		assert.equal("550 5.7.1 Gtube pattern", message(server, GTUBE))
		assert.equal("250 2.0.0 Message accepted", message(server, "hello"))
	end)

	it("a real rspamd: GTUBE is rejected; rspamd stopped: 451 4.7.0", function()
		local conf = dir .. "/rspamd"
		assert(os.execute("mkdir -p " .. shquote(conf .. "/db") .. " " .. shquote(conf .. "/run")
			.. " " .. shquote(conf .. "/local")))
		local port = support.free_port()
		-- Debian's configuration, but for the public suffix list: compiling
		-- its 9600 suffixes takes rspamd 30 s of CPU on a loaded machine
		-- before it answers; three do for GTUBE (no URL in it)
		support.spit(conf .. "/tld.dat", "com\norg\nnet\n")
		support.spit(conf .. "/options-override.inc", ("url_tld = %q;\n"):format(conf .. "/tld.dat"))
		support.spit(conf .. "/rspamd.conf", ([[
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=10) "%s/options-override.inc"
    dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }
}
logging { type = "console"; level = "notice"; }
worker "normal" {
    bind_socket = "127.0.0.1:%d";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}
]]):format(conf, port))
		local t0 = socket.gettime()
		rspamd_pid = spawn(("rspamd -f -i -u root -g root -c %s --var LOCAL_CONFDIR=%s --var DBDIR=%s"
			.. " --var RUNDIR=%s --var LOGDIR=%s"):format(shquote(conf .. "/rspamd.conf"), shquote(conf .. "/local"),
			shquote(conf .. "/db"), shquote(conf .. "/run"), shquote(conf)), conf .. "/rspamd.log")
		support.wait_until(function()
			if not alive(rspamd_pid) then
				error("rspamd exited:\n" .. (support.slurp(conf .. "/rspamd.log") or ""), 0)
			end
			local _, _, out = support.run(("curl -s -m 2 http://127.0.0.1:%d/ping"):format(port), 5)
			return out:match("pong")
		end, 180, "rspamd to answer /ping")
		print(("rspamd answered /ping %.1f s after its start"):format(socket.gettime() - t0))
		local server = support.start { policy = script_policy("http://127.0.0.1:" .. port), workers = 0 }
		finally(function() server:stop() ; server:cleanup() end)
		assert.equal("550 5.7.1 Gtube pattern", message(server, GTUBE))
		stop(rspamd_pid)
		rspamd_pid = nil
		assert.equal("451 4.7.0 Content scanner unavailable, try again later", message(server, GTUBE))
		assert.matches("rspamd http://127%.0%.0%.1:%d+/checkv2: connection refused %(tempfail%)", server:stderr())
	end)
end)

describe("luasmtpd --check", function()
	it("passes a 'connection' listener that waits for a request (it never answers there)", function()
		local dir = support.tmpdir()
		finally(function() os.execute("rm -rf " .. shquote(dir)) end)
		support.spit(dir .. "/policy.lua", [[
local smtp = require "smtp"
smtp.createServer(function(conn)
  local status = smtp.http.request { url = "http://127.0.0.1:9/allow", timeout = 1 }
  if status ~= 200 then conn:log("warn", "no answer") end
end):listen(2525)
]])
		local ok, _, out = support.run(shquote(support.binary()) .. " --check " .. shquote(dir .. "/policy.lua"), 60)
		assert.is_true(ok, out)
		assert.matches("policy.lua: OK", out)
	end)
end)
