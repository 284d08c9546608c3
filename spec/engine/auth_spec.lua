-- AUTH reaches Lua as an event whose valid defaults to false: it fails closed.
local testing = require "smtp.testing"
local core = require "smtp_core"

local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

local CONFIG = { config = { auth_methods = core.AUTH.PLAIN, auth_without_tls = true } }

describe("AUTH", function()
  it("is refused when no listener says yes", function()
    local h = testing.load_string("require('smtp').createServer(function(c) end)", CONFIG)
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN " .. b64("\0alice\0secret")):expect(535)
  end)

  it("gives the listener the credentials; valid = true accepts", function()
    local got, user
    local h = testing.load_string([[
      require("smtp").createServer(function(c)
        c:on("AUTH", function(a)
          GOT(a)
          a.valid = a.username == "alice" and a.password == "secret"
        end)
        c:on("MAIL", function() USER(c.user) end)
      end)
    ]], { config = CONFIG.config, globals = { GOT = function(a) got = a end, USER = function(u) user = u end } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN " .. b64("\0alice\0wrong")):expect(535)
    s:send("AUTH PLAIN " .. b64("\0alice\0secret")):expect(235)
    assert.equal("PLAIN", got.method)
    assert.equal("alice", got.username)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    assert.equal("alice", user)
  end)

  it("takes the mechanisms from server.authMethods and needs TLS unless the listener allows it", function()
    local h = testing.load_string([[
      local s = require("smtp").createServer(function(c)
        c:on("AUTH", function(a) a.valid = a.password == "secret" end)
      end)
      s.authMethods = { "login" }
      s.tls = { cert = "c.pem", key = "k.pem" }
    ]])
    assert.equal(core.AUTH.LOGIN, h.policy.config.auth_methods)
    local s = h:connect()
    s:expect(220)
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.matches("STARTTLS", ehlo.text)
    s:send("AUTH LOGIN"):expect { code = 538, enhanced = "5.7.11" }
    s:starttls()
    ehlo = s:send("EHLO c.example"):expect(250)
    assert.matches("AUTH LOGIN", ehlo.text, 1, true)
    assert.not_matches("PLAIN", ehlo.text)
    s:send("AUTH PLAIN " .. b64("\0alice\0secret")):expect(504)
  end)

  it("refuses an unknown mechanism and bad listen options at load", function()
    assert.has_error(function()
      testing.load_string('require("smtp").createServer().authMethods = { "CRAM-MD5" }')
    end)
    local ok, err = pcall(testing.load_string, 'require("smtp").createServer():listen(465, { tls = true })')
    assert.is_false(ok)
    assert.matches("needs server.tls", err, 1, true)
    ok, err = pcall(testing.load_string, 'require("smtp").createServer():listen(25, { tsl = true })')
    assert.is_false(ok)
    assert.matches('unknown option "tsl"', err, 1, true)
  end)

  it("shows connection.secure, connection.tls and connection.user; a waiting AUTH handler", function()
    local seen = {}
    local h = testing.load_string([[
      local smtp = require("smtp")
      local s = smtp.createServer(function(c)
        c:on("EHLO", function() SEEN[#SEEN + 1] = { secure = c.secure, tls = c.tls, user = c.user } end)
        c:on("AUTH", function(a)
          smtp.sleep(2)
          a.valid = a.username == "alice" and a.password == "secret"
        end)
        c:on("MAIL", function() SEEN[#SEEN + 1] = { secure = c.secure, user = c.user } end)
      end)
      s.authMethods = { "PLAIN" }
      s.tls = { cert = "c.pem", key = "k.pem" }
    ]], { globals = { SEEN = seen } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:starttls { version = "TLSv1.2", cipher = "ECDHE-RSA-AES128-GCM-SHA256", peerSubject = "/CN=client" }
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN " .. b64("\0alice\0secret"))
    s:expect_silence()
    h.clock:advance(2)
    s:expect(235)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    assert.same({ secure = false }, seen[1])
    assert.same({ secure = true, tls = { version = "TLSv1.2", cipher = "ECDHE-RSA-AES128-GCM-SHA256",
      peerSubject = "/CN=client" } }, seen[2])
    assert.same({ secure = true, user = "alice" }, seen[3])
  end)

  it("closes after too many failures", function()
    local h = testing.load_string([[
      local s = require("smtp").createServer(function(c) c:on("AUTH", function() end) end)
      s.authMethods = { "PLAIN" }
      s.maxAuthFailures = 2
    ]], { config = { auth_without_tls = true } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN " .. b64("\0a\0b")):expect(535)
    s:send("AUTH PLAIN " .. b64("\0a\0b"))
    local last = s:replies()
    assert.equal(421, last[#last].code)
    assert.is_true(s:closed())
  end)
end)
