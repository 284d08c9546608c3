-- smtp.testing.nexthop -- fake next hops for message:forward and
-- connection:proxy under smtp.testing (h.nexthop), on the virtual clock.
--
-- Owns the platform's nexthop of a harness: a forward reaches a peer the
-- spec declares with h.nexthop:listen(host, port, opts), which records
-- what it got (h.nexthop:peer(host, port).messages: envelope and body, and
-- .commands) and answers each step as told.  Its objects answer as
-- lua_nexthop.c's do: a step returns false and its result comes later
-- from a clock timer (opts.delay seconds, 0 by default: the spec advances
-- the clock), a step slower than the target's timeout gets the local 451
-- at the timeout, and the body arrives through nh:write, unstuffed.
local M = {}

local Net = {}
Net.__index = Net

local Fake = {}
Fake.__index = Fake

-- "250 2.1.5 text" -> code, enhanced, text
local function parse(reply)
  local code, rest = reply:match("^(%d%d%d) ?(.*)$")
  assert(code, "a reply \"NNN text\" expected, got " .. tostring(reply))
  local enh, text = rest:match("^([245]%.%d+%.%d+) (.*)$")
  return tonumber(code), enh or "", enh and text or rest
end

function M.new(clock)
  return setmetatable({ clock = clock, peers = {} }, Net)
end

local function key(host, port) return host .. "|" .. tostring(port) end

--[[ h.nexthop:listen(host, port[, opts]) -> peer: a next hop at host:port.
opts.replies: greeting, ehlo, mail, data, ["end"], rset (strings "250 ..."),
rcpt (a string or fn(address) -> string; LMTP's ["end"] may be fn(address)
too); opts.ext: the EHLO keywords ({SIZE = n, ["8BITMIME"] = true, ...});
opts.delay: seconds before each reply; opts.slow = {step = seconds}: one
step's delay (steps: open, mail, rcpt, data, finish, rset).  The peer's
fields: messages (completed: {from, to, body}), transactions (every one,
completed or not: {from, to, body, state = "open" | "data" | "done" |
"aborted"}), commands (the steps in order). ]]
function Net:listen(host, port, opts)
  opts = opts or {}
  local peer = { host = host, port = port, replies = opts.replies or {}, ext = opts.ext or {},
    delay = opts.delay or 0, slow = opts.slow or {}, messages = {}, transactions = {},
    commands = {}, connections = 0 }
  self.peers[key(host, port)] = peer
  return peer
end

-- h.nexthop:close(host, port): nothing listens there any more
function Net:close(host, port) self.peers[key(host, port)] = nil ; return self end

-- h.nexthop:peer(host, port) -> the peer's record
function Net:peer(host, port) return self.peers[key(host, port)] end

-- the platform's nexthop(target)
function Net:_new(t)
  return setmetatable({ net = self, t = t, peer = self.peers[key(t.host, t.port)],
    dead = false, tx = false, accepted = {}, busy = false }, Fake)
end

