-- smtp.instance -- the smtp API (require "smtp") bound to one platform.
--
-- Owns the Server, Connection and Message objects, the kinds functions
-- the C bridge calls for every engine hook (lua_bridge.c), running every
-- handler in its own coroutine under an instruction budget, turning event
-- objects (valid/code/message) into verdicts, and smtp.sleep/setTimeout.
-- A platform supplies time and timers: libevent in the server
-- (lua_policy.c), a virtual clock in smtp.testing (and smtp.check, while it
-- checks a script, timers that never fire and handler_failed).  Each call of new()
-- is a fresh instance: the harness loads every policy into its own.

local Emitter = require "smtp.emitter"
local take = Emitter.take	-- called directly on the hot path (no __index)
local rawget, rawset = rawget, rawset

local M = {}

local FAIL_CODE = 451	-- with smtp_core.POLICY_ERROR, the engine's one text for it
local DEFAULT_BUDGET = 10000000	-- VM instructions per resume
local DEFAULT_CPU = 1		-- seconds of CPU time per resume

local CONNECTION_EVENTS = {
  HELO = "HELO", EHLO = "EHLO",
  MAIL = "MAIL", ["MAIL FROM"] = "MAIL",
  RCPT = "RCPT", ["RCPT TO"] = "RCPT",
  DATA = "DATA", RSET = "RSET", QUIT = "QUIT", VRFY = "VRFY", EXPN = "EXPN",
  AUTH = "AUTH", close = "close",
}
local MESSAGE_EVENTS = { data = "data", ["end"] = "end", accept = "accept", reject = "reject",
  abort = "abort" }
local SERVER_EVENTS = { connection = "connection", start = "start" }

-- ---- event objects refuse fields they do not have ------------------------
--
-- A typo in a decision field (recipient.vaild = false) would be a new field
-- nobody reads: the recipient accepted.  So each kind of event object has a
-- metatable whose __newindex takes only that kind's field names and raises
-- on any other, naming the nearest one.  A field already set is assigned
-- raw, without the metamethod (valid = false costs nothing); a field still
-- nil (code, message) costs one call.  The library's own writes to fields
-- that may be nil use rawset.  User data goes in a data table
-- (connection.data, sender.data, recipient.data).

-- edit distance, a transposition counting one (optimal string alignment)
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    for j = 1, lb do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

