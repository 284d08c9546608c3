-- smtp.testing.tcp -- fake TCP peers for smtp.tcp under smtp.testing
-- (h.tcp), on the harness's virtual clock.
--
-- Owns the platform's tcp_connect of a harness: the sockets a policy opens
-- reach peers that the spec declares with h.tcp:listen(host, port, fn,
-- opts), each connection running fn(peer) in a coroutine of its own.  No
-- real socket, no name resolution: host and port must match a listen
-- exactly, else "connection refused".  The client side answers as
-- lua_tcp.c's sockets do (at once when it can, else false and a callback
-- later), so smtp.tcp's deadlines run on the virtual clock: an answer
-- delayed (opts.delay), a peer that never answers or never accepts
-- (opts.accept = false) meets the policy's timeouts as the clock advances.
local M = {}

local Net = {}
Net.__index = Net

local Peer = {}
Peer.__index = Peer

local Client = {}
Client.__index = Client

-- M.new(clock) -> the fake network (h.tcp)
function M.new(clock)
  return setmetatable({ clock = clock, listeners = {}, peers = {}, open = 0, errors = {} }, Net)
end

local function key(host, port) return host .. "|" .. tostring(port) end

--[[ h.tcp:listen(host, port, fn[, opts]): connections to host:port run
fn(peer).  opts.delay: seconds each connect and each of the peer's sends
take to arrive; opts.accept = false: connects never complete (a
black hole); opts.tls = true or { names = {...}, trusted = false }: the
peer takes TLS (starttls, or tls = true at connect); its certificate is
for names (default: host) and signed by a trusted CA unless trusted =
false. ]]
function Net:listen(host, port, fn, opts)
  assert(type(host) == "string" and math.type(port) == "integer", "listen(host, port, fn[, opts])")
  assert(type(fn) == "function", "listen: fn(peer) expected")
  opts = opts or {}
  local tls = opts.tls
  if tls == true then tls = {} end
  if tls then
    tls = { names = tls.names or { host }, trusted = tls.trusted ~= false }
  end
  self.listeners[key(host, port)] = { fn = fn, delay = opts.delay or 0,
    accept = opts.accept ~= false, tls = tls }
  return self
end

-- h.tcp:close(host, port): no more listener there (connects are refused)
function Net:close(host, port)
  self.listeners[key(host, port)] = nil
  return self
end

-- runs fn after delay seconds on the virtual clock, or now
function Net:_later(delay, fn)
  if delay > 0 then self.clock:timer(delay, fn) else fn() end
end

-- the platform's tcp_connect(host, port, opts, fn) -> client | nil, err
function Net:_connect(host, port, opts, fn)
  if self.open >= (opts.max or 256) then return nil, "too many sockets" end
  local l = self.listeners[key(host, port)]
  local c = setmetatable({ net = self, inbox = "", eof = false, is_open = true, op = false,
    tls = false, why = false }, Client)
  self.open = self.open + 1
  if not l then
    c:_shut("connection refused")
    fn(nil, "connection refused")
    return c
  end
  if not l.accept then return c end	-- connect pending until the caller gives up
  local peer = setmetatable({ net = self, client = c, host = host, port = port, received = "",
    inbox = "", eof = false, delay = l.delay, listener = l, tls = false, closed = false }, Peer)
  c.peer = peer
  self.peers[#self.peers + 1] = peer
  self:_later(l.delay, function()
    if not c.is_open then return end
    if opts.tls then
      local ok, err = c:_handshake(opts.servername, opts.verify ~= false)
      if not ok then c:_shut(err) ; return fn(nil, err) end
    end
    peer.co = coroutine.create(l.fn)
    fn(true)
    peer:_run(peer)
  end)
  return c
end

-- ---- the policy's side (what lua_tcp.c's socket does) --------------------

function Client:_shut(why)
  if self.is_open then
    self.is_open = false
    self.net.open = self.net.open - 1
    self.why = why
    local p = self.peer
    if p and not p.eof then
      p.eof = true
      p:_wake()
    end
  end
end

function Client:_handshake(servername, verify)
  local t = self.peer and self.peer.listener.tls
  if not t then return nil, "tls: the peer does not speak TLS (wrong version number)" end
  if verify then
    if not t.trusted then return nil, "tls: certificate verify failed: self-signed certificate" end
    local ok = false
    for _, n in ipairs(t.names) do if n == servername then ok = true end end
    if not ok then return nil, "tls: certificate verify failed: hostname mismatch" end
  end
  self.tls, self.peer.tls = true, true
  return true
end

function Client:isopen() return self.is_open end

function Client:cancel() self.op = false end

function Client:close()
  self.op = false
  self:_shut("closed")
end

