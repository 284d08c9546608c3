-- smtp.message -- the Message object: one mail transaction's data.
--
-- Owns the Message class (accept, reject, pause, resume, addHeader, its events data,
-- end, accept, reject, abort) and a message's life: made at DATA, sealed
-- once it will not be delivered (abort says why, once), finished at the
-- final dot's reply or when the session ends.  Sender and recipients are
-- the engine's envelope (smtp.connection).

local Emitter = require "smtp.emitter"
local objects = require "smtp.objects"
local is_int = require("smtp.options").is_int
local take, strict, fields = Emitter.take, objects.strict, objects.fields
local UNDECIDED = require("smtp.ask").UNDECIDED	-- a message's _daccept before a decision
local push_each = require("smtp.ask").push_each
local rawget, rawset = rawget, rawset

local MESSAGE_EVENTS = { data = "data", ["end"] = "end", accept = "accept", reject = "reject",
  abort = "abort" }

local M = {}

-- a message's life: I.seal, I.finish_message and I.decide_message out
local function install_life(I)
  local emit_detached, settle = I.emit_detached, I.settle

  -- The message will not be delivered: no 'data' or 'end' listener runs
  -- from now on, and 'abort' tells the listeners why, once (never after
  -- 'accept').
  local function seal(m, reason)
    if m._sealed or m.accepted then return end
    m._sealed = reason
    if m._forward then I.forward_abort(m) end	-- the next hop never completes it
    emit_detached(m.connection, "abort", take(m, "abort"), m, reason)
  end

  local function decide_message(m, accept, code, text)
    if m._daccept ~= UNDECIDED then return false, "already decided" end
    m._daccept, m._dcode, m._dtext = accept, code, text or false
    if not accept then seal(m, "rejected") end
    local conn = m.connection
    local a = conn._ask
    if a and a.name == "DATA_END" and a.obj == m and a.waiting then
      push_each(m)
      settle(conn, a, accept, code, text)
    end
    return true
  end

  local function finish_message(m, accepted, code, reason)
    if m._finished then return end
    m._finished = true
    if not accepted and not m._sealed then
      -- refused without a reject() (an error, valid = false, no decision in time)
      seal(m, (m._daccept == false or rawget(m, "valid") == false) and "rejected"
        or m._cancelled and "decision timeout" or "error")
    end
    m.accepted = accepted
    rawset(m, "code", code)
    local conn = m.connection
    if conn.currentMessage == m then conn.currentMessage = nil end
    local name = accepted and "accept" or "reject"
    emit_detached(conn, name, take(m, name), m, code or reason)
  end

  I.seal, I.finish_message, I.decide_message = seal, finish_message, decide_message
end

