-- smtp.connection -- the Connection object: one client's session.
--
-- Owns the Connection class (its events HELO ... AUTH and close, log()),
-- what a connection reads through its session handle (state, tls, user,
-- and the envelope the engine keeps: helo, sender, recipients), and the
-- mask of events that have listeners, which the engine reads so that it
-- asks Lua only about those (attach).

local Emitter = require "smtp.emitter"
local objects = require "smtp.objects"
local strict, fields = objects.strict, objects.fields
local rawset = rawset

local CONNECTION_EVENTS = {
  HELO = "HELO", EHLO = "EHLO",
  MAIL = "MAIL", ["MAIL FROM"] = "MAIL",
  RCPT = "RCPT", ["RCPT TO"] = "RCPT",
  DATA = "DATA", RSET = "RSET", QUIT = "QUIT", VRFY = "VRFY", EXPN = "EXPN",
  AUTH = "AUTH", close = "close",
}

local M = {}

-- install(I): I.core and I.log in (I.server read per connection); I.new_connection out
function M.install(I)
  local core, log = I.core, I.log

  local Connection = setmetatable({}, { __index = Emitter })
  local ConnMeta = {
    __index = function(c, k)
      if k == "state" then return c._handle:state() end
      if k == "secure" then return c._handle:tls() ~= nil end
      if k == "tls" then return c._handle:tls() end
      if k == "user" then return c._handle:user() end
      -- the envelope is the engine's (what the client was told 250 for)
      if k == "sender" then return c._handle:sender() end
      if k == "recipients" then return c._handle:recipients() end
      if k == "helo" then return c._handle:helo() end
      -- forward-confirmed reverse DNS, looked up at the first read (smtp.dns)
      if k == "hostname" then return I.hostname_of(c) end
      -- live connections from this client (its IPv4 address or IPv6 /64), every
      -- worker's, this one included (connlimit.c); 1 where nothing counts (specs)
      if k == "clientConnections" then
        local f = core.client_connections
        return f and f(c.remoteAddress) or 1
      end
      if k == "data" then	-- the user's, made when first read
        local d = {}
        rawset(c, "data", d)
        return d
      end
      return Connection[k]
    end,
    __newindex = strict("connection", fields("id", "remoteAddress", "remotePort", "remoteName",
      "localAddress", "localPort", "lmtp", "server", "currentMessage", "closed", "data"), {
      class = Connection,
      readonly = { state = true, secure = true, tls = true, user = true, helo = true,
        sender = true, recipients = true, clientConnections = true, hostname = true },
      internal = { "_handle", "_ask", "_names", "_listeners", "_once", "_on_change", "_hostname",
        "_proxy", "_mail_obj" },
    }),
    __tostring = function(c) return "smtp.Connection " .. c.id end,
  }

  local MASK_EVENTS = { "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "QUIT", "VRFY", "EXPN", "AUTH" }

  local function update_mask(conn)
    local E = core.EVENTS
    local mask = 0
    for _, canon in ipairs(MASK_EVENTS) do
      if conn:has_listeners(canon) then
        mask = mask | E[canon]
        if canon == "DATA" then mask = mask | E.DATA_END end
      end
    end
    -- connection:proxy: the next hop decides RCPT, DATA and the end of data
    if conn._proxy then mask = mask | E.RCPT | E.DATA | E.DATA_END end
    conn._handle:attach(mask)
  end

  local function new_connection(handle)
    local peer = handle:peer()
    local c = setmetatable({
      _handle = handle, id = handle:id(),
      remoteAddress = peer.remoteAddress, remotePort = peer.remotePort,
      localAddress = peer.localAddress, localPort = peer.localPort, remoteName = peer.remoteName,
      lmtp = peer.lmtp,	-- an LMTP listener's client (RFC 2033)
      server = I.server,
      _ask = false,	-- the ask in progress (ask())
      _names = CONNECTION_EVENTS, _listeners = {}, _once = false,	-- Emitter.init's
      _on_change = update_mask,
      _proxy = false, _mail_obj = false,	-- smtp.forward's connection:proxy
    }, ConnMeta)
    handle:attach(0, c)	-- the asks of kinds.asks get c from the handle
    return c
  end

  -- connection:log(level, fmt, ...): a log line with this session's id
  function Connection:log(level, fmt, ...) log(level, self.id, fmt, ...) end

  -- connection:proxy(target) -> true | nil, err (smtp.forward; a 'MAIL' listener)
  function Connection:proxy(target) return I.proxy_connection(self, target) end

  I.new_connection = new_connection
end

return M
