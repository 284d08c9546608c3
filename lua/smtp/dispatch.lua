-- smtp.dispatch -- what the C bridge calls: the kinds table.
--
-- Owns kinds (lua_bridge.c looks each function up once, when
-- smtp.createServer makes the bridge): asks (an engine event whose verdict
-- Lua gives, called by name with the connection: it makes the event object
-- and runs its listeners), ask (CONNECT, which binds the handle), cancel,
-- outcome (the end of a message), data (a chunk of message data), abort
-- and closed; and conns, the connection of each
-- session handle.  Everything here runs once per event: no closure or
-- table is made that the event does not need.

local Emitter = require "smtp.emitter"
local objects = require "smtp.objects"
local take = Emitter.take	-- called directly on the hot path (no __index)
local HeloMeta, AuthMeta, EventMeta = objects.HeloMeta, objects.AuthMeta, objects.EventMeta
local Ask = require "smtp.ask"
local cancel_ask, data_verdict, data_end_verdict = Ask.cancel_ask, Ask.data_verdict,
  Ask.data_end_verdict
local setmetatable, rawset = setmetatable, rawset

local M = {}

-- the asks: the event object of each engine event, its listeners run on it
local function install_asks(I, conns)
  local core, FAIL_CODE, FAIL_TEXT = I.core, I.FAIL_CODE, I.FAIL_TEXT
  local AUTH_ACCEPT = core.ACCEPT and core.ACCEPT.AUTH	-- the engine's: fails closed
  local ask, new_message, new_connection = I.ask, I.new_message, I.new_connection
  local asks = {}

  function asks.CONNECT(handle)
    local conn = new_connection(handle)
    conns[handle] = conn
    return ask(conn, "CONNECT", conn, I.server:take("connection"))
  end

  local function helo(ext)
    return function(conn, args)
      local name = ext and "EHLO" or "HELO"
      local fns = conn._once == false and conn._listeners[name] or take(conn, name)
      return ask(conn, name, setmetatable({ name = args.arg, extended = ext, valid = true }, HeloMeta),
        fns)
    end
  end
  asks.HELO, asks.EHLO = helo(false), helo(true)

  -- the address object comes from the engine's converter (lua_bridge.c)
  -- take()'s common case inline: no 'once' listener on the connection
  function asks.MAIL(conn, sender)
    local fns = conn._once == false and conn._listeners.MAIL or take(conn, "MAIL")
    local proxy = conn._proxy
    if proxy then proxy:close(true) end	-- a new transaction: the next hop's old one ends
    conn._mail_obj = sender	-- connection:proxy's sender
    return ask(conn, "MAIL", sender, fns)
  end

  function asks.RCPT(conn, recipient)
    local fns = conn._once == false and conn._listeners.RCPT or take(conn, "RCPT")
    local proxy = conn._proxy
    if proxy then return ask(conn, "RCPT", recipient, fns, proxy.rcpt_finish) end
    return ask(conn, "RCPT", recipient, fns)
  end

  function asks.DATA(conn)
    local m = new_message(conn)
    conn._handle:dataListeners(false)	-- until the message gets a 'data' listener
    rawset(conn, "currentMessage", m)
    if conn._proxy then m._forward = conn._proxy end
    local fns = conn._once == false and conn._listeners.DATA or take(conn, "DATA")
    return ask(conn, "DATA", m, fns, data_verdict)
  end

  function asks.DATA_END(conn, size)	-- the engine passes the size alone
    local m = conn.currentMessage
    if not m then return true, true, 0, nil end
    m.size = size or m.size
    if m._sealed then	-- no 'end' listener: the reply is what sealed it
      conn._ask = false
      if m._daccept == false then return true, false, m._dcode, m._dtext end
      return true, false, FAIL_CODE, FAIL_TEXT
    end
    local fns = m._once == false and m._listeners["end"] or take(m, "end")
    return ask(conn, "DATA_END", m, fns, data_end_verdict)
  end

  local function simple(name)
    return function(conn)
      return ask(conn, name, setmetatable({ valid = true }, EventMeta[name]), take(conn, name))
    end
  end
  asks.RSET, asks.QUIT = simple("RSET"), simple("QUIT")

  local function argument(name)
    return function(conn, args)
      return ask(conn, name, setmetatable({ argument = args.arg, valid = true }, EventMeta[name]),
        take(conn, name))
    end
  end
  asks.VRFY, asks.EXPN = argument("VRFY"), argument("EXPN")

  -- AUTH fails closed (the engine's default): a listener must set valid = true
  function asks.AUTH(conn, args)
    local creds = setmetatable({ method = args.method, username = args.username,
      password = args.password, authzid = args.authzid, valid = AUTH_ACCEPT }, AuthMeta)
    return ask(conn, "AUTH", creds, take(conn, "AUTH"))
  end

  -- the metatables of the address objects the bridge's converter builds
  return asks
end

-- the kinds of one command's life and of the session's end
local function install_kinds(I, conns, asks)
  local log = I.log
  local emit_detached, finish_message, seal = I.emit_detached, I.finish_message, I.seal
  -- asks: the bridge calls asks[name](conn, args) itself (the connection
  -- object from the handle); kinds.ask is CONNECT's, and any other's when
  -- the bridge has no function for it
  local kinds = { senderMeta = objects.SenderMeta, recipientMeta = objects.RecipientMeta,
    asks = asks }

  function kinds.ask(handle, name, args)
    if name == "CONNECT" then return asks.CONNECT(handle) end
    local conn = conns[handle]
    local f = asks[name]
    if not conn or not f then return true end	-- the engine's default verdict
    return f(conn, args)
  end

  function kinds.cancel(handle, name)
    local conn = conns[handle]
    if conn then
      log("info", conn.id, "%s handler abandoned", name:lower())
      cancel_ask(conn)
      local m = conn.currentMessage
      if m then m._cancelled = true end	-- unless an abort follows: no decision in time
    end
  end

  -- The end of a message, at once: a refused DATA (the transaction goes on)
  -- or the final dot's reply.  The envelope itself is the engine's.
  function kinds.outcome(handle, name, code)
    local conn = conns[handle]
    local m = conn and conn.currentMessage
    if not m then return end
    local a = conn._ask
    if a and a.name == name then conn._ask = false end
    if name == "DATA_END" or code ~= 354 then
      finish_message(m, code >= 200 and code < 400, code)
    end
  end

  function kinds.closed(handle)
    local conn = conns[handle]
    if not conn then return end
    cancel_ask(conn)
    if conn._proxy then conn._proxy:close(false) end
    local m = conn.currentMessage
    if m then	-- its DATA command was still waiting for a verdict: no abort came
      seal(m, "disconnect")
      finish_message(m, false, nil, "disconnect")
    end
    conns[handle] = nil
    rawset(conn, "closed", true)
    emit_detached(conn, "close", take(conn, "close"), conn)
  end

  return kinds
end

-- the kinds of message data: a chunk, an abort
local function install_data(I, conns, kinds)
  local log, FAIL_CODE, FAIL_TEXT = I.log, I.FAIL_CODE, I.FAIL_TEXT
  local spawn1, emit_detached, settle = I.spawn1, I.emit_detached, I.settle
  local seal, finish_message = I.seal, I.finish_message

  -- a 'data' listener failed: the message is sealed, the end of data gets 451
  local function data_failed(conn, m, err)
    log("warn", conn.id, "handler data failed: %s", err)
    m._failed = m._failed or "a data handler failed"
    seal(m, "error")
    local a = conn._ask	-- an end of data that waits for a decision gets 451 now
    if a and a.name == "DATA_END" and a.obj == m and a.waiting then
      settle(conn, a, false, FAIL_CODE, FAIL_TEXT)
    end
  end

  function kinds.data(handle, chunk)
    local conn = conns[handle]
    local m = conn and conn.currentMessage
    if not m then return end
    m.size = m.size + #chunk
    if m._sealed then return end
    if m._forward then I.forward_data(m, chunk) end
    local fns = m._once == false and m._listeners.data or take(m, "data")
    for i = 1, #fns do
      local ok, err, task = spawn1(conn, fns[i], chunk)
      if ok == false then
        data_failed(conn, m, err)
      elseif ok == nil then
        task.on_finish = function(ok2, err2)
          if not ok2 then data_failed(conn, m, err2) end
        end
      end
      if m._sealed then return end	-- an error or a reject(): no later listener
    end
  end

  function kinds.abort(handle, why)
    local conn = conns[handle]
    local m = conn and conn.currentMessage
    if m then
      rawset(m, "aborted", why)
      seal(m, why)
      finish_message(m, false, nil, why)
    end
  end
end

-- install(I): the tasks, asks, messages and connections in; I.kinds out
function M.install(I)
  local conns = {}	-- handle -> connection
  local asks = install_asks(I, conns)
  local kinds = install_kinds(I, conns, asks)
  install_data(I, conns, kinds)
  I.kinds = kinds
end

return M
