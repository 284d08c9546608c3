-- CHUNKING (RFC 3030) on the real engine: BDAT chunks take the path DATA's
-- text takes ('DATA', 'data', 'end', the verdict), BINARYMIME, the size rule
-- over the running total, and refused chunks that are still read.

local support = require "spec.engine.support"
local policy = support.policy

local COLLECT = [[
  local server = smtp.createServer(function(c)
    c:on("DATA", function(m)
      EV("DATA")
      m:on("data", function(chunk) EV("data", chunk) end)
      m:on("end", function() EV("end", m.size) ; m:accept(250, "2.0.0 Queued") end)
      m:on("reject", function(_, why) EV("reject", why) end)
      m:on("accept", function() EV("accept") end)
    end)
  end)
  server.receivedHeader = false	-- the chunks as sent (trace_spec has the Received field)
]]

local function collecting(src, opts)
  local ev = {}
  opts = opts or {}
  opts.globals = { EV = function(...) ev[#ev + 1] = table.concat({ ... }, " ") end }
  return policy(src or COLLECT, opts), ev
end

local function ehlo_transaction(h, body)
  local s = h:connect()
  s:expect(220)
  s:send("EHLO c.example"):expect(250)
  s:send("MAIL FROM:<a@example.net>" .. (body and " BODY=" .. body or "")):expect(250)
  s:send("RCPT TO:<b@example.org>"):expect(250)
  return s
end

describe("BDAT", function()
  it("is advertised with BINARYMIME, and not when server.chunking is false", function()
    local h = policy("smtp.createServer()")
    local s = h:connect()
    s:expect(220)
    local r = s:send("EHLO c.example"):expect(250)
    assert.matches("\nBINARYMIME\n", table.concat(r.lines, "\n") .. "\n")
    assert.matches("\nCHUNKING\n", table.concat(r.lines, "\n") .. "\n")
    h = policy("local s = smtp.createServer() s.chunking = false")
    s = h:connect()
    s:expect(220)
    r = s:send("EHLO c.example"):expect(250)
    assert.not_matches("CHUNKING", table.concat(r.lines, "\n"))
    assert.not_matches("BINARYMIME", table.concat(r.lines, "\n"))
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("QUIT\r\n", true):expect("502 5.5.1 ")
    s:send("NOOP"):expect(250)	-- the chunk was read, not run
  end)

  it("chunks go through 'DATA' once, 'data' as sent, 'end' with the total size", function()
    local h, ev = collecting()
    local s = ehlo_transaction(h)
    s:bdat("Subject: hi\r\n\r\n.dot"):expect("250 2.0.0 19 octets received")
    s:bdat("\r\n.\r\n", true):expect("250 2.0.0 Queued")
    assert.same({ "DATA", "data Subject: hi\r\n\r\n.dot", "data \r\n.\r\n", "end 24", "accept" }, ev)
    s:send("NOOP"):expect(250)
  end)

  it("pipelined chunks and BDAT 0 LAST; the next transaction starts clean", function()
    local h, ev = collecting()
    local s = ehlo_transaction(h)
    s:send_raw("BDAT 3\r\nab\rBDAT 3\r\n\ncdBDAT 0 LAST\r\nMAIL FROM:<x@example.net>\r\n")
    s:expect("250 2.0.0 3 octets")
    s:expect("250 2.0.0 3 octets")
    s:expect("250 2.0.0 Queued")
    s:expect("250 2.1.0 ")
    assert.same({ "DATA", "data ab\r", "data \ncd", "end 6", "accept" }, ev)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)	-- DATA again, in a new transaction
  end)

  it("waits for the policy's verdict on the LAST chunk, holding what follows", function()
    local h = policy([[
      smtp.createServer(function(c)
        c:on("DATA", function(m)
          m:on("end", function()
            smtp.setTimeout(function() m:reject(452, "4.3.1 Later") end, 2000)
          end)
        end)
      end)
    ]])
    local s = ehlo_transaction(h)
    s:send_raw("BDAT 4 LAST\r\nhi\r\nNOOP\r\n"):expect_silence()
    h.clock:advance(2)
    s:expect("452 4.3.1 Later")
    s:expect(250)
  end)

  it("the running total over maxSize: 552 after the chunk, the stream in step", function()
    local h, ev = collecting(COLLECT .. " server.maxSize = 10")
    local s = ehlo_transaction(h)
    s:bdat("12345678"):expect("250 2.0.0 8 octets")
    -- over the limit: no octet of this chunk reaches 'data'; the RCPT in it is text
    s:bdat("RCPT TO:<c@example.org>\r\n"):expect("552 5.3.4 ")
    s:bdat("more", true):expect("503 5.5.1 ")	-- RFC 3030 2: the rest is refused
    s:send("RSET"):expect(250)
    assert.same({ "DATA", "data 12345678", "reject too big" }, ev)
  end)

  it("applies DATA's text rules to 7BIT/8BITMIME, none to BINARYMIME", function()
    local h, ev = collecting()
    local s = ehlo_transaction(h)
    s:bdat("bare\nLF\r\n", true):expect("550 5.6.0 ")
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("NUL\0\r\n", true):expect("550 5.6.0 Message contains a NUL")
    s = ehlo_transaction(h, "BINARYMIME")
    s:send("DATA"):expect("503 5.5.1 BODY=BINARYMIME requires BDAT")
    s:bdat("\0\1\n\r.\r\n\255", true):expect("250 2.0.0 Queued")
    assert.equal("data \0\1\n\r.\r\n\255", ev[#ev - 2])
  end)

  it("refuses BDAT before MAIL/RCPT, DATA or RCPT after BDAT; RSET after a failed chunk", function()
    local h, ev = collecting()
    local s = h:connect()
    s:expect(220)
    s:send("EHLO c.example"):expect(250)
    s:bdat("QUIT\r\n"):expect("503 5.5.1 Need MAIL and RCPT before BDAT")
    s:send("NOOP"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("ab"):expect(250)
    s:send("DATA"):expect("503 5.5.1 DATA not allowed after BDAT")
    s:send("RCPT TO:<c@example.org>"):expect("503 5.5.1 RCPT not allowed after BDAT")
    s:send("RSET"):expect(250)
    assert.same({ "DATA", "data ab", "reject reset" }, ev)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:bdat("x\r\n", true):expect("250 2.0.0 Queued")
  end)

  it("a client that announces more than it sends meets the data deadline", function()
    local h, ev = collecting(COLLECT .. " server.dataTimeout = 60")
    local s = ehlo_transaction(h)
    s:bdat("only this", true, 100):expect_silence()
    h.clock:advance(60)
    s:expect("421 4.4.2 ")
    assert.same("reject timeout", ev[#ev])
  end)
end)
