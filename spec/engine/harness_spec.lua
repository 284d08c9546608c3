-- smtp.testing itself: replies, failures that show the transcript,
-- sendmail, pipelining, the virtual clock, captured logs, load errors.
local testing = require "smtp.testing"

local ACCEPT_ALL = [[
local smtp = require "smtp"
local server = smtp.createServer(function(c)
  c:on("DATA", function(m) m:on("end", function() m:accept() end) end)
end)
server.hostname = "mx.example.org"
server:listen(2525)
server:listen(2526, "::1")
]]

describe("smtp.testing", function()
  it("parses replies into code, enhanced code and lines", function()
    local s = testing.load_string(ACCEPT_ALL):connect()
    local greeting = s:expect(220)
    assert.same({ "mx.example.org ESMTP" }, greeting.lines)
    local ehlo = s:send("EHLO c.example"):expect(250)
    assert.is_nil(ehlo.enhanced)
    assert.equal("mx.example.org", ehlo.lines[1])
    assert.truthy(#ehlo.lines > 3)
    local mail = s:send("MAIL FROM:<a@example.net>"):expect({ code = 250, enhanced = "2.1.0" })
    assert.same({ "Sender ok" }, mail.lines)
    assert.equal("250 2.1.0 Sender ok", tostring(mail))
  end)

  it("a failed expectation raises with the whole transcript and the log", function()
    local s = testing.load_string(ACCEPT_ALL):connect()
    s:expect(220)
    s:send("HELO c.example")
    local ok, err = pcall(s.expect, s, 354)
    assert.is_false(ok)
    assert.matches('expected a reply "354", got:\n250 mx.example.org', err, 1, true)
    assert.matches("--- transcript of session " .. s.id, err, 1, true)
    assert.matches("S: 220 mx.example.org ESMTP\nC: HELO c.example\nS: 250 mx.example.org", err, 1, true)
    local ok2, err2 = pcall(s.expect, s, 250)
    assert.is_false(ok2)
    assert.matches("but none came", err2)
  end)

  it("sendmail plays a whole transaction and returns every reply", function()
    local s = testing.load_string(ACCEPT_ALL):connect()
    local r = s:sendmail { from = "a@example.net", to = { "b@example.org", "c@example.org" },
      data = "Subject: t\n\n.leading dot\nbody\n" }
    assert.equal(220, r.greeting.code)
    assert.equal(250, r.ehlo.code)
    assert.equal(250, r.mail.code)
    assert.equal(2, #r.rcpt)
    assert.equal(354, r.data.code)
    assert.equal(250, r.done.code)
    assert.is_true(r.ok)
    local again = s:sendmail { from = "", to = "d@example.org", data = "x" }
    assert.is_nil(again.greeting)
    assert.is_true(again.ok)
  end)

  it("sendmail can pipeline MAIL, RCPT and DATA in one write", function()
    local s = testing.load_string(ACCEPT_ALL):connect()
    local r = s:sendmail { from = "a@example.net", to = { "b@example.org" }, data = "x", pipeline = true }
    assert.is_true(r.ok)
    assert.matches("C: MAIL FROM:<a@example.net>\nC: RCPT TO:<b@example.org>\nC: DATA\n", s:transcript(), 1, true)
  end)

  it("sendmail stops at a refusal and says which step is pending", function()
    local h = testing.load_string([[
      local smtp = require "smtp"
      smtp.createServer(function(c)
        c:on("RCPT", function(r) r.valid = false end)
        c:on("MAIL", function(m) if m.address == "slow@x.example" then smtp.sleep(10) end end)
      end)
    ]])
    local r = h:connect():sendmail { from = "a@example.net", to = { "b@example.org" }, data = "x" }
    assert.equal(550, r.rcpt[1].code)
    assert.is_nil(r.data)
    assert.is_false(r.ok)
    local slow = h:connect():sendmail { from = "slow@x.example", to = { "b@example.org" } }
    assert.equal("mail", slow.pending)
  end)

  it("the engine's own timeouts run on the virtual clock", function()
    local h = testing.load_string([[
      local server = require("smtp").createServer()
      server.commandTimeout = 60
    ]])
    local s = h:connect()
    s:expect(220)
    h.clock:advance(59)
    assert.is_false(s:closed())
    h.clock:advance(1)
    s:expect("421 4.4.2 ")
    assert.is_true(s:closed())
  end)

  it("runs timers in time order", function()
    local clock = testing.Clock.new()
    local order = {}
    clock:timer(3, function() order[#order + 1] = "3@" .. clock:now() end)
    clock:timer(1, function()
      order[#order + 1] = "1@" .. clock:now()
      clock:timer(1, function() order[#order + 1] = "2@" .. clock:now() end)
    end)
    local t = clock:timer(2.5, function() order[#order + 1] = "cancelled" end)
    t:cancel()
    clock:advance(10)
    assert.same({ "1@1", "2@2", "3@3" }, order)
    assert.equal(10, clock:now())
    assert.equal(0, clock:pending())
  end)

  it("records listen addresses and the server's options", function()
    local h = testing.load_string(ACCEPT_ALL)
    assert.same({ { port = 2525 }, { port = 2526, host = "::1" } }, h.listening)
    assert.equal("mx.example.org", h.server.hostname)
  end)

  it("reports a script error with the file and line", function()
    local ok, err = pcall(testing.load_string, "local smtp = require 'smtp'\nlocal s = smtp.createServer()\ns.maxSize = 'big'\n", "@my_policy.lua")
    assert.is_false(ok)
    assert.matches("^my_policy.lua:3: server.maxSize must be an integer", err)
    local ok2, err2 = pcall(testing.load_string, "local x = = 1", "@broken.lua")
    assert.is_false(ok2)
    assert.matches("^broken.lua:1:", err2)
    local ok3, err3 = pcall(testing.load_string, "local x = 1")
    assert.is_false(ok3)
    assert.matches("the script did not call smtp.createServer", err3)
  end)

  it("gives each load a fresh instance and keeps script globals apart", function()
    local a = testing.load_string("COUNTER = 1 ; require('smtp').createServer()")
    local b = testing.load_string("assert(COUNTER == nil) ; require('smtp').createServer()")
    assert.is_nil(rawget(_G, "COUNTER"))
    assert.are_not.equal(a.smtp, b.smtp)
  end)

  it("lets a spec set what os.getenv sees", function()
    local h = testing.load_string([[
      local server = require("smtp").createServer()
      server.hostname = os.getenv("MX_NAME")
    ]], { env = { MX_NAME = "env.example.org" } })
    h:connect():expect("220 env.example.org ")
  end)

  it("finds modules next to the script loaded by path, from any directory", function()
    local p = assert(io.popen("mktemp -d /tmp/luasmtpd-spec.XXXXXX"))
    local dir = p:read("l")
    p:close()
    local function write(name, text)
      local f = assert(io.open(dir .. "/" .. name, "wb"))
      f:write(text)
      f:close()
    end
    os.execute("mkdir -p " .. dir .. "/lists")
    write("policy.lua", [[
      local smtp = require "smtp"
      local names = require "names"	-- a module next to the script
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          local blocked = require "lists.blocked"	-- also when a handler requires it
          if blocked[r.localPart] then r.valid = false end
          r.code = names.code
        end)
      end)
    ]])
    write("names.lua", "return { code = nil }\n")
    write("lists/init.lua", "return {}\n")
    write("lists/blocked.lua", "return { mallory = true }\n")
    local path, cpath = package.path, package.cpath
    local h = testing.load(dir .. "/policy.lua")
    assert.equal(path, package.path)	-- the busted process's paths are left as they were
    assert.equal(cpath, package.cpath)
    local s = h:connect()
    s:expect(220)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<mallory@example.org>"):expect(550)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    package.loaded.names, package.loaded["lists.blocked"] = nil, nil
    os.execute("rm -rf " .. dir)
  end)
end)
