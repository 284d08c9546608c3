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
    local got
    local h = testing.load_string([[
      require("smtp").createServer(function(c)
        c:on("AUTH", function(a)
          GOT(a)
          a.valid = a.username == "alice" and a.password == "secret"
        end)
        c:on("MAIL", function() USER(c.user) end)
      end)
    ]], { config = CONFIG.config, globals = { GOT = function(a) got = a end, USER = function(u) got.user = u end } })
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:send("AUTH PLAIN " .. b64("\0alice\0wrong")):expect(535)
    s:send("AUTH PLAIN " .. b64("\0alice\0secret")):expect(235)
    assert.equal("PLAIN", got.method)
    assert.equal("alice", got.username)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    assert.equal("alice", got.user)
  end)
end)
