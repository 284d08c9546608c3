-- spec/e2e/listeners_spec.lua -- per-port settings: every connection gets the
-- TLS and AUTH settings of the local port it reached, in a worker process and
-- with --workers 0, and a reload serves the certificates as they are then.
--
-- Three ports: the support's --listen port, which the script does not name
-- (the server's defaults: STARTTLS, no AUTH before TLS), a port whose listen
-- options allow AUTH before TLS, and an implicit-TLS port.  openssl s_client
-- reports the certificate a port presents; each certificate has its own CN.
local support = require "spec.e2e.support"

local POLICY = [==[
local smtp = require "smtp"
local server = smtp.createServer(function(conn)
	conn:on("AUTH", function(auth) auth.valid = true end)
end)
server.tls = { cert = @CERT@, key = @KEY@ }
server.authMethods = { "PLAIN" }
server:listen(@INSECURE@, "127.0.0.1", { insecureAuth = true })
server:listen(@IMPLICIT@, "127.0.0.1", { tls = true })
]==]

-- A self-signed certificate for cn, written over dir/cert.pem and dir/key.pem.
local function make_cert(dir, cn)
	local ok, _, out = support.run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
		.. " -nodes -days 2 -subj /CN=%s -keyout %s/key.pem -out %s/cert.pem")
		:format(cn, support.shquote(dir), support.shquote(dir)), 30)
	assert(ok, out)
end

-- The subject of the certificate a port presents (after STARTTLS if asked).
local function subject(port, starttls)
	local _, _, out = support.run(("openssl s_client -connect 127.0.0.1:%d%s")
		:format(port, starttls and " -starttls smtp" or ""), 30)
	return out:match("subject=%s*([^\n]*)") or ("no certificate in:\n" .. out)
end


for _, workers in ipairs { 1, 0 } do
	describe(("e2e: per-port settings (--workers %d)"):format(workers), function()
		local server, certdir, insecure, implicit

		lazy_setup(function()
			certdir = support.tmpdir()
			make_cert(certdir, "first")
			insecure, implicit = support.free_port(), support.free_port()
			local policy = POLICY:gsub("@%u+@", {
				["@CERT@"] = ("%q"):format(certdir .. "/cert.pem"),
				["@KEY@"] = ("%q"):format(certdir .. "/key.pem"),
				["@INSECURE@"] = tostring(insecure), ["@IMPLICIT@"] = tostring(implicit),
			})
			server = support.start { policy = policy, workers = workers, args = {
				"--listen", "127.0.0.1:" .. insecure, "--listen", "127.0.0.1:" .. implicit } }
		end)

		lazy_teardown(function()
			if server then
				server:stop()
				server:cleanup()
			end
			if certdir then os.execute("rm -rf " .. support.shquote(certdir)) end
		end)

		local function ehlo(port)
			local c = support.connect { host = "127.0.0.1", port = port,
				stderr = function() return server:stderr() end }
			local text = table.concat(c:hello().lines, "\n")
			c:cmd("QUIT", "^221 ")
			c:close()
			return text
		end

		it("a port the script does not name: STARTTLS, no AUTH before TLS", function()
			local text = ehlo(server.port)
			assert.matches("STARTTLS", text, 1, true)
			assert.not_matches("AUTH", text, 1, true)
			assert.matches("CN ?= ?first", subject(server.port, true))
		end)

		it("an insecureAuth port: STARTTLS and AUTH before TLS", function()
			local text = ehlo(insecure)
			assert.matches("STARTTLS", text, 1, true)
			assert.matches("AUTH PLAIN", text, 1, true)
		end)

		it("an implicit-TLS port: the handshake comes first", function()
			assert.matches("CN ?= ?first", subject(implicit, false))
		end)

		if workers > 0 then
			it("a reload serves the new certificate on every port", function()
				make_cert(certdir, "second")
				server:signal("HUP")
				server:await_log("reload: generation 2 serving", 15)
				assert.matches("CN ?= ?second", subject(server.port, true))
				assert.matches("CN ?= ?second", subject(implicit, false))
				assert.matches("AUTH PLAIN", ehlo(insecure), 1, true)
			end)
		end
	end)
end
