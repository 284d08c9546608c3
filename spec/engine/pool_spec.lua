-- Handlers start on idle pooled coroutines from C (smtp_core.call): a
-- coroutine whose handler returned, even after waiting, runs the next one;
-- and the per-message savings (the transaction's recipients shared with
-- the message, params made when read) change nothing a policy can see.

local policy = require("spec.engine.support").policy

local function helo(h)
  local s = h:connect()
  s:expect(220)
  s:send("HELO c.example"):expect(250)
  return s
end

describe("pooled handler runs", function()
  it("a coroutine whose handler slept and returned runs later handlers", function()
    local cos, results = {}, {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(m)
          COS[#COS + 1] = coroutine.running()
          if m.address == "slow@example.net" then smtp.sleep(2) end
          return "ignored", 42	-- a handler's results are dropped
        end)
      end)
    ]], { globals = { COS = cos, RESULTS = results } })
    local s = helo(h)
    s:send("MAIL FROM:<slow@example.net>")
    s:expect_silence()
    h.clock:advance(2)
    s:expect(250)
    for i = 1, 3 do
      s:send("RSET"):expect(250)
      s:send("MAIL FROM:<f" .. i .. "@example.net>"):expect(250)
    end
    assert.equal(4, #cos)
    for i = 2, 4 do assert.equal(cos[1], cos[i]) end	-- back in the pool, reused
    assert.equal("dead", coroutine.status(cos[1]))	-- idle between runs
  end)

  it("a refused DATA leaves the message's recipients alone as the transaction goes on", function()
    local msgs = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          MSGS[#MSGS + 1] = m
          if #MSGS == 1 then m:reject(451, "4.7.1 later") else m:on("end", function() m:accept() end) end
        end)
      end)
    ]], { globals = { MSGS = msgs } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect("451 4.7.1 later")
    s:send("RCPT TO:<c@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("hi\r\n.\r\n"):expect(250)
    assert.equal(1, #msgs[1].recipients)
    assert.equal(2, #msgs[2].recipients)
    assert.equal("c@example.org", msgs[2].recipients[2].address)
    assert.same({}, msgs[2].connection.recipients)
  end)

  it("params is an empty table of its own when the client sent none", function()
    local got = {}
    local h = policy([[
      smtp.createServer(function(c)
        c:on("MAIL", function(a) GOT[#GOT + 1] = a end)
        c:on("RCPT", function(a) GOT[#GOT + 1] = a end)
      end)
    ]], { globals = { GOT = got } })
    local s = helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    assert.same({}, got[1].params)
    got[1].params.X = "y"
    assert.same({ X = "y" }, got[1].params)
    assert.same({}, got[2].params)
    assert.is_true(got[1].valid)
    assert.equal("a@example.net", tostring(got[1]))
  end)
end)