-- the class: I.new_message out
local function install_class(I)
  local decide_message = I.decide_message

  -- No data table of the user's here (one more table per message measured
  -- +1.5% instructions per message): a message's own data lives in locals
  -- of the 'DATA' listener, shared with its message listeners.
  local Message = setmetatable({}, { __index = Emitter })
  local MessageMeta = {
    __index = Message,
    __newindex = strict("message", fields("connection", "sender", "recipients", "receivers",
      "accepted", "size", "aborted"), {
      hint = "locals of the 'DATA' listener or connection.data",
      class = Message,
      internal = { "_names", "_once", "_on_change", "_listeners", "_finished", "_failed",
        "_sealed", "_cancelled", "_daccept", "_dcode", "_dtext", "_each", "_forward" },
    }),
  }

  -- Whether the message's data chunks come to Lua: only with a 'data'
  -- listener or a next hop fed from Lua (the harness's); otherwise the
  -- bridge passes them by (no string, no dispatch per chunk) and size
  -- catches up here when that changes.
  local function watch_data(m)
    local fwd = m._forward
    local on = m._listeners.data and true or (fwd and fwd.streaming and not fwd.sink) or false
    local skipped = m.connection._handle:dataListeners(on)
    if skipped > 0 then m.size = m.size + skipped end
  end
  I.watch_data = watch_data
  local function on_change(m, canon)
    if canon == "data" then watch_data(m) end
  end

  -- One constructor, its hash part sized for every field a message gets
  -- (nil ones too), and the emitter's fields inline (Emitter.init's shape):
  -- no rehash as the message goes through its life.  Sender and recipients
  -- are the engine's envelope at DATA (the engine takes no RCPT once DATA
  -- got 354), the address objects the listeners saw.
  -- _sealed: why the message will not be delivered, once that is known.
  local function new_message(conn)
    local handle = conn._handle	-- the envelope, without the connection's __index
    local rcpts = handle:recipients()
    return setmetatable({
      _names = MESSAGE_EVENTS, _once = false, _on_change = on_change,
      _listeners = { data = false, ["end"] = false, accept = false, reject = false, abort = false },
      connection = conn, sender = handle:sender(), recipients = rcpts, receivers = rcpts,
      accepted = false, size = 0, code = nil, _finished = false, _failed = false,
      _sealed = false, _cancelled = false,
      _daccept = UNDECIDED, _dcode = 0, _dtext = false,	-- the decision (text false: none)
      _forward = false,	-- smtp.forward's transaction while the message goes to a next hop
      _each = false,	-- settle(): per recipient, false or { code, text } for a refused one
    }, MessageMeta)
  end

  -- message:accept([code][, text]) -> true | false, "already decided"
  function Message:accept(code, text)
    if type(code) == "string" and text == nil then code, text = nil, code end
    if code ~= nil and (not is_int(code) or code < 200 or code > 299) then
      error("accept code must be 2xx, got " .. tostring(code), 2)
    end
    if text ~= nil and type(text) ~= "string" then error("text must be a string", 2) end
    return decide_message(self, true, code or 0, text)
  end

  -- message:reject([code][, text]) -> true | false, "already decided"
  function Message:reject(code, text)
    if type(code) == "string" and text == nil then code, text = nil, code end
    if code ~= nil and (not is_int(code) or code < 400 or code > 599) then
      error("reject code must be 4xx or 5xx, got " .. tostring(code), 2)
    end
    if text ~= nil and type(text) ~= "string" then error("text must be a string", 2) end
    return decide_message(self, false, code or 0, text)
  end

  -- message:forward(target) -> true | nil, err (smtp.forward)
  function Message:forward(target) return I.forward_message(self, target) end
  -- message:settle([code][, text]) -> true | false, "already decided": a
  -- verdict per recipient (LMTP, RFC 2033): each recipient object with
  -- valid = false is refused with its code (4xx/5xx, default 550) and
  -- message; the others are accepted with code and text (default 250).  The
  -- message counts as accepted if any recipient is.  Over SMTP there is one
  -- reply: the message's (accepted if any recipient is still valid).
  function Message:settle(code, text)
    if type(code) == "string" and text == nil then code, text = nil, code end
    if code ~= nil and (not is_int(code) or code < 200 or code > 299) then
      error("settle code must be 2xx, got " .. tostring(code), 2)
    end
    if text ~= nil and type(text) ~= "string" then error("text must be a string", 2) end
    local each, any, first = {}, false, nil
    for i, r in ipairs(self.recipients) do
      if r.valid == false then
        local c, t = r.code, r.message
        if c ~= nil and (not is_int(c) or c < 400 or c > 599) then
          error("recipient " .. i .. ": code must be 4xx or 5xx, got " .. tostring(c), 2)
        end
        if t ~= nil and type(t) ~= "string" then
          error("recipient " .. i .. ": message must be a string", 2)
        end
        each[i] = { c or 0, t or false }
        first = first or each[i]
      else
        each[i] = false
        any = true
      end
    end
    if self._daccept == UNDECIDED and self.connection.lmtp then self._each = each end
    if any then return decide_message(self, true, code or 0, text) end
    return decide_message(self, false, first[1], first[2] or nil)
  end

  -- message:addHeader(name, value) -> true | fail, why: a header field on top
  -- of the message's data (after the Received field), from the 'DATA'
  -- listener, before any octet of the data flowed.  A bad name, a CR, LF or
  -- control character in the value, or a call once the data began raise;
  -- past the engine's size bound (16 KiB for all of them) it returns fail.
  function Message:addHeader(name, value)
    if type(name) ~= "string" then error("header name must be a string", 2) end
    if type(value) ~= "string" then error("header value must be a string", 2) end
    local ok, why, bad = self.connection._handle:addHeader(name, value)
    if ok then return true end
    if bad then error("addHeader: " .. why, 2) end
    return nil, why
  end

  function Message:pause() self.connection._handle:pause() end
  function Message:resume() self.connection._handle:resume() end

  I.new_message = new_message
end

-- install(I): the tasks and the asks in; I.new_message, I.seal and
-- I.finish_message out
function M.install(I)
  install_life(I)
  install_class(I)
end

return M
