-- smtp.testing.session -- one simulated client of the harness (smtp.testing).
--
-- Owns the Session class: the bytes a spec sends (send, pipeline,
-- handshake, sendmail), the replies it reads and expects, the transcript
-- and log of the session, and pumping the engine's in-memory transport
-- (its output, its wake-ups, its session timer on the harness's clock).
-- Harness:connect makes one.

local output = require "smtp.testing.output"
local log_lines, take_logs = output.log_lines, output.take_logs
local make_reply, describe, matches = output.make_reply, output.describe, output.matches

-- ---- sessions ----------------------------------------------------------------

local Session = {}
Session.__index = Session

local function visible(bytes)
  return (bytes:gsub("\r\n", "\n"):gsub("[%c]", function(c)
    if c == "\n" then return c end
    return string.format("\\x%02x", c:byte())
  end))
end

function Session:_note(prefix, text)
  for line in (text .. "\n"):gmatch("(.-)\n") do
    self.log_transcript[#self.log_transcript + 1] = prefix .. line
  end
end

function Session:_parse(out)
  self._outbuf = self._outbuf .. out
  while true do
    local i = self._outbuf:find("\r\n", 1, true)
    if not i then break end
    local line = self._outbuf:sub(1, i - 1)
    self._outbuf = self._outbuf:sub(i + 2)
    self.log_transcript[#self.log_transcript + 1] = "S: " .. line
    self._partial[#self._partial + 1] = line
    if line:sub(4, 4) ~= "-" then
      self.queue[#self.queue + 1] = make_reply(self._partial)
      self._partial = {}
    end
  end
end

function Session:_collect()
  local h = self.handle
  local out = h:output()
  if #out > 0 then self:_parse(out) end
  local closed, woken, seq, ms = h:io()
  if closed then self._io_closed = true end
  if woken then self._woken = true end
  if seq ~= self._timer_seq then
    self._timer_seq = seq
    if self._timer then self._timer:cancel() ; self._timer = nil end
    if ms > 0 and not self._io_closed then
      self._timer = self.harness.clock:timer(ms / 1000, function()
        self._timer = nil
        if not h:closed() and not self._io_closed then
          self:_note("-- ", "session timer fired")
          h:timeout()
        end
        self:_pump()
      end)
    end
  end
  take_logs()
end

function Session:_finish()
  if self._destroyed then return end
  self._destroyed = true
  if self._timer then self._timer:cancel() ; self._timer = nil end
  self.handle:destroy()
  self:_collect()
end

-- Feeds held input while the engine takes it; closes after the engine did.
function Session:_pump()
  local h = self.handle
  while not self._destroyed do
    self._woken = false
    local progressed = false
    if #self._in > 0 and not h:closed() and not self._io_closed then
      local n = h:feed(self._in)
      if n > 0 then
        self._in = self._in:sub(n + 1)
        progressed = true
      end
    end
    self:_collect()
    if self._io_closed or #self._in == 0 or not (progressed or self._woken) then break end
  end
  if self._io_closed and not self._destroyed then self:_finish() end
  return self
end

-- s:send(line) -> s: one command line (CRLF added when missing)
function Session:send(line)
  assert(type(line) == "string", "send: a string expected")
  if line:sub(-2) ~= "\r\n" then line = line .. "\r\n" end
  return self:send_raw(line)
end

-- s:send_raw(bytes) -> s: exactly these octets, in one write
function Session:send_raw(bytes)
  assert(type(bytes) == "string", "send_raw: a string expected")
  if self._destroyed or self._io_closed then
    self:_note("-- ", "(not sent: the connection is closed) " .. visible(bytes))
    return self
  end
  self:_note("C: ", visible(bytes):gsub("\n$", ""))
  self._in = self._in .. bytes
  return self:_pump()
end

-- s:bdat(octets[, last][, size]) -> s: "BDAT n[ LAST]" and the chunk's
-- octets in one write (RFC 3030); size, when given, is what the command
-- says instead of #octets (a client that sends less, or more)
function Session:bdat(octets, last, size)
  assert(type(octets) == "string", "bdat: a string expected")
  return self:send_raw(string.format("BDAT %d%s\r\n", size or #octets,
    last and " LAST" or "") .. octets)
end

-- s:pipeline{line, ...} -> s: several commands in one write (RFC 2920)
function Session:pipeline(lines)
  local parts = {}
  for i, l in ipairs(lines) do parts[i] = l:sub(-2) == "\r\n" and l or l .. "\r\n" end
  return self:send_raw(table.concat(parts))
end

-- s:handshake([{version=, cipher=, peerSubject=}]) -> s: the TLS handshake
-- after STARTTLS's 220, simulated (the engine restarts the session)
function Session:handshake(info)
  if not self.handle:starttls_pending() then
    self:fail("handshake: no STARTTLS is waiting for one", 2)
  end
  self:_note("-- ", "TLS handshake (simulated)")
  self.handle:tls_started(info or {})
  self:_collect()
  return self:_pump()
end

-- s:starttls([info]) -> s: STARTTLS, its 220 and the simulated handshake
function Session:starttls(info)
  self:send("STARTTLS")
  self:expect(220, "STARTTLS")
  return self:handshake(info)
end

-- s:reply() -> the next reply not yet read, or nil
function Session:reply()
  return table.remove(self.queue, 1)
end

-- s:replies() -> every reply not yet read
function Session:replies()
  local q = self.queue
  self.queue = {}
  return q
end

-- s:transcript() -> the dialogue so far, "C: "/"S: " lines
function Session:transcript()
  return table.concat(self.log_transcript, "\n")
end

-- s:log() -> this session's log lines, joined by "\n"
function Session:log()
  take_logs()
  local tag, out = "[" .. self.id .. "]", {}
  for i = self.harness._log_start, #log_lines do
    if log_lines[i]:find(tag, 1, true) then out[#out + 1] = log_lines[i] end
  end
  return table.concat(out, "\n")
end

function Session:fail(msg, level)
  error(string.format("%s\n--- transcript of session %s ---\n%s\n--- log ---\n%s",
    msg, self.id, self:transcript(), self:log()), (level or 1) + 1)
end

-- s:expect(spec[, note]) -> reply: the next reply must match spec
function Session:expect(spec, note)
  local r = table.remove(self.queue, 1)
  local what = describe(spec) .. (note and " (" .. note .. ")" or "")
  if not r then
    self:fail("expected a reply " .. what .. ", but none came" ..
      " (is a handler waiting? advance the clock)", 2)
  end
  if not matches(r, spec) then
    self:fail("expected a reply " .. what .. ", got:\n" .. tostring(r), 2)
  end
  return r
end

-- s:expect_silence() -> s: no reply is waiting to be read
function Session:expect_silence()
  if #self.queue > 0 then
    self:fail("expected no reply, got:\n" .. tostring(self.queue[1]), 2)
  end
  return self
end

-- s:close() -> s: the client goes away (EOF)
function Session:close()
  if not self._destroyed then
    self:_note("-- ", "client closed the connection")
    if not self.handle:closed() then self.handle:eof() end
    self:_collect()
    self:_finish()
  end
  return self
end

-- s:shutdown() -> s: the server stops (SIGTERM past its grace): 421 and close
function Session:shutdown()
  if not self._destroyed and not self.handle:closed() then
    self:_note("-- ", "server shutting down")
    self.handle:shutdown()
    self:_collect()
    self:_pump()
  end
  return self
end

-- s:closed() -> true once the server closed the connection (or the client did)
function Session:closed()
  return self._io_closed or self._destroyed or false
end

-- s:state() -> the engine's state name ("greeted", "data", ...)
function Session:state()
  return self.handle:state()
end

local function crlf_data(data)
  if not data:find("\r\n", 1, true) then data = data:gsub("\n", "\r\n") end
  if data:sub(-2) ~= "\r\n" then data = data .. "\r\n" end
  data = data:gsub("^%.", ".."):gsub("\r\n%.", "\r\n..")
  return data .. ".\r\n"
end

-- s:sendmail{from=, to={...}|"addr", data=, helo=, pipeline=} -> result
-- result: { greeting, ehlo, mail, rcpt = {...}, data, done, ok, pending }
-- Stops at the first step without a reply (pending = its name) and after a
-- refusal that ends the transaction.
function Session:sendmail(m)
  assert(type(m) == "table", "sendmail: a table expected")
  local to = type(m.to) == "string" and { m.to } or m.to or {}
  local r = { rcpt = {}, ok = false }
  local function take(name)
    local rep = table.remove(self.queue, 1)
    if not rep then r.pending = r.pending or name end
    return rep
  end
  if not self._greeted then
    self._greeted = true
    r.greeting = take("greeting")
    if not r.greeting then return r end
  end
  if m.helo ~= false and not self._said_hello then
    self._said_hello = true
    self:send("EHLO " .. (m.helo or "client.example"))
    r.ehlo = take("ehlo")
    if not r.ehlo then return r end
  end
  local mail = "MAIL FROM:<" .. (m.from or "") .. ">"
  if m.pipeline then
    local lines = { mail }
    for _, a in ipairs(to) do lines[#lines + 1] = "RCPT TO:<" .. a .. ">" end
    lines[#lines + 1] = "DATA"
    self:pipeline(lines)
    r.mail = take("mail")
    for i = 1, #to do r.rcpt[i] = take("rcpt") end
    r.data = take("data")
  else
    self:send(mail)
    r.mail = take("mail")
    if not r.mail or r.mail.code >= 400 then return r end
    local any = false
    for i, a in ipairs(to) do
      self:send("RCPT TO:<" .. a .. ">")
      r.rcpt[i] = take("rcpt")
      if not r.rcpt[i] then return r end
      any = any or r.rcpt[i].code < 400
    end
    if not any then return r end
    self:send("DATA")
    r.data = take("data")
  end
  if not r.data or r.data.code ~= 354 then return r end
  self:send_raw(crlf_data(m.data or ""))
  r.done = take("done")
  r.ok = r.done ~= nil and r.done.code < 300
  return r
end

return Session