-- answers fn(code, enhanced, text, local[, index, count]) after the step's delay
function Fake:_answer(step, fn, replies)
  local peer = self.peer
  local delay = peer and (peer.slow[step] or peer.delay) or 0
  local limit = self.t.timeout_ms / 1000
  self.busy = true
  local function go()
    self.busy = false
    if self.dead then return end
    if delay >= limit then
      self.dead = true
      if self.tx and self.tx.state ~= "done" then self.tx.state = "aborted" end
      return fn(451, "4.4.2", ("Next hop %s:%d: timed out (%s)"):format(self.t.host, self.t.port, step), true, 1, 1)
    end
    for i, r in ipairs(replies) do
      local code, enh, text = parse(r)
      fn(code, enh, text, false, i, #replies)
    end
  end
  self.net.clock:timer(math.min(delay, limit), go)
  return false
end

function Fake:_reply(name, default, arg)
  local r = self.peer.replies[name]
  if type(r) == "function" then r = r(arg) end
  return r or default
end

function Fake:open(fn)
  local peer = self.peer
  if not peer then
    self.dead = true
    self.net.clock:timer(0, function()
      fn(451, "4.4.1", ("Next hop %s:%d: connection refused (connect)"):format(self.t.host, self.t.port), true, 1, 1)
    end)
    return false
  end
  peer.connections = peer.connections + 1
  peer.commands[#peer.commands + 1] = (self.t.lmtp and "LHLO " or "EHLO ") .. self.t.helo
  local g = self:_reply("greeting", "220 fake ESMTP")
  if g:sub(1, 1) ~= "2" then return self:_answer("open", fn, { g }) end
  return self:_answer("open", fn, { self:_reply("ehlo", "250 fake") })
end

function Fake:mail(from, params, size, fn)
  if self.dead then return nil, "closed" end
  local lim = self.peer.ext.SIZE
  if lim and size and size > lim then
    return self:_answer("mail", fn,
      { ("552 5.3.4 Message size exceeds the next hop's limit of %d octets"):format(lim) })
  end
  self.peer.commands[#self.peer.commands + 1] = ("MAIL FROM:<%s>%s"):format(from, params ~= "" and " " .. params or "")
  self.tx = { from = from, to = {}, body = {}, state = "open" }
  self.peer.transactions[#self.peer.transactions + 1] = self.tx
  self.accepted = {}
  return self:_answer("mail", fn, { self:_reply("mail", "250 2.1.0 Ok") })
end

function Fake:rcpt(to, params, fn)
  if self.dead then return nil, "closed" end
  self.peer.commands[#self.peer.commands + 1] = ("RCPT TO:<%s>"):format(to)
  local r = self:_reply("rcpt", "250 2.1.5 Ok", to)
  if r:sub(1, 1) == "2" then
    self.tx.to[#self.tx.to + 1] = to
    self.accepted[#self.accepted + 1] = to
  end
  return self:_answer("rcpt", fn, { r })
end

-- MAIL and the RCPTs in one step; nh:results() gives the RCPTs' replies
function Fake:envelope(from, params, size, rcpts, fn)
  self.results_ = {}
  local done = false
  local function after_mail(code, enh, text, loc)
    if loc or code >= 300 then return fn(code, enh, text, loc, 1, 1) end
    for i, to in ipairs(rcpts) do
      self.peer.commands[#self.peer.commands + 1] = ("RCPT TO:<%s>"):format(to)
      local r = self:_reply("rcpt", "250 2.1.5 Ok", to)
      if r:sub(1, 1) == "2" then
        self.tx.to[#self.tx.to + 1] = to
        self.accepted[#self.accepted + 1] = to
      end
      local c, e, t = parse(r)
      self.results_[i] = { code = c, enhanced = e, text = t }
    end
    return fn(code, enh, text, loc, 1, 1)
  end
  local ok, err = self:mail(from, params, size, function(...) if not done then done = true ; after_mail(...) end end)
  return ok, err
end

function Fake:results() return self.results_ or {} end

function Fake:data(fn)
  if self.dead then return nil, "closed" end
  self.peer.commands[#self.peer.commands + 1] = "DATA"
  local r = self:_reply("data", "354 Go ahead")
  if r:sub(1, 3) == "354" then self.tx.state = "data" end
  return self:_answer("data", fn, { r })
end

function Fake:write(chunk)
  if self.dead or not self.tx or self.tx.state ~= "data" then return nil, "closed" end
  local b = self.tx.body
  b[#b + 1] = chunk
  return true
end

function Fake:finish(fn)
  if self.dead or not self.tx or self.tx.state ~= "data" then return nil, "closed" end
  self.peer.commands[#self.peer.commands + 1] = "."
  local tx = self.tx
  tx.body = table.concat(tx.body)
  local replies = {}
  if self.t.lmtp then
    for i, a in ipairs(self.accepted) do replies[i] = self:_reply("end", "250 2.0.0 Ok", a) end
  else
    replies[1] = self:_reply("end", "250 2.0.0 Ok: queued")
  end
  local ok_any = false
  for _, r in ipairs(replies) do if r:sub(1, 1) == "2" then ok_any = true end end
  local function fn2(code, enh, text, loc, i, n)
    if i == n or loc then
      tx.state = loc and "aborted" or "done"
      if not loc and ok_any then self.peer.messages[#self.peer.messages + 1] = tx end
    end
    return fn(code, enh, text, loc, i, n)
  end
  return self:_answer("finish", fn2, replies)
end

function Fake:rset(fn)
  if self.dead then return nil, "closed" end
  self.peer.commands[#self.peer.commands + 1] = "RSET"
  if self.tx and self.tx.state ~= "done" then self.tx.state = "aborted" end
  return self:_answer("rset", fn, { self:_reply("rset", "250 2.0.0 Ok") })
end

function Fake:ext()
  local e = {}
  for k, v in pairs(self.peer and self.peer.ext or {}) do e[k] = v end
  return e, false
end

function Fake:reused() return false end

local function shut(self, how)
  if self.dead then return end
  self.dead = true
  if self.peer then self.peer.commands[#self.peer.commands + 1] = how end
  if self.tx and self.tx.state ~= "done" then self.tx.state = "aborted" end
end

function Fake:release() shut(self, "RSET") ; if self.peer then self.peer.commands[#self.peer.commands + 1] = "QUIT" end end
function Fake:close() shut(self, "(closed)") ; return false end

return M
