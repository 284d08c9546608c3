-- smtp.tcp -- smtp.tcp.connect(host, port[, opts]): client TCP and TLS
-- sockets for handlers (docs/API.md, "Talking to other servers").
--
-- Owns the socket API (send, receive, starttls, close, settimeout), its
-- argument checks, the deadline of every operation (a platform timer) and
-- the tie of each socket to the task that opened it: a socket is closed
-- when its handler returns, fails or is dropped (its session went away).
-- The platform's tcp_connect does the I/O: lua_tcp.c's bufferevents in
-- luasmtpd, lua/smtp/testing/tcp.lua's fake peers on the virtual clock in
-- smtp.testing.  Its sockets answer an operation at once when they can,
-- else return false and call back later; meanwhile the handler's coroutine
-- waits (yields) and other sessions go on.
local M = {}

local DEFAULT_TIMEOUT = 10	-- seconds per operation (connect, send, receive, starttls)
local DEFAULT_MAX_LINE = 65536	-- octets of a "*l" line, without its end
local DEFAULT_MAX_SIZE = 1048576	-- octets of a "*a" or counted receive
local DEFAULT_MAX_SOCKETS = 256	-- open sockets per worker (server.maxSockets)

local OPTS = { timeout = "number", tls = "boolean", servername = "string", verify = "boolean",
  cafile = "string", maxLine = "number", maxSize = "number" }

local function check_seconds(v, what, level)
  if type(v) ~= "number" or v <= 0 or v > 3600 then
    error(("%s must be a number of seconds in (0, 3600]"):format(what), level + 1)
  end
end

-- new(platform, I) -> smtp.tcp (I: the instance's tasks and server)
function M.new(platform, I)
  local tcp = {}

  local Socket = {}
  Socket.__index = Socket
  Socket.__name = "smtp.tcp socket"

  local function task_or_error(what, level)
    local task = I.current_task()
    if not task then
      error(("smtp.tcp: %s waits for the network, so it is called from handlers and 'start' "
        .. "listeners only"):format(what), level)
    end
    return task
  end

  -- Runs start(fn), an operation of the platform's socket, and waits for
  -- its result under the socket's timeout; on_timeout() gives up the
  -- operation before the caller gets nil, "timeout".
  local function wait(self, what, start, on_timeout)
    local task = task_or_error(what, 4)
    local gen = task.gen
    local done, waiting, r = false, false, nil
    local function finish(...)
      if done then return end
      done, r = true, table.pack(...)
      local t = self._timer
      if t then self._timer = false ; t:cancel() end
      if waiting and task.gen == gen and not task.dead and not task.dropped then I.resume(task, nil) end
    end
    local first, err, partial = start(finish)
    if first ~= false then return first, err, partial end	-- answered at once
    if not done then
      self._timer = platform.timer(self._timeout, function()
        self._timer = false
        if done then return end
        on_timeout(self)
        finish(nil, "timeout")
      end)
      waiting = true
      repeat coroutine.yield() until done
      waiting = false
    end
    return table.unpack(r, 1, r.n)
  end

  local function give_up(self) self:close() end
  local function cancel(self) if self._s then self._s:cancel() end end

  -- sock:send(data) -> true | nil, err
  function Socket:send(data)
    if type(data) ~= "string" then error("send: a string expected", 2) end
    local s = self._s
    if not s then return nil, "closed" end
    return wait(self, "send", function(fn) return s:send(data, fn) end, give_up)
  end

  -- sock:receive([pattern]) -> data | nil, err, partial
  -- pattern: "*l" (default: a line, its CR LF or LF removed), "*a" (all
  -- until the peer closes), or a number of octets
  function Socket:receive(pattern)
    local mode, n
    if pattern == nil or pattern == "*l" or pattern == "l" then
      mode, n = "l", self._max_line
    elseif pattern == "*a" or pattern == "a" then
      mode, n = "a", self._max_size
    elseif math.type(pattern) == "integer" and pattern >= 0 then
      if pattern > self._max_size then
        error(("receive: %d octets is more than maxSize (%d)"):format(pattern, self._max_size), 2)
      end
      mode, n = "n", pattern
    else
      error('receive: "*l", "*a" or a number of octets expected', 2)
    end
    local s = self._s
    if not s then return nil, "closed", "" end
    local data, err, partial = wait(self, "receive", function(fn) return s:receive(mode, n, fn) end, cancel)
    if data == nil and err ~= "timeout" and not s:isopen() then self:close() end
    return data, err, partial
  end

  -- sock:starttls([servername]) -> true | nil, err
  function Socket:starttls(servername)
    if servername ~= nil and type(servername) ~= "string" then error("starttls: a host name expected", 2) end
    local s = self._s
    if not s then return nil, "closed" end
    local name = servername or self._servername
    return wait(self, "starttls", function(fn)
      return s:starttls(name, self._verify, self._cafile or nil, fn)
    end, give_up)
  end

  -- sock:settimeout(seconds): each later operation's deadline
  function Socket:settimeout(seconds)
    check_seconds(seconds, "settimeout: seconds", 2)
    self._timeout = seconds
  end

  -- sock:close() -> true (again: nothing more)
  function Socket:close()
    local s = self._s
    if s then
      self._s = false
      s:close()
      local t = self._timer
      if t then self._timer = false ; t:cancel() end
      local task = self._task
      if task and task.owned then task.owned[self] = nil end
    end
    return true
  end

  -- smtp.tcp.connect(host, port[, opts]) -> socket | nil, err
  function tcp.connect(host, port, opts)
    if type(host) ~= "string" or host == "" then error("connect: a host expected", 2) end
    if math.type(port) ~= "integer" or port < 1 or port > 65535 then
      error("connect: a port in [1, 65535] expected", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then error("connect: opts must be a table", 2) end
    opts = opts or {}
    for k, v in pairs(opts) do
      if OPTS[k] == nil then error(("connect: unknown option %q"):format(tostring(k)), 2) end
      if type(v) ~= OPTS[k] then error(("connect: opts.%s must be a %s"):format(k, OPTS[k]), 2) end
    end
    if opts.timeout then check_seconds(opts.timeout, "connect: opts.timeout", 2) end
    for _, k in ipairs { "maxLine", "maxSize" } do
      local v = opts[k]
      if v ~= nil and (math.type(v) ~= "integer" or v < 1 or v > 1 << 30) then
        error(("connect: opts.%s must be an integer in [1, 2^30]"):format(k), 2)
      end
    end
    local task = task_or_error("connect", 3)
    if not platform.tcp_connect then
      return nil, "no network here: smtp.tcp runs in luasmtpd's workers and smtp.testing"
    end
    local server = I.server
    local self = setmetatable({ _s = false, _timer = false, _task = task,
      _timeout = opts.timeout or DEFAULT_TIMEOUT,
      _max_line = opts.maxLine or DEFAULT_MAX_LINE, _max_size = opts.maxSize or DEFAULT_MAX_SIZE,
      _servername = opts.servername or host, _verify = opts.verify ~= false,
      _cafile = opts.cafile or false }, Socket)
    local ok, err = wait(self, "connect", function(fn)
      local s, serr = platform.tcp_connect(host, port, {
        max = server and server.maxSockets or DEFAULT_MAX_SOCKETS,
        tls = opts.tls, servername = self._servername, verify = self._verify,
        cafile = opts.cafile }, fn)
      if not s then return nil, serr end
      self._s = s
      local owned = task.owned
      if not owned then owned = {} ; task.owned = owned end
      owned[self] = true
      return false
    end, give_up)
    if not ok then
      self:close()
      return nil, err
    end
    return self
  end

  return tcp
end

return M
