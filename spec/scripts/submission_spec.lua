-- scripts/submission.lua: STARTTLS, then AUTH, then MAIL as one's own address.
-- TLS is simulated by the harness (s:starttls()); the binary's --check loads
-- the certificates for real.
local testing = require "smtp.testing"

local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 3, 0, -1 do
      local k = n // 64 ^ j % 64
      out[#out + 1] = chars:sub(k + 1, k + 1)
    end
    if not b then out[#out], out[#out - 1] = "=", "=" elseif not c then out[#out] = "=" end
  end
  return table.concat(out)
end

local build = os.getenv("LUASMTPD_BUILD") or "build"

describe("scripts/submission.lua", function()
  local h
  before_each(function() h = testing.load("scripts/submission.lua") end)

  it("listens on 587 (STARTTLS) and 465 (implicit TLS)", function()
    assert.same({ { port = 587, host = "127.0.0.1" }, { port = 465, host = "127.0.0.1", tls = true } },
      h.listening)
  end)

  it("offers STARTTLS, refuses AUTH before it (538) and MAIL before AUTH (530)", function()
    local s = h:connect()
    s:expect(220)
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.matches("STARTTLS", ehlo.text)
    assert.not_matches("AUTH", ehlo.text)
    s:send("AUTH PLAIN " .. b64("\0alice\0wonderland")):expect { code = 538, enhanced = "5.7.11" }
    s:send("MAIL FROM:<alice@example.org>"):expect { code = 530, enhanced = "5.7.0" }
  end)

  it("after STARTTLS: AUTH, then mail from the user's own address", function()
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:starttls { version = "TLSv1.3" }
    s:send("MAIL FROM:<alice@example.org>"):expect(503)	-- the session started over
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.matches("AUTH PLAIN LOGIN", ehlo.text, 1, true)
    assert.not_matches("STARTTLS", ehlo.text)
    s:send("AUTH PLAIN " .. b64("\0alice\0wrong")):expect(535)
    s:send("AUTH LOGIN"):expect(334)
    s:send(b64("alice")):expect(334)
    s:send(b64("wonderland")):expect(235)
    s:send("MAIL FROM:<bob@example.org>"):expect { code = 553, enhanced = "5.7.1" }
    s:send("MAIL FROM:<alice@example.org>"):expect(250)
    s:send("RCPT TO:<carol@example.net>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("hi\r\n.\r\n"):expect(250)
    assert.matches("accepted from alice", h:log(), 1, true)
    assert.not_matches("wonderland", h:log(), 1, true)	-- credentials never logged
  end)

  it("drops commands pipelined after STARTTLS", function()
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send_raw("STARTTLS\r\nAUTH PLAIN " .. b64("\0alice\0wonderland") .. "\r\n")
    s:expect(220)
    s:expect_silence()
    s:handshake()
    s:expect_silence()
    s:send("EHLO c.example"):expect(250)
    s:send("MAIL FROM:<alice@example.org>"):expect(530)	-- the injected AUTH never ran
  end)

  it("is secure from the start on the implicit-TLS port", function()
    local s = h:connect { tls = { version = "TLSv1.2", cipher = "ECDHE-RSA-AES128-GCM-SHA256" }, localPort = 465 }
    s:expect(220)
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.not_matches("STARTTLS", ehlo.text)
    s:send("AUTH PLAIN " .. b64("\0bob\0builder")):expect(235)
    s:send("MAIL FROM:<robert@example.org>"):expect(250)
  end)

  it("fails to load, naming the file, when the certificate is missing", function()
    local out = os.tmpname()
    local ok = os.execute(("SUBMISSION_CERT=/nonexistent/cert.pem timeout 20 %s/luasmtpd --check "
      .. "scripts/submission.lua >%s 2>&1"):format(build, out))
    local f = io.open(out, "rb")
    local text = f:read("a")
    f:close()
    os.remove(out)
    assert.is_not_true(ok)
    assert.matches("scripts/submission.lua: server.tls: cannot read certificate /nonexistent/cert.pem",
      text, 1, true)
  end)
end)
