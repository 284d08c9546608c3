-- smtp.http -- HTTP requests from handlers: smtp.http.request and smtp.http.stream.
--
-- Owns the checks of a request's options, the wait of the handler that
-- makes one (its coroutine yields until the platform's callback resumes
-- it; the engine serves other sessions meanwhile), the response headers'
-- case-insensitive lookup, and streams: a request body written chunk by
-- chunk (each 'data' event of a message) into a buffer outside the Lua
-- heap, sent when it is finished.  The platform does the I/O:
-- platform.http(req, fn) and platform.http_body(limit), lua_http.c in
-- luasmtpd (libevent's HTTP client) and smtp.testing's fake peer
-- (smtp.testing.http) on the virtual clock.
--
-- A request in flight is cancelled when its handler's wait is dropped (the
-- decision timed out, the client left); a stream that is not finished when
-- its connection closes is cancelled then; a request whose handle Lua
-- collects is cancelled too.

local M = {}

M.TIMEOUT = 30			-- seconds, the whole exchange
M.MAX_BODY = 16 << 20		-- octets of a response body
M.MAX_REQUEST_BODY = 64 << 20	-- octets a stream buffers
M.MAX_IN_FLIGHT = 1000		-- requests in flight per worker

local METHODS = { GET = true, POST = true, HEAD = true, PUT = true, DELETE = true,
  OPTIONS = true, PATCH = true }
local KNOWN = { method = true, url = true, headers = true, body = true, timeout = true,
  maxBody = true, verify = true, maxRequestBody = true }

-- headers: lookup by any case ("Content-Type" finds "content-type")
local HEADERS_MT = { __index = function(t, k)
  if type(k) == "string" then return rawget(t, k:lower()) end
end }

local function check(opts, what, stream)
  if type(opts) ~= "table" then error(("smtp.http.%s: a table of options expected"):format(what), 3) end
  for k in pairs(opts) do
    if not KNOWN[k] or (k == "maxRequestBody" and not stream) or (k == "body" and stream) then
      error(("smtp.http.%s: unknown option %s"):format(what, tostring(k)), 3)
    end
  end
  local function bad(msg) error(("smtp.http.%s: %s"):format(what, msg), 4) end
  local url = opts.url
  if type(url) ~= "string" or not (url:match("^https?://[^/?#]")) then
    bad("url must be an http:// or https:// URL")
  end
  if url:find("[%c ]") then bad("url must not contain spaces or control characters") end
  local method = opts.method or ((opts.body or stream) and "POST" or "GET")
  if type(method) ~= "string" or not METHODS[method] then
    bad("method must be one of GET, POST, HEAD, PUT, DELETE, OPTIONS, PATCH")
  end
  local headers = opts.headers
  if headers ~= nil then
    if type(headers) ~= "table" then bad("headers must be a table of name = value") end
    for k, v in pairs(headers) do
      if type(k) ~= "string" or not k:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
        bad("header names must be HTTP tokens")
      end
      local list = type(v) == "table" and v or { v }	-- a list: the header repeated
      for i = 1, math.max(#list, 1) do
        local one = list[i]
        if type(one) == "number" then one = tostring(one) end
        if type(one) ~= "string" or one:find("[%z\r\n]") then
          bad(("header %s: a string (or a list of strings) without CR, LF or NUL"):format(k))
        end
      end
    end
  end
  if opts.body ~= nil and type(opts.body) ~= "string" then bad("body must be a string") end
  local timeout = opts.timeout or M.TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0 and timeout <= 3600) then
    bad("timeout must be a number of seconds in (0, 3600]")
  end
  local max_body = opts.maxBody or M.MAX_BODY
  if math.type(max_body) ~= "integer" or max_body < 0 then bad("maxBody must be an integer >= 0") end
  local max_req = opts.maxRequestBody or M.MAX_REQUEST_BODY
  if math.type(max_req) ~= "integer" or max_req < 0 then
    bad("maxRequestBody must be an integer >= 0")
  end
  if opts.verify ~= nil and type(opts.verify) ~= "boolean" then bad("verify must be a boolean") end
  return { method = method, url = url, headers = headers, body = opts.body, timeout = timeout,
    max_body = max_body, verify = opts.verify ~= false }, max_req
end

