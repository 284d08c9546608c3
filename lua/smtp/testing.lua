-- smtp.testing -- play SMTP sessions against a policy script, in-process.
--
-- Loads a policy into a fresh instance of the smtp library whose sessions
-- run on the real protocol engine (smtp_core, the same C code as luasmtpd)
-- with an in-memory transport instead of sockets, and whose timers
-- (smtp.sleep, smtp.setTimeout, the engine's own timeouts) run on a virtual
-- clock that the spec advances.  Replies are parsed into
-- { code = 250, enhanced = "2.1.0", lines = {...} }; a failed expectation
-- raises with the whole transcript and the session's log.  See docs/API.md.

local core = require "smtp_core"
local instance = require "smtp.instance"

local testing = {}

-- ---- the virtual clock ---------------------------------------------------

local Clock = {}
Clock.__index = Clock

function Clock.new()
  return setmetatable({ t = 0, seq = 0, timers = {} }, Clock)
end

-- clock:now() -> seconds since the harness was loaded
function Clock:now() return self.t end

-- clock:timer(seconds, fn) -> handle with :cancel()
function Clock:timer(seconds, fn)
  self.seq = self.seq + 1
  local t = { at = self.t + seconds, seq = self.seq, fn = fn }
  function t.cancel() t.cancelled = true end
  self.timers[#self.timers + 1] = t
  return t
end

-- The next live timer due at or before `limit`, removed from the list.
function Clock:_next(limit)
  local best, bi
  for i = #self.timers, 1, -1 do
    local t = self.timers[i]
    if t.cancelled then
      table.remove(self.timers, i)
      if bi and bi > i then bi = bi - 1 end
    elseif t.at <= limit and (not best or t.at < best.at or (t.at == best.at and t.seq < best.seq)) then
      best, bi = t, i
    end
  end
  if best then table.remove(self.timers, bi) end
  return best
end

-- clock:advance(seconds): runs every timer due, in order, at its own time
function Clock:advance(seconds)
  assert(type(seconds) == "number" and seconds >= 0, "advance: seconds must be a number >= 0")
  local target = self.t + seconds
  while true do
    local t = self:_next(target)
    if not t then break end
    if t.at > self.t then self:_set(t.at) end
    t.fn()
    if self.on_tick then self.on_tick() end
  end
  self:_set(target)
  if self.on_tick then self.on_tick() end
end

-- Moves the time; on_time tells the engine (its deadlines use this clock).
function Clock:_set(t)
  self.t = t
  if self.on_time then self.on_time(t) end
end

-- clock:pending() -> how many timers are armed
function Clock:pending()
  local n = 0
  for _, t in ipairs(self.timers) do if not t.cancelled then n = n + 1 end end
  return n
end

testing.Clock = Clock

-- ---- captured log lines ----------------------------------------------------

local log_lines = {}

local function take_logs()
  for _, line in ipairs(core.log_take()) do log_lines[#log_lines + 1] = line end
end

-- ---- replies -----------------------------------------------------------------

local Reply = {}
Reply.__index = Reply
Reply.__tostring = function(r) return table.concat(r.raw, "\n") end

local function make_reply(raw)
  local code = tonumber(raw[1]:sub(1, 3))
  local enhanced = raw[1]:match("^%d%d%d[ -](%d%.%d%d?%d?%.%d%d?%d?)%f[%s%z]")
  local lines = {}
  for i, l in ipairs(raw) do
    local text = l:sub(5)
    if enhanced then text = text:gsub("^%d%.%d+%.%d+ ?", "", 1) end
    lines[i] = text
  end
  return setmetatable({ code = code, enhanced = enhanced, lines = lines,
    text = table.concat(lines, "\n"), raw = raw }, Reply)
end

local function describe(spec)
  if type(spec) == "table" then
    local parts = {}
    for _, k in ipairs { "code", "enhanced", "text" } do
      if spec[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(spec[k]) end
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return string.format("%q", tostring(spec))
end

-- spec: a code (250), a prefix of the first line ("451 4.3.0 "), or a table
-- { code = , enhanced = , text = <Lua pattern over the text> }
local function matches(r, spec)
  if type(spec) == "number" then return r.code == spec end
  if type(spec) == "string" then return r.raw[1]:sub(1, #spec) == spec end
  if type(spec) == "table" then
    if spec.code and r.code ~= spec.code then return false end
    if spec.enhanced and r.enhanced ~= spec.enhanced then return false end
    if spec.text and not r.text:find(spec.text) then return false end
    return true
  end
  error("expect: a code, a prefix string or a table expected", 3)
end

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

-- s:pause_state() -> the engine's state name ("greeted", "data", ...)
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

-- ---- the harness ---------------------------------------------------------------

local Harness = {}
Harness.__index = Harness

-- h:connect{remoteAddress=, remotePort=, localAddress=, localPort=, tls=} -> session
-- (address/port are accepted as short names of remoteAddress/remotePort;
-- tls = true or {version=, cipher=, peerSubject=}: an implicit-TLS client)
function Harness:connect(peer)
  peer = peer or {}
  local s = setmetatable({ harness = self, _in = "", _outbuf = "", _partial = {},
    queue = {}, log_transcript = {}, _timer_seq = 0 }, Session)
  s.handle = core.session(self.policy.bridge, self.policy.config, {
    remoteAddress = peer.remoteAddress or peer.address or "192.0.2.1",
    remotePort = peer.remotePort or peer.port or 49152,
    localAddress = peer.localAddress or "127.0.0.1",
    localPort = peer.localPort or 25,
    tls = peer.tls,
  })
  s.id = s.handle:id()
  s:_note("-- ", string.format("connected from %s:%d", peer.remoteAddress or peer.address or "192.0.2.1",
    peer.remotePort or peer.port or 49152))
  self.sessions[#self.sessions + 1] = s
  s:_collect()
  return s:_pump()
end

-- h:log() -> every line logged since the harness was loaded, joined by "\n"
function Harness:log()
  take_logs()
  return table.concat(log_lines, "\n", self._log_start)
end

-- h:close(): ends every session (each sees 'close')
function Harness:close()
  for _, s in ipairs(self.sessions) do s:close() end
end

function Harness:_pump_all()
  for _, s in ipairs(self.sessions) do
    if not s._destroyed then s:_collect() ; s:_pump() end
  end
end

-- require(name) with dir (a script's directory) first on package.path and
-- package.cpath, as luasmtpd has it (the paths are restored after, also on
-- an error: they are the whole busted process's); the smtp library is never
-- looked for there
local function require_from(dir, name)
  if not dir or name:sub(1, 5) == "smtp." then return require(name) end
  local path, cpath = package.path, package.cpath
  package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. path
  package.cpath = dir .. "/?.so;" .. cpath
  local ok, mod, extra = pcall(require, name)
  package.path, package.cpath = path, cpath
  if not ok then error(mod, 0) end
  return mod, extra
end

-- The script's environment: globals stay in it; require "smtp" is this
-- The script's environment: globals stay in it; require "smtp" is this
-- instance, and other modules are looked for in the script's directory
-- (dir) first; opts.globals are set in it (e.g. a print that captures);
-- os.getenv sees opts.env first; coroutine.resume and .wrap are luasmtpd's
-- (the handler budgets cover the coroutines a handler resumes).
local function script_env(smtp, opts, dir)
  local env = setmetatable({}, { __index = _G })
  env._G = env
  env.coroutine = setmetatable({ resume = core.resume, wrap = core.wrap }, { __index = coroutine })
  env.require = function(name)
    if name == "smtp" then return smtp end
    return require_from(dir, name)
  end
  for k, v in pairs(opts.globals or {}) do env[k] = v end
  if opts.env then
    env.os = setmetatable({
      getenv = function(k)
        if opts.env[k] ~= nil then return opts.env[k] end
        return os.getenv(k)
      end,
    }, { __index = os })
  end
  return env
end

-- testing.load_string(source[, chunkname][, opts]) -> harness
function testing.load_string(source, chunkname, opts)
  if type(chunkname) == "table" then chunkname, opts = nil, chunkname end
  return testing._load(source, chunkname, opts or {})
end

-- Loads source (a script of directory dir, if from a file), runs the
-- server's 'start' listeners: the harness.
function testing._load(source, chunkname, opts, dir)
  core.log_capture(true)
  core.log_level(opts.log_level or "info")
  take_logs()
  local clock = Clock.new()
  local h = setmetatable({ clock = clock, sessions = {}, _log_start = #log_lines + 1 }, Harness)
  local smtp = instance.new {
    core = core,
    now = function() return clock.t end,
    timer = function(seconds, fn) return clock:timer(seconds, fn) end,
    hostname = function() return opts.hostname or "mx.test.example" end,
  }
  local fn, err = load(source, chunkname or "=(policy)", "t", script_env(smtp, opts, dir))
  if not fn then error(err, 2) end
  local saved = package.loaded.smtp
  package.loaded.smtp = smtp	-- modules the script requires share its instance
  local ok, err2 = xpcall(fn, debug.traceback, table.unpack(opts.args or {}))
  package.loaded.smtp = saved
  if not ok then error(err2, 2) end
  local policy, perr = smtp._policy()
  if not policy then error(perr, 2) end
  for k, v in pairs(opts.config or {}) do policy.config[k] = v end	-- engine fields
  h.smtp, h.server, h.policy = smtp, policy.server, policy
  h.listening = policy.listening
  clock.on_tick = function() h:_pump_all() end
  clock.on_time = function(t) policy.bridge:clock(t) end
  policy.bridge:clock(clock.t)
  policy.start()	-- the server's 'start' listeners, as a luasmtpd worker runs them
  take_logs()
  return h
end

-- testing.load(path[, opts]) -> harness: opts.env (os.getenv overrides),
-- opts.globals (names set in the script's environment), opts.args (the
-- script's ...), opts.hostname (default for server.hostname), opts.log_level,
-- opts.config (engine config fields over the script's, e.g. auth_methods)
function testing.load(path, opts)
  local f, err = io.open(path, "rb")
  if not f then error(err, 2) end
  local source = f:read("a")
  f:close()
  return testing._load(source, "@" .. path, opts or {}, path:match("^(.*)/[^/]*$") or ".")
end

return testing