-- the field name k was probably meant to be, or nil
local function nearest(k, names)
  if type(k) ~= "string" then return nil end
  local lk, best, bd = k:lower(), nil, math.huge
  for _, name in ipairs(names) do
    local d = distance(lk, name:lower())
    if d < bd then best, bd = name, d end
  end
  if bd <= (#k <= 4 and 1 or 2) then return best end
end

-- A __newindex for an event object of this kind: names are its fields (the
-- user's), internal the library's own; readonly names fields read through
-- __index (connection.user); class, its methods.
local function strict(kind, names, opts)
  opts = opts or {}
  local allowed = {}
  for _, n in ipairs(names) do allowed[n] = true end
  for _, n in ipairs(opts.internal or {}) do allowed[n] = true end
  local sorted = table.move(names, 1, #names, 1, {})
  table.sort(sorted)
  local data_hint = opts.hint or allowed.data and kind .. ".data" or "connection.data"
  return function(t, k, v)
    if allowed[k] then
      rawset(t, k, v)
      return
    end
    local what = type(k) == "string" and "'" .. k .. "'" or tostring(k)
    if opts.readonly and opts.readonly[k] then
      error(string.format("%s.%s is read-only", kind, k), 2)
    end
    if opts.class and type(opts.class[k]) == "function" then
      error(string.format("%s is a method of %s, not a field", what, kind), 2)
    end
    local near = nearest(k, sorted)
    if near then
      error(string.format("no field %s on %s (did you mean '%s'?)", what, kind, near), 2)
    end
    error(string.format("no field %s on %s (its fields: %s; your own data goes in %s)",
      what, kind, table.concat(sorted, ", "), data_hint), 2)
  end
end

local DECISION = { "valid", "code", "message" }
local function fields(...)
  local out = table.move(DECISION, 1, #DECISION, 1, {})
  for _, n in ipairs { ... } do out[#out + 1] = n end
  return out
end

-- Address objects print as their address (the seed's "'From ' + message.sender").
-- The engine's come without params when there are none: an empty table is
-- made when it is first read, and so is data (the user's).
local function address_meta(kind)
  return {
    __index = function(a, k)
      if k == "params" or k == "data" then
        local p = {}
        rawset(a, k, p)
        return p
      end
    end,
    __newindex = strict(kind, fields("address", "localPart", "domain", "params", "utf8", "data")),
    __tostring = function(a) return a.address end,
    __concat = function(a, b)
      local function s(x) return type(x) == "table" and x.address or x end
      return s(a) .. s(b)
    end,
  }
end
local SenderMeta, RecipientMeta = address_meta("sender"), address_meta("recipient")

local function event_meta(kind, ...)
  return { __newindex = strict(kind, fields(...)) }
end
local HeloMeta = event_meta("HELO object", "name", "extended")
local AuthMeta = event_meta("AUTH object", "method", "username", "password", "authzid")
local EventMeta = {
  RSET = event_meta("RSET object"), QUIT = event_meta("QUIT object"),
  VRFY = event_meta("VRFY object", "argument"), EXPN = event_meta("EXPN object", "argument"),
}

local function domain_of(address)
  return address:match("@([^@]*)$") or ""
end

-- ---- options -------------------------------------------------------------

local function is_int(v) return math.type(v) == "integer" end

-- name -> { check(v) -> ok, expected ; to(cfg, v) }
local function ms(field)
  return {
    check = function(v) return type(v) == "number" and v > 0 and v <= 86400, "a number of seconds in (0, 86400]" end,
    to = function(cfg, v) cfg[field] = math.max(1, math.floor(v * 1000 + 0.5)) end,
  }
end
local function int(field, min, what)
  return {
    check = function(v) return is_int(v) and v >= min, what end,
    to = function(cfg, v) cfg[field] = v end,
  }
end
local function ext(bit)
  return {
    check = function(v) return type(v) == "boolean", "a boolean" end,
    to = function(cfg, v, core)
      local b = core.EXT[bit]
      if v then cfg.extensions = cfg.extensions | b else cfg.extensions = cfg.extensions & ~b end
    end,
  }
end

local OPTIONS = {
  hostname = {
    check = function(v)
      return type(v) == "string" and #v > 0 and #v <= 255 and not v:find("[%c%s]"),
        "a host name (no spaces or control characters, at most 255 octets)"
    end,
    to = function(cfg, v) cfg.hostname = v end,
  },
  maxSize = int("max_size", 0, "an integer >= 0 (octets; 0: no limit)"),
  -- where smtp.store keeps its files (luasmtpd --state-dir wins); read by smtp.store
  stateDir = {
    check = function(v) return type(v) == "string" and #v > 0, "a directory path" end,
    to = function() end,
  },
  allowPipelining = ext("PIPELINING"),
  enhancedStatusCodes = ext("ENHANCEDSTATUSCODES"),
  eightBitMime = ext("8BITMIME"),
  smtputf8 = ext("SMTPUTF8"),
  -- SASL mechanisms offered (RFC 4954); the engine runs them, Lua sees 'AUTH'
  authMethods = {
    check = function(v)
      local what = 'an array of strings, mechanism names ("PLAIN", "LOGIN")'
      if type(v) ~= "table" then return false, what end
      for k, m in pairs(v) do
        if not is_int(k) or type(m) ~= "string" then return false, what end
        if m:upper() ~= "PLAIN" and m:upper() ~= "LOGIN" then
          return false, what .. " (unknown mechanism " .. string.format("%q", m) .. ")"
        end
      end
      return true
    end,
    to = function(cfg, v, core)
      local bits = 0
      for _, m in ipairs(v) do bits = bits | core.AUTH[m:upper()] end
      cfg.auth_methods = bits
    end,
  },
  maxAuthFailures = int("max_auth_failures", 1, "an integer >= 1"),
  -- server.tls = { cert = "chain.pem", key = "key.pem" }: STARTTLS, implicit TLS
  tls = {
    check = function(v)
      local what = 'a table { cert = "path", key = "path" }'
      if type(v) ~= "table" then return false, what end
      for k in pairs(v) do
        if k ~= "cert" and k ~= "key" then return false, what .. " (unknown field " .. tostring(k) .. ")" end
      end
      for _, k in ipairs { "cert", "key" } do
        if type(v[k]) ~= "string" or #v[k] == 0 then return false, what .. " (" .. k .. " missing)" end
      end
      return true
    end,
    to = function(cfg, v)
      cfg.tls_cert, cfg.tls_key, cfg.starttls = v.cert, v.key, true
    end,
  },
  maxRecipients = int("max_recipients", 1, "an integer >= 1"),
  maxBadCommands = int("max_bad_commands", 1, "an integer >= 1"),
  maxLineLength = int("max_line", 512, "an integer >= 512 (octets, with CRLF)"),
  maxTextLineLength = {
    check = function(v) return is_int(v) and (v == 0 or v >= 1000), "0 (no limit) or an integer >= 1000" end,
    to = function(cfg, v) cfg.max_text_line = v end,
  },
  -- a bare LF in message data: "reject" the message (550), or "accept" it as a line end
  bareLineFeed = {
    check = function(v) return v == "reject" or v == "accept", '"reject" or "accept"' end,
    to = function(cfg, v) cfg.accept_bare_lf = v == "accept" end,
  },
  commandTimeout = ms("timeout_command_ms"),
  dataTimeout = ms("timeout_data_ms"),
  decisionTimeout = ms("timeout_decision_ms"),
  tlsHandshakeTimeout = ms("timeout_tls_ms"),
  minDataRate = {
    check = function(v)
      return is_int(v) and v >= 0 and v <= 1e9, "an integer in [0, 1e9] (octets per second; 0: no minimum)"
    end,
    to = function(cfg, v) cfg.min_data_rate = v end,
  },
  maxSessionTime = {
    check = function(v)
      return type(v) == "number" and v >= 0 and v <= 86400, "0 (no limit) or a number of seconds in (0, 86400]"
    end,
    to = function(cfg, v) cfg.max_session_ms = v == 0 and 0 or math.max(1, math.floor(v * 1000 + 0.5)) end,
  },
  handlerBudget = {
    check = function(v) return is_int(v) and v >= 1000, "an integer >= 1000 (VM instructions)" end,
    to = function() end,
  },
  handlerCpuTime = {
    check = function(v) return type(v) == "number" and v > 0 and v <= 3600, "a number of seconds in (0, 3600]" end,
    to = function() end,
  },
  handlerMemory = {
    check = function(v) return is_int(v) and v >= 65536, "an integer >= 65536 (bytes)" end,
    to = function() end,
  },
  -- per worker: the Lua heap (default: a share of RAM) and how long one call
  -- into Lua may block it before it is replaced (lua_run.c, lua_policy.c)
  memoryLimit = int("memory_limit", 8388608, "an integer >= 8388608 (bytes)"),
  blockedLimit = {
    check = function(v) return type(v) == "number" and v >= 1 and v <= 3600, "a number of seconds in [1, 3600]" end,
    to = function(cfg, v) cfg.blocked_limit_ms = math.floor(v * 1000 + 0.5) end,
  },
}

-- ---- the instance ----------------------------------------------------------

function M.new(platform)
  platform = platform or {}
  local core = platform.core or require "smtp_core"
  local FAIL_TEXT = core.POLICY_ERROR
  local smtp = { _VERSION = "luasmtpd smtp 0.1" }
  local tasks = setmetatable({}, { __mode = "k" })	-- coroutine -> task
  local conns = {}					-- handle -> connection
  local server, bridge

  -- A template that does not fit its arguments ("%d" of 2.5) is logged as
  -- it is, with the arguments and the error: the line is never lost.
  local function log(level, id, fmt, ...)
    local ok, text = pcall(string.format, fmt, ...)
    if not ok then
      local args = table.pack(...)
      for i = 1, args.n do
        local v = args[i]
        args[i] = type(v) == "string" and string.format("%q", v) or tostring(v)
      end
      -- "bad argument #2 to 'format' (...)": #1 is the template
      local n, why = text:match("^bad argument #(%d+) to '[^']*' %((.*)%)$")
      if n and n ~= "1" then text = "argument " .. (n - 1) .. ": " .. why end
      text = string.format("%s [%s] (format error: %s)", tostring(fmt),
        table.concat(args, ", ", 1, args.n), text)
    end
    core.log(level, id or nil, text)
  end

  local function current_task()
    local co = coroutine.running()
    return co and tasks[co]
  end

  -- server.handlerBudget, .handlerCpuTime and .handlerMemory, kept by ServerMeta,
  -- and run_limits, what smtp_core.call takes for them (a bare budget for a stub core)
  local handler_budget, handler_cpu, handler_memory = DEFAULT_BUDGET, DEFAULT_CPU, 0
  local run_limits
  local function budget() return handler_budget end
  local function set_limits()
    run_limits = core.limits and core.limits(handler_budget, handler_cpu, handler_memory)
      or handler_budget
  end
  set_limits()

  -- ---- tasks: every handler runs in a coroutine of its own ------------------
  --
  -- Coroutines are pooled: smtp_core.call starts a handler on an idle
  -- pooled coroutine (its function and arguments pushed from C, no
  -- trampoline), and a handler that returns leaves the coroutine idle for
  -- the next one, so it costs no coroutine, closure or table allocation and
  -- no yield.  A coroutine that failed, or that is still waiting when its
  -- task is dropped, never goes back to the pool.  The budgets of a resume
  -- (instructions, CPU time, heap growth) are smtp_core.call's: a count
  -- hook from the first instruction of a resume (the harness), or the
  -- CPU-time watchdog and the allocator of luasmtpd (lua_run.c).

  local cocreate, coresume, yield = coroutine.create, coroutine.resume, coroutine.yield
  local sethook, traceback = debug.sethook, debug.traceback
  local POOL_MAX = 32
  local pool, npool = {}, 0

  -- once over budget the hook fires on every instruction, so a pcall inside
  -- the handler cannot swallow it
  local function over_again() error("handler exceeded its instruction budget", 0) end
  local function over_budget()
    sethook(over_again, "", 1)
    error("handler exceeded its instruction budget (" .. budget() .. " instructions)", 0)
  end

  -- call(co, budget, fn | nil, ...) -> true (returned) | nil (waiting) |
  -- false, err: starts fn(...) on an idle co, or resumes a waiting one
  local call, newco = core.call, core.thread
  if not call then	-- a stub core (unit specs): the same on coroutine.resume
    local DONE = {}
    local function trampoline(fn, ...)
      fn(...)
      return trampoline(yield(DONE))
    end
    newco = function() return cocreate(trampoline) end
    call = function(co, n, fn, ...)
      sethook(co, over_budget, "", n)
      local ok, r
      if fn then ok, r = coresume(co, fn, ...) else ok, r = coresume(co, ...) end
      if not ok then return false, r end
      if r == DONE then return true end
      return nil
    end
  end

  local function drop(task)
    task.dropped = true
    if task.timer then task.timer:cancel() ; task.timer = nil end
  end

  -- A task for conn; on_finish(ok, err) is called when it ends after having
  -- waited (or at once, if given here).
  local function acquire(conn, on_finish)
    local task
    if npool > 0 then
      task = pool[npool]
      pool[npool] = nil
      npool = npool - 1
    else
      local co = newco()
      task = { co = co, gen = 0, conn = false, on_finish = false, dead = false,
        dropped = false, timer = false }
      tasks[co] = task
    end
    task.conn, task.on_finish, task.dead, task.dropped = conn, on_finish or false, false, false
    task.gen = task.gen + 1
    return task
  end

  -- Runs task (fn(...) on an idle one, a waiting one without fn) until it
  -- returns, fails or waits: true | false, traceback | nil (waiting).
  -- task.on_finish, if set, is called when it ends.
  local function after(task, ok, r)
    if ok then
      task.dead = true
      local cb = task.on_finish
      task.conn, task.on_finish = false, false	-- false, not nil: the keys stay set
      if npool < POOL_MAX then
        npool = npool + 1
        pool[npool] = task
      end
      if cb then cb(true) end
      return true
    end
    if ok == nil then return nil end	-- waiting: the budget restarts at the next resume
    local co = task.co
    task.dead = true
    tasks[co] = nil
    local err = traceback(co, tostring(r))
    if task.on_finish then task.on_finish(false, err) end
    return false, err
  end
  local function resume(task, fn, ...)
    return after(task, call(task.co, run_limits, fn, ...))
  end

  -- Starts fn(...) in a task: resume()'s result and the task.
  local function spawn(conn, fn, on_finish, ...)
    local task = acquire(conn, on_finish)
    local ok, err = resume(task, fn, ...)
    return ok, err, task
  end

  -- spawn(conn, fn, nil, arg): one argument, no on_finish, acquire and
  -- resume inline when the pool has a coroutine (every handler run of an
  -- ask, every data chunk)
  local function spawn1(conn, fn, arg)
    if npool == 0 then return spawn(conn, fn, nil, arg) end
    local task = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    task.conn, task.on_finish, task.dead, task.dropped = conn, false, false, false
    task.gen = task.gen + 1
    local ok, err = after(task, call(task.co, run_limits, fn, arg))
    return ok, err, task
  end

  -- runs fns[i], fns[i+1], ... one after the other, each in its own task,
  -- the first one (task) already started and waiting; done(ok, err) once
  local function run_chain(conn, fns, i, task, arg, done)
    local chain = { cancelled = false, current = task }
    local function step(ok, err)
      if chain.cancelled then return end
      chain.current = nil
      if not ok then return done(false, err) end
      while true do
        i = i + 1
        if fns[i] == nil then return done(true) end
        local ok2, err2, t = spawn(conn, fns[i], nil, arg)
        if ok2 == nil then
          chain.current = t
          t.on_finish = step
          return
        end
        if not ok2 then return done(false, err2) end
      end
    end
    task.on_finish = step
    function chain.cancel()
      chain.cancelled = true
      if chain.current then drop(chain.current) end
    end
    return chain
  end

  -- fire-and-forget listeners (data, close, accept, reject, timers)
  local function emit_detached(conn, what, fns, ...)
    for i = 1, #fns do
      local ok, err, task = spawn(conn, fns[i], nil, ...)
      if ok == false then
        log("warn", conn and conn.id, "handler %s failed: %s", what, err)
      elseif ok == nil then
        task.on_finish = function(ok2, err2)
          if not ok2 then log("warn", conn and conn.id, "handler %s failed: %s", what, err2) end
        end
      end
    end
  end

  -- ---- verdicts ------------------------------------------------------------

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

  local data_verdict	-- the DATA command's finish (below)

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
          and rawget(obj, "valid") == nil then
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
  -- conn._ask, _aname and _aobj are false when unset, never nil: a field
  -- that keeps a value is assigned in place (no slow path per command).
  local function ask(conn, name, obj, fns, finish)
    conn._ask = false
    conn._aname, conn._aobj = name, obj	-- for the outcome
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
    return conclude(conn, nil, name, obj, finish)
  end

  -- ---- Message -------------------------------------------------------------

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
        "_sealed", "_cancelled", "_daccept", "_dcode", "_dtext" },
    }),
  }

  -- One constructor, its hash part sized for every field a message gets
  -- (nil ones too), and the emitter's fields inline (Emitter.init's shape):
  -- no rehash as the message goes through its life.  The recipients are the
  -- transaction's table itself: the engine takes no RCPT once DATA got 354,
  -- and the transaction's end or a refused DATA gives the connection a new one.
  -- _sealed: why the message will not be delivered, once that is known.
  local function new_message(conn)
    local rcpts = conn.recipients
    return setmetatable({
      _names = MESSAGE_EVENTS, _once = false, _on_change = false,
      _listeners = { data = false, ["end"] = false, accept = false, reject = false, abort = false },
      connection = conn, sender = conn.sender, recipients = rcpts, receivers = rcpts,
      accepted = false, size = 0, code = nil, _finished = false, _failed = false,
      _sealed = false, _cancelled = false,
      _daccept = UNDECIDED, _dcode = 0, _dtext = false,	-- the decision (text false: none)
    }, MessageMeta)
  end

  -- The message will not be delivered: no 'data' or 'end' listener runs
  -- from now on, and 'abort' tells the listeners why, once (never after
  -- 'accept').
  local function seal(m, reason)
    if m._sealed or m.accepted then return end
    m._sealed = reason
    emit_detached(m.connection, "abort", take(m, "abort"), m, reason)
  end

  local function decide_message(m, accept, code, text)
    if m._daccept ~= UNDECIDED then return false, "already decided" end
    m._daccept, m._dcode, m._dtext = accept, code, text or false
    if not accept then seal(m, "rejected") end
    local conn = m.connection
    local a = conn._ask
    if a and a.name == "DATA_END" and a.obj == m and a.waiting then
      settle(conn, a, accept, code, text)
    end
    return true
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

  function Message:pause() self.connection._handle:pause() end
  function Message:resume() self.connection._handle:resume() end

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

  -- ---- Connection ----------------------------------------------------------

  local Connection = setmetatable({}, { __index = Emitter })
  local ConnMeta = {
    __index = function(c, k)
      if k == "state" then return c._handle:state() end
      if k == "secure" then return c._handle:tls() ~= nil end
      if k == "tls" then return c._handle:tls() end
      if k == "user" then return c._handle:user() end
      if k == "data" then	-- the user's, made when first read
        local d = {}
        rawset(c, "data", d)
        return d
      end
      return Connection[k]
    end,
    __newindex = strict("connection", fields("id", "remoteAddress", "remotePort",
      "localAddress", "localPort", "server", "helo", "sender", "recipients", "currentMessage",
      "closed", "data"), {
      class = Connection,
      readonly = { state = true, secure = true, tls = true, user = true },
      internal = { "_handle", "_ask", "_aname", "_aobj", "_names", "_listeners", "_once",
        "_on_change" },
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
    conn._handle:attach(mask)
  end

  local function new_connection(handle)
    local peer = handle:peer()
    local c = setmetatable({
      _handle = handle, id = handle:id(),
      remoteAddress = peer.remoteAddress, remotePort = peer.remotePort,
      localAddress = peer.localAddress, localPort = peer.localPort,
      server = server, recipients = {},
      _ask = false, _aname = false, _aobj = false,	-- the ask in progress (ask())
      _names = CONNECTION_EVENTS, _listeners = {}, _once = false,	-- Emitter.init's
      _on_change = update_mask,
    }, ConnMeta)
    handle:attach(0)
    return c
  end

  -- connection:log(level, fmt, ...): a log line with this session's id
  function Connection:log(level, fmt, ...) log(level, self.id, fmt, ...) end

  local function clear_transaction(conn)
    conn.sender = nil	-- (__newindex only when it was nil: not after a message)
    if #conn.recipients > 0 then conn.recipients = {} end	-- (a message may hold it)
  end

  -- ---- kinds: what the C bridge calls ----------------------------------------

  local function address_object(meta, args, fallback)
    if args and args.address then	-- the engine's: already the address object's shape
      return setmetatable(args, meta)
    end
    local address = args and args.address or fallback or ""
    return setmetatable({
      address = address,
      params = args and args.params or {},
      localPart = args and args.localPart or address:match("^(.*)@") or address,
      domain = args and args.domain or domain_of(address),
      utf8 = args and args.utf8 or false,
      valid = true,
    }, meta)
  end

  local asks = {}

  function asks.CONNECT(handle)
    local conn = new_connection(handle)
    conns[handle] = conn
    return ask(conn, "CONNECT", conn, server:take("connection"))
  end

  local function helo(ext)
    return function(conn, args)
      local name = ext and "EHLO" or "HELO"
      return ask(conn, name, setmetatable({ name = args.arg, extended = ext, valid = true }, HeloMeta),
        take(conn, name))
    end
  end
  asks.HELO, asks.EHLO = helo(false), helo(true)

  function asks.MAIL(conn, args)
    return ask(conn, "MAIL", address_object(SenderMeta, args), take(conn, "MAIL"))
  end

  function asks.RCPT(conn, args)
    return ask(conn, "RCPT", address_object(RecipientMeta, args), take(conn, "RCPT"))
  end

  -- a reject() during the DATA handlers refuses the DATA command itself
  function data_verdict(m)
    if m._daccept == false then
      local code, text = m._dcode, m._dtext
      m._daccept, m._dcode, m._dtext = UNDECIDED, 0, false
      return false, code, text
    end
    if rawget(m, "valid") == false then return false, check_code(m.code, false), check_text(m.message) end
    return true, 0, nil
  end

  local function data_end_verdict(m)
    if m._failed then error(m._failed, 0) end
    local accept = m._daccept
    if accept == UNDECIDED then return WAIT end
    return accept, m._dcode, m._dtext
  end

  function asks.DATA(conn)
    local m = new_message(conn)
    rawset(conn, "currentMessage", m)
    return ask(conn, "DATA", m, take(conn, "DATA"), data_verdict)
  end

  function asks.DATA_END(conn, size)	-- the engine passes the size alone
    local m = conn.currentMessage
    if not m then return true, true, 0, nil end
    m.size = size or m.size
    if m._sealed then	-- no 'end' listener: the reply is what sealed it
      conn._ask, conn._aname, conn._aobj = false, "DATA_END", m
      if m._daccept == false then return true, false, m._dcode, m._dtext end
      return true, false, FAIL_CODE, FAIL_TEXT
    end
    return ask(conn, "DATA_END", m, take(m, "end"), data_end_verdict)
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

  -- AUTH fails closed: a listener must set valid = true
  function asks.AUTH(conn, args)
    local creds = setmetatable({ method = args.method, username = args.username,
      password = args.password, authzid = args.authzid, valid = false }, AuthMeta)
    return ask(conn, "AUTH", creds, take(conn, "AUTH"))
  end

  local function cancel_ask(conn)
    local a = conn._ask
    if a then
      a.cancelled = true
      if a.chain then a.chain.cancel() end
      conn._ask = false
    end
  end

  local kinds = {}

  function kinds.ask(handle, name, args)
    if name == "CONNECT" then return asks.CONNECT(handle) end
    local conn = conns[handle]
    local f = asks[name]
    if not conn or not f then return true, name ~= "AUTH", 0, nil end
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

  -- What an outcome changes, by event: outcomes[name](conn, ok, code, obj, arg)
  -- with obj the ask's event object when Lua ran its listeners, else false
  -- (arg is then the engine's argument).  Events without an entry change
  -- nothing (AUTH: connection.user reads the engine's; a STARTTLS forgets it).
  local outcomes = {}

  local function helo_outcome(ext)
    return function(conn, ok, code, obj, arg)
      clear_transaction(conn)
      if ok then rawset(conn, "helo", { name = obj and obj.name or arg, extended = ext }) end
    end
  end
  outcomes.HELO, outcomes.EHLO = helo_outcome(false), helo_outcome(true)

  function outcomes.MAIL(conn, ok, code, obj, arg)
    if not ok then return clear_transaction(conn) end
    rawset(conn, "sender", obj or address_object(SenderMeta, nil, arg))
    if #conn.recipients > 0 then conn.recipients = {} end
  end

  function outcomes.RCPT(conn, ok, code, obj, arg)
    if ok then
      local r = conn.recipients
      r[#r + 1] = obj or address_object(RecipientMeta, nil, arg)
    end
  end

  function outcomes.DATA(conn, ok, code)
    local m = conn.currentMessage
    if m and code ~= 354 then
      finish_message(m, false, code)
      -- the transaction goes on (more RCPT): not in the message's table
      conn.recipients = table.move(conn.recipients, 1, #conn.recipients, 1, {})
    end
  end

  function outcomes.DATA_END(conn, ok, code)
    local m = conn.currentMessage
    if m then finish_message(m, ok, code) end
    clear_transaction(conn)
  end

  function outcomes.RSET(conn)
    clear_transaction(conn)
  end

  function kinds.outcome(handle, name, code, arg)
    local conn = conns[handle]
    if not conn then return end
    local a = conn._ask
    if a and a.name == name then conn._ask = false end
    local obj = conn._aname == name and conn._aobj
    conn._aname, conn._aobj = false, false
    local f = outcomes[name]
    if f then f(conn, code >= 200 and code < 400, code, obj, arg) end
  end

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
    local fns = take(m, "data")
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

  function kinds.closed(handle)
    local conn = conns[handle]
    if not conn then return end
    cancel_ask(conn)
    local m = conn.currentMessage
    if m then	-- its DATA command was still waiting for a verdict: no abort came
      seal(m, "disconnect")
      finish_message(m, false, nil, "disconnect")
    end
    conns[handle] = nil
    rawset(conn, "closed", true)
    emit_detached(conn, "close", take(conn, "close"), conn)
  end

  -- Outcomes are no call of the engine's own: the bridge calls
  -- kinds.outcome for the ones pending just before its next call here.
  -- ---- Server --------------------------------------------------------------

  local Server = setmetatable({}, { __index = Emitter })
  local ServerMeta = {
    __index = function(s, k)
      local v = rawget(s, "_opts")[k]
      if v ~= nil then return v end
      if k == "hostname" then return platform.hostname and platform.hostname() or core.fqdn() end
      return Server[k]
    end,
    __newindex = function(s, k, v)
      local opt = OPTIONS[k]
      if not opt then
        error(string.format("unknown server option %q", tostring(k)), 2)
      end
      if v ~= nil then
        local ok, expected = opt.check(v)
        if not ok then
          error(string.format("server.%s must be %s, got %s", k, expected,
            type(v) == "string" and string.format("%q", v) or tostring(v)), 2)
        end
      end
      rawget(s, "_opts")[k] = v
      if k == "handlerBudget" then handler_budget = v or DEFAULT_BUDGET ; set_limits()
      elseif k == "handlerCpuTime" then handler_cpu = v or DEFAULT_CPU ; set_limits()
      elseif k == "handlerMemory" then handler_memory = v or 0 ; set_limits() end
    end,
  }

  local LISTEN_OPTS = { tls = true, insecureAuth = true }

  -- server:listen(port[, host][, opts]) -> server (records the address: the
  -- binary binds); opts.tls: implicit TLS (RFC 8314), opts.insecureAuth: AUTH
  -- allowed before TLS on this listener
  function Server:listen(port, host, opts)
    if not is_int(port) or port < 0 or port > 65535 then
      error("listen: port must be an integer from 0 to 65535", 2)
    end
    if type(host) == "table" and opts == nil then host, opts = nil, host end
    if host ~= nil and (type(host) ~= "string" or #host == 0 or #host > 255) then
      error("listen: host must be a non-empty string", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error("listen: options must be a table { tls = bool, insecureAuth = bool }", 2)
    end
    for k, v in pairs(opts or {}) do
      if not LISTEN_OPTS[k] then error(string.format("listen: unknown option %q", tostring(k)), 2) end
      if type(v) ~= "boolean" then error("listen: option " .. k .. " must be a boolean", 2) end
    end
    local l = rawget(self, "listening")
    l[#l + 1] = { port = port, host = host, tls = opts and opts.tls or nil,
      insecureAuth = opts and opts.insecureAuth or nil }
    return self
  end

  -- server:_config() -> the engine config (snake_case) the options give
  function Server:_config()
    local cfg = core.defaults()
    cfg.hostname = self.hostname
    for name, opt in pairs(OPTIONS) do
      local v = rawget(self, "_opts")[name]
      if v ~= nil then opt.to(cfg, v, core) end
    end
    return cfg
  end

  -- smtp.createServer([fn]) -> server; fn is a 'connection' listener
  function smtp.createServer(fn)
    if server then error("one server per script: createServer was already called", 2) end
    if fn ~= nil and type(fn) ~= "function" then error("createServer: a function expected", 2) end
    bridge = core.bridge(kinds)
    local s = setmetatable({}, ServerMeta)
    rawset(s, "_opts", {})
    rawset(s, "listening", {})
    Emitter.init(s, SERVER_EVENTS, function(self)
      bridge:watch(self:has_listeners("connection"))
    end)
    server = s
    if fn then s:on("connection", fn) end
    return s
  end

  -- ---- time ----------------------------------------------------------------

  -- The script's top level runs before any event loop (luasmtpd --check,
  -- the validation before the workers start): timers start in handlers and
  -- in 'start' listeners, never while loading.
  local loaded = false

  local function timer(seconds, fn)
    if not loaded then
      error("timers cannot start while the script loads: start them in a "
        .. "server:on(\"start\", fn) listener or in a handler", 3)
    end
    if not platform.timer then
      error("no event loop: timers run in luasmtpd or smtp.testing", 3)
    end
    return platform.timer(seconds, fn)
  end

  -- smtp.sleep(seconds): the handler waits; its session's reply waits with it
  function smtp.sleep(seconds)
    if type(seconds) ~= "number" or seconds < 0 then error("sleep: seconds must be a number >= 0", 2) end
    local task = current_task()
    if not task then error("smtp.sleep must be called from a handler or a 'start' listener", 2) end
    local gen = task.gen
    task.timer = timer(seconds, function()
      task.timer = nil
      if task.gen == gen and not task.dead and not task.dropped then resume(task, nil) end
    end)
    coroutine.yield()
  end

  -- smtp.setTimeout(fn, ms) -> timer; fn runs in its own coroutine
  function smtp.setTimeout(fn, ms)
    if type(fn) ~= "function" then error("setTimeout: a function expected", 2) end
    if type(ms) ~= "number" or ms < 0 then error("setTimeout: ms must be a number >= 0", 2) end
    local task = current_task()
    local conn = task and task.conn
    local t = { cancelled = false }
    t.handle = timer(ms / 1000, function()
      if t.cancelled then return end
      emit_detached(conn, "timer", { fn })
    end)
    return t
  end

  -- smtp.clearTimeout(timer)
  function smtp.clearTimeout(t)
    if type(t) == "table" and t.handle and not t.cancelled then
      t.cancelled = true
      t.handle:cancel()
    end
  end

  -- smtp.now() -> seconds (the virtual clock under smtp.testing)
  function smtp.now()
    return platform.now and platform.now() or os.time()
  end

  -- smtp.log(level, fmt, ...): level is "error", "warn", "info" or "debug"
  function smtp.log(level, fmt, ...)
    local task = current_task()
    log(level, task and task.conn and task.conn.id or nil, fmt, ...)
  end

  -- smtp.fs: what durable delivery needs and plain Lua lacks
  -- smtp.store.open(name[, opts]): shared state (smtp.store)
  smtp.store = require("smtp.store").new(platform, core)

  smtp.fs = {
    fsync = core.fsync,	-- fsync(path) -> true | nil, err (a file or a directory)
    mkdir = core.mkdir,	-- mkdir(path[, mode]) -> true | nil, err (existing is fine)
  }

  -- Runs the server's 'start' listeners, once: luasmtpd calls it in each
  -- worker as its event loop starts, smtp.testing when it loaded the script.
  -- Each runs in a task of its own (it may sleep, or loop with smtp.sleep,
  -- without holding the others up), logged without a session id; an error
  -- is logged and serving goes on.
  local started = false
  local function start()
    if started or not server then return end
    started = true
    local function failed(err)
      log("error", nil, "handler start failed: %s (serving goes on without it)", err)
    end
    local fns = take(server, "start")
    for i = 1, #fns do
      local ok, err, task = spawn(false, fns[i], nil, server)
      if ok == false then
        failed(err)
      elseif ok == nil then
        task.on_finish = function(ok2, err2) if not ok2 then failed(err2) end end
      end
    end
  end

  -- What the C side (lua_policy.c) and the harness read after the script ran.
  function smtp._policy()
    loaded = true
    if not server then return nil, "the script did not call smtp.createServer" end
    local sok, serr = smtp.store._ready(rawget(server, "_opts").stateDir)
    if not sok then return nil, serr end
    for _, l in ipairs(rawget(server, "listening")) do
      if l.tls and not rawget(server, "_opts").tls then
        return nil, ("listen(%d, ..., {tls = true}) needs server.tls (a certificate and key)"):format(l.port)
      end
    end
    return {
      bridge = bridge,
      server = server,
      config = server:_config(),
      listening = rawget(server, "listening"),
      start = start,
    }
  end

  return smtp
end

return M