function Client:send(data, fn)
  assert(not self.op, "socket busy: one operation at a time")
  assert(type(fn) == "function")
  if not self.is_open then return nil, self.why end
  local p = self.peer
  if p.eof then	-- the peer closed its side
    self:_shut("closed")
    return nil, "closed"
  end
  p.inbox = p.inbox .. data
  p.received = p.received .. data
  p:_wake()
  return true
end

-- what the inbox holds for op: data | nil, err, partial | false (wait)
function Client:_take(mode, n)
  local inbox = self.inbox
  if mode == "l" then
    local i = inbox:find("\n", 1, true)
    if i then
      local line = inbox:sub(1, i - 1)
      if #line > n then self:_shut("line too long") ; return nil, "line too long", "" end
      self.inbox = inbox:sub(i + 1)
      return (line:gsub("\r$", ""))
    end
    if #inbox > n then self:_shut("line too long") ; return nil, "line too long", "" end
  elseif mode == "n" then
    if #inbox >= n then
      self.inbox = inbox:sub(n + 1)
      return inbox:sub(1, n)
    end
  else
    if #inbox > n then self:_shut("too large") ; return nil, "too large", "" end
    if self.eof then self.inbox = "" ; return inbox end
    return false
  end
  if self.eof then self.inbox = "" ; return nil, "closed", inbox end
  return false
end

function Client:receive(mode, n, fn)
  assert(not self.op, "socket busy: one operation at a time")
  assert(type(fn) == "function")
  if not self.is_open then return nil, self.why, "" end
  local data, err, partial = self:_take(mode, n)
  if data ~= false then return data, err, partial end
  self.op = { mode = mode, n = n, fn = fn }
  return false
end

-- data arrived (or the peer closed): a receive waiting may be answered
function Client:_arrived()
  local op = self.op
  if not op then return end
  local data, err, partial = self:_take(op.mode, op.n)
  if data == false then return end
  self.op = false
  op.fn(data, err, partial)
end

function Client:starttls(servername, verify, cafile, fn)
  assert(not self.op, "socket busy: one operation at a time")
  -- the argument types lua_tcp.c checks
  assert(servername == nil or type(servername) == "string", "bad argument #1 to 'starttls'")
  assert(cafile == nil or type(cafile) == "string", "bad argument #3 to 'starttls'")
  assert(type(fn) == "function")
  if not self.is_open then return nil, self.why end
  if self.tls then return nil, "tls: already on" end
  self.inbox = ""	-- plaintext before the handshake is never read
  local ok, err = self:_handshake(servername, verify)
  if not ok then self:_shut(err) ; return nil, err end
  return true
end

-- ---- the peer's side (the spec's fn(peer)) ---------------------------------

function Peer:_run(...)
  local ok, err = coroutine.resume(self.co, ...)
  if not ok then
    self.net.errors[#self.net.errors + 1] = err
    self:close()
    error("fake tcp peer " .. self.host .. ":" .. self.port .. " failed: " .. tostring(err), 0)
  end
  if coroutine.status(self.co) == "dead" and not self.closed then self:close() end
end

-- the client sent something or closed: a peer waiting in receive goes on
function Peer:_wake()
  if self.waiting and coroutine.status(self.co) == "suspended" then
    self.waiting = false
    self:_run()
  end
end

--[[ peer:receive([pattern]) -> data | nil, "closed": what the policy sent
("*l" a line without its end, "*a" until the policy closes, n octets);
waits (the peer's coroutine yields) until it is there ]]
function Peer:receive(pattern)
  pattern = pattern or "*l"
  while true do
    local inbox = self.inbox
    if pattern == "*l" or pattern == "l" then
      local i = inbox:find("\n", 1, true)
      if i then
        self.inbox = inbox:sub(i + 1)
        return (inbox:sub(1, i - 1):gsub("\r$", ""))
      end
    elseif pattern == "*a" or pattern == "a" then
      if self.eof then self.inbox = "" ; return inbox end
    elseif #inbox >= pattern then
      self.inbox = inbox:sub(pattern + 1)
      return inbox:sub(1, pattern)
    end
    if self.eof then return nil, "closed" end
    self.waiting = true
    coroutine.yield()
  end
end

-- peer:send(data): arrives at the policy after the listener's delay
function Peer:send(data)
  local c = self.client
  self.net:_later(self.delay, function()
    if not c.is_open then return end
    c.inbox = c.inbox .. data
    c:_arrived()
  end)
end

-- peer:sleep(seconds): the peer waits on the virtual clock
function Peer:sleep(seconds)
  local co = coroutine.running()
  self.net.clock:timer(seconds, function()
    if coroutine.status(co) == "suspended" then self:_run() end
  end)
  coroutine.yield()
end

-- peer:close(): the policy's socket sees the end (after the delay)
function Peer:close()
  if self.closed then return end
  self.closed = true
  local c = self.client
  self.net:_later(self.delay, function()
    c.eof = true
    c:_arrived()
  end)
end

return M
