-- scripts/rspamd.lua on smtp.testing's fake HTTP peer: what is sent to
-- /checkv2 and how each action of rspamd's is answered; an unreachable or
-- slow rspamd per RSPAMD_FAILURE.  (spec/e2e/http_spec.lua runs it against
-- a real rspamd.)
local testing = require "smtp.testing"

local URL = "http://127.0.0.1:11333/checkv2"

describe("scripts/rspamd.lua", function()
  local h, answer, delay

  local function load(env)
    h = testing.load("scripts/rspamd.lua", { env = env or {} })
    h.http:route("POST", URL, function(req)
      if answer == nil then return end	-- never answers
      if type(answer) == "number" then return answer, {}, "" end
      return 200, { ["Content-Type"] = "application/json" }, answer
    end, { delay = delay })
  end

  before_each(function() answer, delay = '{"action":"no action","score":0.5}', 0 end)

  -- a message to two recipients; the reply to its dot (after advancing the clock by `wait`)
  local function send(body, wait, peer)
    local s = h:connect(peer or { remoteAddress = "198.51.100.7" })
    s:expect(220)
    s:send("EHLO client.example"):expect(250)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    s:send("RCPT TO:<carol@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send(body or "Subject: hi\r\n\r\nhello\r\n.")
    h.clock:advance(wait or 0)
    return s
  end

  it("streams the message to /checkv2 with the envelope in rspamd's headers", function()
    load()
    send():expect(250)
    local req = h.http.requests[1]
    assert.equal("POST", req.method)
    assert.equal(URL, req.url)
    -- the message as rspamd would get it from the next hop: our Received field on top
    assert.matches("^Received: from client%.example %(%[198%.51%.100%.7%]%) by [^\r]*\r\n\t[^\r]*\r\n"
      .. "Subject: hi\r\n\r\nhello\r\n$", req.body)
    assert.equal("alice@example.net", req.headers.From)
    assert.same({ "bob@example.org", "carol@example.org" }, req.header_lists.rcpt)
    assert.equal("198.51.100.7", req.headers.IP)
    assert.equal("client.example", req.headers.Helo)
    assert.matches("^%x+$", req.headers["Queue-Id"])
    assert.is_nil(req.headers.User)
  end)

  it("reject: 550 with rspamd's SMTP message", function()
    load()
    answer = '{"action":"reject","score":20.1,"messages":{"smtp_message":"Gtube pattern\\r\\nX"}}'
    send():expect("550 5.7.1 Gtube pattern  X")
  end)

  it("reject without a message: 550 and a text of its own", function()
    load()
    answer = '{"action":"reject","score":20}'
    send():expect("550 5.7.1 Spam message rejected")
  end)

  it("soft reject: 451 4.7.1", function()
    load()
    answer = '{"action":"soft reject","score":3}'
    send():expect("451 4.7.1 ")
  end)

  it("greylist: 451 4.7.1 Greylisted", function()
    load()
    answer = '{"action":"greylist","score":4}'
    send():expect("451 4.7.1 Greylisted")
  end)

  it("add header: accepted, the X-Spam headers kept for delivery in connection.data.rspamd", function()
    -- the script, with a listener after its own that reads what it kept
    local seen = {}
    h = testing.load_string([[
      local seen = ...
      local smtp = require "smtp"
      local create = smtp.createServer
      smtp.createServer = function(fn)
        return create(function(conn)
          fn(conn)
          conn:on("DATA", function(m)
            m:on("accept", function() seen.kept = conn.data.rspamd end)
          end)
        end)
      end
      assert(loadfile("scripts/rspamd.lua", "t", _ENV))()
    ]], { args = { seen } })
    h.http:route("POST", URL, function() return 200, {}, answer end)
    answer = '{"action":"add header","score":6.5,"required_score":15,'
      .. '"milter":{"add_headers":{"X-Rspamd-Bar":{"value":"++++++","order":0}}}}'
    local s = send()
    s:expect(250)
    assert.matches("rspamd: add header %(score 6.5%)", s:log())
    assert.equal("add header", seen.kept.action)
    assert.equal(6.5, seen.kept.score)
    assert.same({ { "X-Spam", "Yes" }, { "X-Spam-Score", "6.50 / 15.00" },
      { "X-Spam-Action", "add header" }, { "X-Rspamd-Bar", "++++++" } }, seen.kept.headers)
  end)

  it("sends User for an authenticated client", function()
    h = testing.load_string([[
      local smtp = require "smtp"
      local create = smtp.createServer
      smtp.createServer = function(fn)
        return create(function(conn)
          conn:on("AUTH", function(a) a.valid = a.username == "alice" end)
          fn(conn)
        end)
      end
      assert(loadfile("scripts/rspamd.lua", "t", _ENV))()
    ]], { config = { auth_methods = require("smtp_core").AUTH.PLAIN, auth_without_tls = true } })
    h.http:route("POST", URL, function() return 200, {}, answer end)
    local s = h:connect()
    s:expect(220)
    s:send("EHLO client.example"):expect(250)
    s:send("AUTH PLAIN AGFsaWNlAHNlY3JldA=="):expect(235)	-- \0alice\0secret
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send("Subject: hi\r\n\r\nhello\r\n.")
    h.clock:advance(0)
    s:expect(250)
    assert.equal("alice", h.http.requests[1].headers.User)
  end)

  it("no action: accepted", function()
    load()
    send():expect(250)
  end)

  it("rspamd refused, slow or not rspamd: 451 4.7.0 by default", function()
    load()
    h.http.routes = {}	-- nobody listens
    local s = send()
    s:expect("451 4.7.0 Content scanner unavailable")
    assert.matches("rspamd http://127.0.0.1:11333/checkv2: connection refused %(tempfail%)", s:log())
    load()
    answer = nil	-- never answers: RSPAMD_TIMEOUT (20 s) from the dot
    s = send(nil, 19.9)
    s:expect_silence()
    h.clock:advance(0.1)
    s:expect("451 4.7.0 ")
    assert.matches("timeout", s:log())
    load()
    answer = 500
    send():expect("451 4.7.0 ")
    load()
    answer = '{"ac'
    send():expect("451 4.7.0 ")
    load()
    answer = '{"action":"explode"}'
    send():expect("451 4.7.0 ")
  end)

  it("RSPAMD_FAILURE=accept accepts when rspamd cannot answer", function()
    load { RSPAMD_FAILURE = "accept", RSPAMD_TIMEOUT = "3" }
    answer = nil
    local s = send(nil, 3)
    s:expect(250)
    assert.matches("timeout %(accept%)", s:log())
  end)

  it("a message over RSPAMD_MAX_SIZE is not scanned: accepted without a request", function()
    load { RSPAMD_MAX_SIZE = "10" }
    answer = '{"action":"reject"}'
    send():expect(250)
    assert.equal(0, #h.http.requests)
  end)

  it("a client that leaves mid-message leaves nothing in flight", function()
    load()
    local s = h:connect { remoteAddress = "198.51.100.7" }
    s:expect(220)
    s:send("EHLO client.example"):expect(250)
    s:send("MAIL FROM:<alice@example.net>"):expect(250)
    s:send("RCPT TO:<bob@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("Subject: x\r\n\r\npart of it")
    s:close()
    h.clock:advance(60)
    assert.equal(0, #h.http.requests)
    assert.equal(0, h.http:pending())
  end)
end)
