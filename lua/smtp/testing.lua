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
local output = require "smtp.testing.output"
local Session = require "smtp.testing.session"
local fake_tcp = require "smtp.testing.tcp"
local fake_nexthop = require "smtp.testing.nexthop"
local FakeDNS = require "smtp.testing.dns"
local http_peer = require "smtp.testing.http"
local log_lines, take_logs = output.log_lines, output.take_logs

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

-- ---- the harness ---------------------------------------------------------------

local Harness = {}
Harness.__index = Harness

-- h:connect{remoteAddress=, remotePort=, localAddress=, localPort=, tls=} -> session
-- (address/port are accepted as short names of remoteAddress/remotePort;
-- tls = true or {version=, cipher=, peerSubject=}: an implicit-TLS client;
-- socket = "/path": a client of the script's unix socket listener there)
function Harness:connect(peer)
  peer = peer or {}
  local s = setmetatable({ harness = self, _in = "", _outbuf = "", _partial = {},
    queue = {}, log_transcript = {}, _timer_seq = 0 }, Session)
  -- a listener of the script on the local port: its lmtp option (as luasmtpd's)
  local config = self.policy.config
  for _, l in ipairs(self.listening or {}) do
    if (peer.socket and l.path == peer.socket) or
        (not peer.socket and not l.path and l.port == (peer.localPort or 25)) then
      if l.lmtp then config = setmetatable({ lmtp = true }, { __index = config }) end
      break
    end
  end
  s.handle = core.session(self.policy.bridge, config, {
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

-- opts.redis "host:port": the script's Redis stores (smtp.store.open with
-- opts.redis) are on that server, whatever address the script gives (its
-- password and db are kept), through a blocking client: each call is
-- answered before it returns, and its TTLs are Redis's (real time, not the
-- virtual clock)
function testing._redis(address)
  local host, port = tostring(address):match("^%[(.+)%]:(%d+)$")
  if not host then host, port = tostring(address):match("^([^:]+):(%d+)$") end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    error(("testing: opts.redis is \"host:port\" (got %s)"):format(tostring(address)), 4)
  end
  local smtp_store = require "smtp_store"
  return function(_, _, timeout, password, db)
    return smtp_store.redis(host, port, timeout, password, db)
  end
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
  h.tcp = fake_tcp.new(clock)	-- fake TCP peers (smtp.testing.tcp)
  h.nexthop = fake_nexthop.new(clock)	-- fake next hops (smtp.testing.nexthop)
  local fake_dns = FakeDNS.new(clock)	-- h.dns: smtp.dns's answers
  h.dns = fake_dns
  h.http = http_peer.new(clock)	-- smtp.http's peer: h.http:route(...)
  local smtp = instance.new {
    core = core,
    now = function() return clock.t end,
    timer = function(seconds, fn) return clock:timer(seconds, fn) end,
    hostname = function() return opts.hostname or "mx.test.example" end,
    tcp_connect = function(...) return h.tcp:_connect(...) end,
    nexthop = function(t) return h.nexthop:_new(t) end,
    dns = function(...) return fake_dns:_query(...) end,
    dnsbl = function(...) return fake_dns:_dnsbl(...) end,
    http = function(req, fn) return h.http:_request(req, fn) end,
    http_body = function(limit) return h.http:_body(limit) end,
    redis = opts.redis and testing._redis(opts.redis),
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
-- opts.config (engine config fields over the script's, e.g. auth_methods),
-- opts.redis ("host:port": the script's Redis stores on a real Redis)
function testing.load(path, opts)
  local f, err = io.open(path, "rb")
  if not f then error(err, 2) end
  local source = f:read("a")
  f:close()
  return testing._load(source, "@" .. path, opts or {}, path:match("^(.*)/[^/]*$") or ".")
end

return testing
