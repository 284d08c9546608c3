-- spec/engine/summary_spec.lua -- the summary lines from the engine's side:
-- how a transaction ends (accepted, rejected by the engine, abandoned by
-- RSET or STARTTLS-less disconnect), recipients the engine refuses itself,
-- refusals of every origin, each logged once.  (The lines' shapes, JSON and
-- syslog: spec/e2e/logs_spec.lua.)
local support = require "spec.engine.support"

local function lines(log, event)
  local t = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("%] " .. event .. " client=") then t[#t + 1] = line end
  end
  return t
end

describe("summary lines", function()
  it("a transaction abandoned by RSET, then one the engine refuses for its size", function()
    local h = support.policy([[smtp.createServer():listen(25)]], { config = { max_size = 10 } })
    local s = support.transaction(h)
    s:send("RSET"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send("0123456789abc\r\n."):expect(552)
    s:send("QUIT"):expect(221)
    local tx = lines(s:log(), "transaction")
    assert.equal(2, #tx, s:log())
    assert.matches(" from=<a@example.net> to=<b@example.org>:250/2.1.5 result=abandoned duration=%d+%.%d%d%d$", tx[1])
    assert.matches(" to=<b@example.org>:250/2.1.5 size=15 code=552 enhanced=5.3.4 result=rejected ", tx[2])
    local r = lines(s:log(), "refusal")
    assert.equal(1, #r, s:log())
    assert.matches(" command=DATA_END code=552 enhanced=5.3.4 text=\"Message size exceeds fixed maximum message size\"$", r[1])
  end)

  it("lists a recipient refused for the recipient limit, and logs each refusal once", function()
    local h = support.policy([[smtp.createServer():listen(25)]], { config = { max_recipients = 1 } })
    local s = support.transaction(h)
    s:send("RCPT TO:<c@example.org>"):expect(452)
    s:send("BOGUS"):expect(500)
    s:send("DATA"):expect(354)
    s:send("x\r\n."):expect(250)
    h:close()
    local log = s:log()
    local tx = lines(log, "transaction")
    assert.equal(1, #tx, log)
    assert.matches(" to=<b@example.org>:250/2.1.5 to=<c@example.org>:452/4.5.3 size=3 code=250 "
      .. "enhanced=2.0.0 result=accepted ", tx[1])
    local r = lines(log, "refusal")
    assert.equal(2, #r, log)
    assert.matches(" command=RCPT code=452 enhanced=4.5.3 text=\"Too many recipients\"$", r[1])
    assert.matches(" command=unknown code=500 enhanced=5.5.2 text=\"Command unrecognized\"$", r[2])
    local c = lines(log, "connection")
    assert.equal(1, #c, log)
    assert.matches(" transactions=1 accepted=1 rejected=0 deferred=0 rcpts=2 rcpts_accepted=1 "
      .. "refusals=2 bytes_in=%d+ bytes_out=%d+ end=closed duration=", c[1])
  end)

  it("a refused MAIL opens no transaction; a refused greeting is a refusal of CONNECT", function()
    local h = support.policy([[
      smtp.createServer(function(conn)
        conn:on("MAIL", function(m) m.valid, m.code, m.message = false, 451, "4.7.1 Try later" end)
      end):listen(25)]])
    local s = support.helo(h)
    s:send("MAIL FROM:<x@example.net>"):expect(451)
    h:close()
    assert.equal(0, #lines(s:log(), "transaction"), s:log())
    local r = lines(s:log(), "refusal")
    assert.equal(1, #r)
    assert.matches(" helo=c.example command=MAIL address=<x@example.net> code=451 enhanced=4.7.1 "
      .. "text=\"Try later\"$", r[1])

    h = support.policy([[
      smtp.createServer(function(conn) conn.valid = false end):listen(25)]])
    s = h:connect()
    s:expect(554)
    h:close()
    r = lines(s:log(), "refusal")
    assert.equal(1, #r, s:log())
    assert.matches(" command=CONNECT code=554 enhanced=5.7.1 text=\"mx%.test%.example Access denied\"$", r[1])
  end)

  it("a new HELO name shows in the next transaction's line", function()
    local h = support.policy([[smtp.createServer():listen(25)]])
    local s = support.transaction(h)
    s:send("DATA"):expect(354)
    s:send("x\r\n."):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RSET"):expect(250)
    s:send("HELO other.example"):expect(250)
    s:send("MAIL FROM:<z@example.net>"):expect(250)
    h:close()
    local tx = lines(s:log(), "transaction")
    assert.equal(3, #tx, s:log())
    assert.matches("%] transaction client=192%.0%.2%.1 port=49152 helo=c%.example from=<a@example%.net> to=", tx[1])
    assert.matches("%] transaction client=192%.0%.2%.1 port=49152 helo=c%.example from=<a@example%.net> result=abandoned ", tx[2])
    assert.matches("%] transaction client=192%.0%.2%.1 port=49152 helo=other%.example from=<z@example%.net> result=abandoned ", tx[3])
  end)

  it("no summary line below info", function()
    local h = support.policy([[smtp.createServer():listen(25)]], { log_level = "warn" })
    local s = support.transaction(h)
    s:send("RCPT TO:<>"):expect(501)
    h:close()
    assert.equal("", s:log())
  end)
end)
