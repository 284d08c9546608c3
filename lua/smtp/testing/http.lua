-- smtp.testing.http -- a fake HTTP peer for smtp.http, on the harness's virtual clock.
--
-- Owns the platform.http and platform.http_body of a harness (h.http): the
-- routes a spec declares, the requests the policy made (h.http.requests),
-- and their answers, which come when the clock reaches them (a route's
-- delay, 0 by default: h.clock:advance(0) delivers it), or the request's
-- timeout first.  A URL without a route is refused ("connection
-- refused"), as a port nobody listens on.  The results are lua_http.c's:
-- status, headers with lower-cased names, body; or nil, err.
--
--   h.http:route("POST", "http://127.0.0.1:11333/checkv2", function(req)
--     return 200, { ["content-type"] = "application/json" }, '{"action":"reject"}'
--   end, { delay = 0.5 })
--
-- A handler gets req = { method=, url=, path=, query=, headers=, header_lists=, body= }
-- (headers as sent, any case finds them, a repeated one joined by ", ";
-- header_lists: lower-cased name -> list of values) and returns status, headers, body;
-- nil, err for a failure (err as luasmtpd says it, e.g. "connection closed
-- before the response"); or nothing: it never answers (the request times
-- out).  A handler that raises fails the spec's clock:advance.

local Peer = {}
Peer.__index = Peer

local M = {}

local HEADERS_MT = { __index = function(t, k)
  if type(k) == "string" then
    for name, v in pairs(t) do if name:lower() == k:lower() then return v end end
  end
end }

-- M.new(clock) -> peer
function M.new(clock)
  return setmetatable({ clock = clock, routes = {}, requests = {}, inflight = 0, bodies = {} }, Peer)
end

-- peer:route(method, url, fn[, {delay=}]) -> peer; method "*" is any method;
-- a url without a query also takes the requests with one
function Peer:route(method, url, fn, opts)
  assert(type(method) == "string" and type(url) == "string", "route(method, url, fn[, opts])")
  assert(type(fn) == "function", "route: fn must be a function")
  local delay = opts and opts.delay or 0
  assert(type(delay) == "number" and delay >= 0, "route: delay must be a number >= 0")
  self.routes[#self.routes + 1] = { method = method, url = url, fn = fn, delay = delay }
  return self
end

-- peer:pending() -> requests in flight (neither answered nor cancelled)
function Peer:pending() return self.inflight end

-- peer:buffered() -> octets that streams hold (written, not yet sent or freed)
function Peer:buffered()
  local n = 0
  for _, b in ipairs(self.bodies) do if not b.sent then n = n + b.n end end
  return n
end

function Peer:_find(method, url)
  local bare = url:match("^([^?#]*)")
  for i = #self.routes, 1, -1 do	-- the last declared wins
    local r = self.routes[i]
    if (r.method == "*" or r.method == method) and (r.url == url or r.url == bare) then return r end
  end
end

-- platform.http_body(limit): chunks in a table (C keeps them in an evbuffer)
function Peer:_body(limit)
  local b = { chunks = {}, n = 0, limit = limit }
  function b.write(_, s)
    if #s > b.limit - b.n then return nil, "request body too large" end
    b.chunks[#b.chunks + 1] = s
    b.n = b.n + #s
    return true
  end
  function b.size() return b.n end
  function b.free() b.chunks, b.n, b.freed = {}, 0, true end
  self.bodies[#self.bodies + 1] = b
  return b
end

local function lower_keys(h)
  local out = {}
  for k, v in pairs(h or {}) do
    local lk = tostring(k):lower()
    out[lk] = out[lk] and (out[lk] .. ", " .. tostring(v)) or tostring(v)
  end
  return out
end

-- platform.http(req, fn) -> handle | nil, err
function Peer:_request(req, fn)
  if self.inflight >= (req.max_inflight or math.huge) then return nil, "too many requests in flight" end
  local scheme, host, rest = req.url:match("^(https?)://([^/?#]+)(.*)$")
  if not scheme then return nil, "bad url" end
  local path, query = rest:match("^([^?#]*)%??([^#]*)")
  local body = req.body
  if type(body) == "table" then body.sent = true ; body = table.concat(body.chunks) end
  local seen = { method = req.method, url = req.url, path = path ~= "" and path or "/",
    query = query ~= "" and query or nil, body = body or "",
    headers = setmetatable({}, HEADERS_MT) }
  for k, v in pairs(req.headers or {}) do	-- a list: the values joined, as a server reads them
    seen.headers[k] = type(v) == "table" and table.concat(v, ", ") or tostring(v)
  end
  seen.header_lists = {}	-- every header as a list of its values
  for k, v in pairs(req.headers or {}) do
    local list = {}
    for _, one in ipairs(type(v) == "table" and v or { v }) do list[#list + 1] = tostring(one) end
    seen.header_lists[k:lower()] = list
  end
  if not rawget(seen.headers, "Host") and not seen.headers.host then seen.headers.Host = host end
  self.requests[#self.requests + 1] = seen

  self.inflight = self.inflight + 1
  local handle = { done = false }
  local timer, answer
  local function finish(...)
    if handle.done then return end
    handle.done = true
    self.inflight = self.inflight - 1
    if timer then timer.cancel() end
    if answer then answer.cancel() end
    fn(...)
  end
  function handle.cancel()
    if handle.done then return end
    handle.done = true
    self.inflight = self.inflight - 1
    if timer then timer.cancel() end
    if answer then answer.cancel() end
  end
  local route = self:_find(req.method, req.url)
  timer = self.clock:timer(req.timeout, function() timer = nil ; finish(nil, "timeout") end)
  answer = self.clock:timer(route and route.delay or 0, function()
    answer = nil
    if handle.done then return end
    if not route then return finish(nil, "connection refused") end
    local r = table.pack(route.fn(seen))
    if r.n == 0 then return end	-- never answers: the timeout will
    if r[1] == nil then return finish(nil, tostring(r[2] or "connection failed")) end
    local status, headers, rbody = r[1], lower_keys(r[2]), r[3] or ""
    assert(math.type(status) == "integer", "a route's handler returns an integer status")
    if #rbody > (req.max_body or math.huge) then return finish(nil, "response too large") end
    finish(status, headers, rbody)
  end)
  return handle
end

return M