-- M.new(platform, I) -> the smtp.http table (I: the instance's tasks)
function M.new(platform, I)
  -- maxInFlight: requests in flight per worker (a Lua state) past which
  -- another one fails at once with "too many requests in flight"
  local http = { maxInFlight = M.MAX_IN_FLIGHT }
  local current_task, resume = I.current_task, I.resume

  local function no_loop(what)
    error(("smtp.http.%s: no event loop: requests run in luasmtpd's workers and smtp.testing "
      .. "(in handlers and 'start' listeners, not while the script loads)"):format(what), 3)
  end

  -- sends req and waits: status, headers, body | nil, err
  local function send(what, req)
    local task = current_task()
    if not task then
      error(("smtp.http.%s must be called from a handler or a 'start' listener"):format(what), 3)
    end
    if not platform.http or not I.loaded then no_loop(what) end
    local limit = http.maxInFlight
    if math.type(limit) ~= "integer" or limit < 0 then
      error("smtp.http.maxInFlight must be an integer >= 0", 3)
    end
    req.max_inflight = limit
    local gen = task.gen
    local done, status, headers, body = false, nil, nil, nil
    local handle, err = platform.http(req, function(a, b, c)
      done, status, headers, body = true, a, b, c
      if task.gen == gen and not task.dead and not task.dropped then resume(task, nil) end
    end)
    if not handle then return nil, err end
    task.timer = handle	-- a dropped wait cancels it (smtp.tasks)
    while not done do coroutine.yield() end
    if task.timer == handle then task.timer = nil end
    if not status then return nil, headers end
    return status, setmetatable(headers, HEADERS_MT), body
  end

  -- smtp.http.request{method=, url=, headers=, body=, timeout=, maxBody=, verify=}
  --   -> status, headers, body | nil, err
  function http.request(opts)
    local req = check(opts, "request", false)
    return send("request", req)
  end

  -- ---- streams ---------------------------------------------------------------

  local Stream = {}
  Stream.__index = Stream

  -- the streams of each connection that are not finished: cancelled at its close
  local open = setmetatable({}, { __mode = "k" })

  local function forget(self)
    local set = self.conn and open[self.conn]
    if set then set[self] = nil end
  end

  -- stream:write(chunk) -> true | nil, err (too large, or the stream is over)
  function Stream:write(chunk)
    if type(chunk) ~= "string" then error("stream:write: a string expected", 2) end
    if self.err then return nil, self.err end
    if self.state ~= "open" then return nil, "stream is " .. self.state end
    local ok, err = self.body:write(chunk)
    if not ok then
      self.err = err
      self.body:free()	-- what it held goes now, not at a collection
      self.body = nil
      return nil, err
    end
    return true
  end

  -- stream:size() -> octets written so far
  function Stream:size() return self.body and self.body:size() or 0 end

  -- stream:finish() -> status, headers, body | nil, err: sends it and waits
  function Stream:finish()
    if self.state ~= "open" then return nil, self.err or ("stream is " .. self.state) end
    self.state = "finished"
    forget(self)
    if self.err then self.body = nil ; return nil, self.err end
    local req = self.req
    req.body, self.body = self.body, nil
    return send("stream", req)
  end

  -- stream:cancel(): what it buffered goes; finish() then returns nil, "stream is cancelled"
  function Stream:cancel()
    if self.state == "open" then
      if self.body then self.body:free() end
      self.state, self.body = "cancelled", nil
      forget(self)
    end
  end

  -- smtp.http.stream{method=, url=, headers=, timeout=, maxBody=, verify=, maxRequestBody=}
  --   -> stream (stream:write, :finish, :cancel, :size)
  function http.stream(opts)
    local req, max_req = check(opts, "stream", true)
    if not platform.http_body or not I.loaded then no_loop("stream") end
    local task = current_task()
    local conn = task and task.conn or nil
    local self = setmetatable({ req = req, body = platform.http_body(max_req), state = "open",
      conn = conn }, Stream)
    if conn then
      local set = open[conn]
      if not set then
        set = setmetatable({}, { __mode = "k" })
        open[conn] = set
        conn:once("close", function()
          for s in pairs(set) do s:cancel() end
          open[conn] = nil
        end)
      end
      set[self] = true
    end
    return self
  end

  return http
end

return M
