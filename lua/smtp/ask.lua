-- smtp.ask -- an event's listeners run, and their decision becomes a verdict.
--
-- Owns the asks of one instance: ask() runs the listeners of an engine
-- event on the event object (at once, or as a chain once one waits),
-- turns the object's valid/code/message (or a message's accept()/reject())
-- into the verdict the engine replies with, and settles a verdict that
-- waited through the session handle's decide.  A listener that raises, or
-- a malformed decision, is a 451 and a log line.

local is_int = require("smtp.options").is_int
local rawget = rawget

local M = {}

-- ---- verdicts: no state of the instance ------------------------------------

local function check_code(code, accept)
  if code == nil then return 0 end
  if not is_int(code) or code < 200 or code > 599 then
    error("reply code must be an integer from 200 to 599, got " .. tostring(code), 0)
  end
  if accept == false and code < 400 then
    error("refused verdict: code " .. code .. " with valid = false (a rejection needs 4xx or 5xx)", 0)
  end
  return code
end

local function check_text(text)
  if text ~= nil and type(text) ~= "string" then
    error("reply message must be a string, got " .. type(text), 0)
  end
  return text
end

local function verdict_of(obj)
  local accept = obj.valid ~= false
  return accept, check_code(obj.code, accept), check_text(obj.message)
end

local WAIT = {}
local UNDECIDED = {}	-- a message's _daccept before accept() or reject()

-- The DATA command's verdict: a reject() during the DATA listeners
-- refuses the command itself (the transaction goes on).
-- A message being forwarded asks the next hop's DATA first (smtp.forward).
local function data_verdict(m)
  local fwd = m._forward
  if m._daccept == false then
    local code, text = m._dcode, m._dtext
    m._daccept, m._dcode, m._dtext = UNDECIDED, 0, false
    if fwd then m._forward = false ; fwd:close(true) end
    return false, code, text
  end
  if rawget(m, "valid") == false then
    if fwd then m._forward = false ; fwd:close(true) end
    return false, check_code(m.code, false), check_text(m.message)
  end
  if fwd then return fwd:start_data(m) end
  return true, 0, nil
end

-- LMTP: message:settle()'s verdicts per recipient go to the engine just
-- before the message's (which answers the others).
local function push_each(m)
  local each = m._each
  if not each then return end
  local handle = m.connection._handle
  for i = 1, #each do
    local e = each[i]
    if e then handle:recipientVerdict(i, false, e[1], e[2] or nil) end
  end
end

-- The final dot's verdict: the message's decision, or WAIT for one.
local function data_end_verdict(m)
  if m._failed then error(m._failed, 0) end
  local fwd = m._forward
  if fwd and m._daccept ~= false then return fwd:end_verdict(m) end
  local accept = m._daccept
  if accept == UNDECIDED then return WAIT end
  push_each(m)
  return accept, m._dcode, m._dtext
end

-- The ask in progress of conn is over without a verdict (the engine
-- cancelled it, or the client left): its waiting listeners are dropped.
local function cancel_ask(conn)
  local a = conn._ask
  if a then
    a.cancelled = true
    if a.chain then a.chain.cancel() end
    conn._ask = false
  end
end

-- ---- asks ------------------------------------------------------------------

-- a verdict that failed or waited: I.ask_failed and I.settle out
local function install_settle(I)
  local platform, log = I.platform, I.log

  -- A failed ask (a listener raised, or its decision was malformed): the
  -- client gets 451 (421 at connect) and the log the reason; a platform's
  -- handler_failed (luasmtpd's check of a script) hears of it too.
  local function ask_failed(conn, name, err)
    log("warn", conn.id, "handler %s failed: %s", name:lower(), err)
    if platform.handler_failed then platform.handler_failed(name, err) end
  end

  -- Settles an ask that waited: the verdict goes to the engine.
  local function settle(conn, a, accept, code, text)
    if a.settled or a.cancelled then return end
    a.settled = true
    local ok, err = conn._handle:decide(accept, code, text or nil)
    if not ok and err ~= "session closed" then
      log("warn", conn.id, "decision for %s dropped: %s", a.name, err)
    end
  end

  I.ask_failed, I.settle = ask_failed, settle
end

-- the asks: I.ask out
local function install_ask(I)
  local log, ask_failed, settle = I.log, I.ask_failed, I.settle
  local FAIL_CODE, FAIL_TEXT = I.FAIL_CODE, I.FAIL_TEXT
  local spawn1, run_chain = I.spawn1, I.run_chain

  -- The verdict of an ask whose listeners all ran: true, accept, code, text
  -- (false when finish says WAIT: a decide follows).
  local function conclude(conn, a, name, obj, finish)
    -- raw: no event object's metatable has a code, message, valid or
    -- decision (an address object's __index is a function: a call per read)
    if not a then
      if not finish then
        if rawget(obj, "code") == nil and rawget(obj, "message") == nil then
          return true, obj.valid ~= false, 0, nil	-- verdict_of's, nothing to check
        end
      elseif finish == data_verdict and obj._daccept == UNDECIDED
          and rawget(obj, "valid") == nil and not obj._forward then
        return true, true, 0, nil	-- data_verdict's, nothing to check
      end
    end
    local ok, accept, code, text = pcall(finish or verdict_of, obj)
    if not ok then
      ask_failed(conn, name, accept)
      accept, code, text = false, FAIL_CODE, FAIL_TEXT
    elseif accept == WAIT then
      if not a then
        a = { name = name, obj = obj }
        conn._ask = a
      end
      a.waiting = true
      return false
    end
    if a then
      if a.settled or a.cancelled then return false end
      a.settled = true
      local ok2, err = conn._handle:decide(accept, code, text or nil)
      if not ok2 and err ~= "session closed" then
        log("warn", conn.id, "decision for %s dropped: %s", name, err)
      end
      return false
    end
    return true, accept, code, text
  end

  -- Runs the listeners of an ask; finish(obj) gives the verdict (or WAIT).
  -- Listeners that return at once cost no allocation here; the first one
  -- that waits turns the rest of the ask into a chain decided later.
  -- conn._ask is false when unset, never nil: a field that keeps a value is
  -- assigned in place (no slow path per command).
  local function ask(conn, name, obj, fns, finish)
    conn._ask = false
    for i = 1, #fns do
      local ok, err, task = spawn1(conn, fns[i], obj)
      if ok == false then
        ask_failed(conn, name, err)
        return true, false, FAIL_CODE, FAIL_TEXT
      elseif ok == nil then
        local a = { name = name, obj = obj }
        conn._ask = a
        a.chain = run_chain(conn, fns, i, task, obj, function(ok2, err2)
          if not ok2 then
            ask_failed(conn, name, err2)
            return settle(conn, a, false, FAIL_CODE, FAIL_TEXT)
          end
          conclude(conn, a, name, obj, finish)
        end)
        return false
      end
    end
    -- conclude's first case, inline (most commands)
    if not finish and rawget(obj, "code") == nil and rawget(obj, "message") == nil then
      return true, obj.valid ~= false, 0, nil
    end
    return conclude(conn, nil, name, obj, finish)
  end

  I.ask = ask
end

-- install(I): I.platform, I.log, the tasks and the fail verdict in; I.ask,
-- I.ask_failed and I.settle out
function M.install(I)
  install_settle(I)
  install_ask(I)
end

M.UNDECIDED, M.data_verdict, M.data_end_verdict = UNDECIDED, data_verdict, data_end_verdict
M.WAIT, M.verdict_of = WAIT, verdict_of
M.cancel_ask, M.push_each = cancel_ask, push_each
return M
