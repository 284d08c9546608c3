-- smtp.http on smtp.testing's fake peer: a handler waits for an answer on
-- the virtual clock; refusals, timeouts, bounds and bad options; requests
-- cancelled with their handler's wait; streams of a message's data.
-- (spec/e2e/http_spec.lua has the real client against a real server.)
local support = require "spec.engine.support"

-- a session past MAIL (the policies here decide at RCPT)
local function mail(h)
  local s = support.helo(h)
  s:send("MAIL FROM:<a@example.net>"):expect(250)
  return s
end

describe("smtp.http (fake peer)", function()
  local URL = "http://127.0.0.1:8080/check"

  -- a policy that asks URL at RCPT and answers with what it got
  local ASK = [[
    smtp.createServer(function(conn)
      conn:on("RCPT", function(rcpt)
        local status, headers, body = smtp.http.request{ method = "POST", url = URL,
          headers = { ["X-Rcpt"] = rcpt.address }, body = "who=" .. rcpt.address, timeout = 5 }
        if not status then
          rcpt.valid, rcpt.code, rcpt.message = false, 451, "4.3.0 " .. headers
          return
        end
        rcpt.valid = status == 200 and body == "ok"
        if not rcpt.valid then
          rcpt.code, rcpt.message = 550, "5.7.1 " .. status .. " " .. (headers["X-Reason"] or "-")
        end
      end)
    end):listen(25)
  ]]

  local function policy()
    return support.policy("local URL = " .. ("%q"):format(URL) .. "\n" .. ASK)
  end

  it("waits for the answer: the reply comes when the clock reaches it", function()
    local h = policy()
    h.http:route("POST", URL, function(req)
      return 200, { ["Content-Type"] = "text/plain" }, req.headers["x-rcpt"] == "b@example.org" and "ok" or "no"
    end, { delay = 2 })
    local s = support.helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect_silence()
    h.clock:advance(1.5)
    s:expect_silence()
    h.clock:advance(0.5)
    s:expect(250)
    local req = h.http.requests[1]
    assert.equal("POST", req.method)
    assert.equal("/check", req.path)
    assert.equal("who=b@example.org", req.body)
    assert.equal("b@example.org", req.headers["X-Rcpt"])
    assert.equal(0, h.http:pending())
  end)

  it("gives the status, headers by any case, and the body", function()
    local h = policy()
    h.http:route("POST", URL, function() return 403, { ["X-Reason"] = "listed" }, "" end)
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    h.clock:advance(0)
    s:expect("550 5.7.1 403 listed")
  end)

  it("a URL nobody serves is refused", function()
    local h = policy()
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    h.clock:advance(0)
    s:expect("451 4.3.0 connection refused")
  end)

  it("a peer that never answers: the request's timeout, and nothing left in flight", function()
    local h = policy()
    h.http:route("POST", URL, function() end)
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    h.clock:advance(4.9)
    s:expect_silence()
    assert.equal(1, h.http:pending())
    h.clock:advance(0.1)
    s:expect("451 4.3.0 timeout")
    assert.equal(0, h.http:pending())
  end)

  it("a failure the peer simulates is the error", function()
    local h = policy()
    h.http:route("POST", URL, function() return nil, "connection closed before the response" end)
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    h.clock:advance(0)
    s:expect("451 4.3.0 connection closed before the response")
  end)

  it("a client that leaves cancels the request its handler waits for", function()
    local h = policy()
    h.http:route("POST", URL, function() return 200, {}, "ok" end, { delay = 3 })
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    assert.equal(1, h.http:pending())
    s:close()
    assert.equal(0, h.http:pending())
    h.clock:advance(10)	-- the answer's timer finds it cancelled
  end)

  it("bounds the response body (maxBody)", function()
    local h = support.policy([[
      smtp.createServer(function(conn)
        conn:on("RCPT", function(rcpt)
          local s, err = smtp.http.request{ url = "http://127.0.0.1:8080/big", maxBody = 10 }
          rcpt.valid, rcpt.code, rcpt.message = false, 451, "4.3.0 " .. tostring(s or err)
        end)
      end):listen(25)
    ]])
    h.http:route("GET", "http://127.0.0.1:8080/big", function() return 200, {}, ("x"):rep(11) end)
    local s = mail(h)
    s:send("RCPT TO:<c@example.org>")
    h.clock:advance(0)
    s:expect("451 4.3.0 response too large")
  end)

  it("bad options raise in the handler: 451 and the reason in the log", function()
    local h = support.policy([[
      smtp.createServer(function(conn)
        conn:on("RCPT", function(rcpt)
          local which = rcpt.address:match("^(%w+)@")
          local opts = {
            scheme = { url = "ftp://x/" },
            header = { url = "http://x/", headers = { ["X-A"] = "a\r\nB: c" } },
            method = { url = "http://x/", method = "BREW" },
            timeout = { url = "http://x/", timeout = 0 },
            unknown = { url = "http://x/", tiemout = 1 },
          }
          smtp.http.request(opts[which])
        end)
      end):listen(25)
    ]])
    local s = mail(h)
    for which, why in pairs { scheme = "url must be an http", header = "header X%-A: a string %(or a list of strings%) without CR",
      method = "method must be one of", timeout = "timeout must be", unknown = "unknown option tiemout" } do
      s:send("RCPT TO:<" .. which .. "@example.org>"):expect("451 4.3.0 ")
      assert.matches(why, s:log())
    end
    assert.equal(0, #h.http.requests)
  end)

  it("past smtp.http.maxInFlight a request fails at once", function()
    local h = support.policy([[
      smtp.http.maxInFlight = 2
      smtp.createServer(function(conn)
        conn:on("RCPT", function(rcpt)
          local s, err = smtp.http.request{ url = "http://127.0.0.1:8080/slow" }
          rcpt.valid, rcpt.code, rcpt.message = false, 451, "4.3.0 " .. tostring(s or err)
        end)
      end):listen(25)
    ]])
    h.http:route("GET", "http://127.0.0.1:8080/slow", function() return 200, {}, "" end, { delay = 5 })
    local a, b = mail(h), mail(h)
    a:send("RCPT TO:<x@example.org>")
    b:send("RCPT TO:<x@example.org>")
    local c = mail(h)
    c:send("RCPT TO:<x@example.org>"):expect("451 4.3.0 too many requests in flight")
    h.clock:advance(5)
    a:expect("451 4.3.0 200")
    b:expect("451 4.3.0 200")
    c:send("RCPT TO:<x@example.org>")
    h.clock:advance(5)
    c:expect("451 4.3.0 200")
  end)

  it("cannot be called while the script loads", function()
    assert.has_error(function()
      support.policy([[smtp.http.request{ url = "http://x/" } smtp.createServer(function() end):listen(25)]])
    end)
  end)

  describe("streams", function()
    local STREAM = [[
      local seen = ...
      local server = smtp.createServer(function(conn)
        conn:on("DATA", function(message)
          local req = smtp.http.stream{ url = "http://127.0.0.1:11333/scan",
            headers = { From = message.sender.address }, maxRequestBody = LIMIT }
          seen.req = req
          message:on("data", function(chunk)
            local ok, err = req:write(chunk)
            if not ok then seen.err = err end
          end)
          message:on("end", function()
            local status, headers, body = req:finish()
            if not status then return message:reject(451, "4.3.0 " .. headers) end
            if body == "spam" then return message:reject(550, "5.7.1 spam") end
            message:accept()
          end)
        end)
      end)
      server.receivedHeader = false	-- the stream holds the client's octets only
      server:listen(25)
    ]]
    local function load(limit)
      local seen = {}
      local h = support.policy("local LIMIT = " .. limit .. "\n" .. STREAM, { args = { seen } })
      return h, seen
    end

    it("sends the message as the body of one request at the end", function()
      local h = load(1 << 20)
      h.http:route("POST", "http://127.0.0.1:11333/scan", function(req)
        return 200, {}, req.body:find("viagra", 1, true) and "spam" or "ham"
      end)
      local s = support.transaction(h)
      s:send("DATA"):expect(354)
      s:send_raw("Subject: hi\r\n\r\nbuy viagra\r\n")
      assert.equal(0, #h.http.requests)	-- nothing is sent before the end
      s:send(".")
      assert.equal(1, #h.http.requests)
      h.clock:advance(0)
      s:expect("550 5.7.1 spam")
      local req = h.http.requests[1]
      assert.equal("Subject: hi\r\n\r\nbuy viagra\r\n", req.body)
      assert.equal("a@example.net", req.headers.From)
      s:send("MAIL FROM:<a@example.net>"):expect(250)
      s:send("RCPT TO:<b@example.org>"):expect(250)
      s:send("DATA"):expect(354)
      s:send("Subject: hi\r\n\r\nhello\r\n.")
      h.clock:advance(0)
      s:expect(250)
    end)

    it("a message over maxRequestBody: write and finish say so", function()
      local h, seen = load(10)
      h.http:route("POST", "http://127.0.0.1:11333/scan", function() return 200, {}, "ham" end)
      local s = support.transaction(h)
      s:send("DATA"):expect(354)
      s:send("Subject: a long one\r\n\r\nhello\r\n.")
      h.clock:advance(0)
      s:expect("451 4.3.0 request body too large")
      assert.equal("request body too large", seen.err)
      assert.equal(0, h.http:buffered())
      assert.equal(0, #h.http.requests)
    end)

    it("a stream whose client leaves is cancelled", function()
      local h, seen = load(1 << 20)
      local s = support.transaction(h)
      s:send("DATA"):expect(354)
      s:send_raw("Subject: x\r\n\r\npart")
      assert.equal("open", seen.req.state)
      assert.equal(#"Subject: x\r\n\r\npart", h.http:buffered())
      s:close()
      assert.equal("cancelled", seen.req.state)
      assert.equal(0, h.http:buffered())	-- freed at once
      assert.same({ nil, "stream is cancelled" }, { seen.req:finish() })
    end)
  end)
end)
