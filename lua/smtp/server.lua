-- smtp.server -- the Server object: options, listen addresses, 'start'.
--
-- Owns the one Server of an instance (smtp.createServer, which also makes
-- the C bridge on the kinds of smtp.dispatch), its options (checked by
-- smtp.options as they are set), server:listen, the engine config the
-- options give, the 'start' listeners, and smtp._policy(): what the host
-- (lua_host.c) and the harness (smtp.testing) read after the script ran,
-- checked there once for both (a tls listener needs server.tls).

local Emitter = require "smtp.emitter"
local options = require "smtp.options"
local OPTIONS, is_int = options.OPTIONS, options.is_int
local take = Emitter.take
local rawget, rawset = rawget, rawset

local SERVER_EVENTS = { connection = "connection", start = "start" }

local M = {}

local LISTEN_OPTS = { tls = "boolean", insecureAuth = "boolean", lmtp = "boolean",
  proxy = "boolean", proxyFrom = "table", proxyTimeout = "number" }
local network_ok	-- smtp_core.network_ok, set by M.install

-- opts.proxyFrom: a non-empty array of networks ("10.0.0.0/8", "::1") that C reads
local function check_networks(list, what)
  if #list == 0 or #list > 16 then
    error(("listen: %s must be an array of 1 to 16 networks"):format(what), 3)
  end
  for k, v in pairs(list) do
    if math.type(k) ~= "integer" or type(v) ~= "string" or not network_ok(v) then
      error(("listen: %s[%s] is not a network (\"10.0.0.0/8\", \"2001:db8::/32\", \"127.0.0.1\")")
        :format(what, tostring(k)), 3)
    end
  end
end

-- server:listen(port[, host][, opts]) -> server (records the address: the
-- binary binds); opts.tls: implicit TLS (RFC 8314), opts.insecureAuth: AUTH
-- allowed before TLS on this listener, opts.lmtp: LMTP (RFC 2033) instead of
-- SMTP, opts.proxy: a PROXY protocol header (v1 or v2) comes first from one
-- of opts.proxyFrom, within opts.proxyTimeout seconds (5)
-- server:listen(path[, opts]): a unix socket (an absolute path)
local function listen(self, port, host, opts)
  if type(host) == "table" and opts == nil then host, opts = nil, host end
  local path
  if type(port) == "string" then
    if port:sub(1, 1) ~= "/" or #port >= 108 or port:find("%z") then
      error("listen: a unix socket's path must be absolute, under 108 octets", 2)
    end
    if host ~= nil then error("listen: a unix socket takes no host", 2) end
    path, host, port = port, port, 0
  elseif not is_int(port) or port < 0 or port > 65535 then
    error("listen: port must be an integer from 0 to 65535", 2)
  end
  if host ~= nil and (type(host) ~= "string" or #host == 0 or #host > 255) then
    error("listen: host must be a non-empty string", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("listen: options must be a table { tls = bool, insecureAuth = bool, lmtp = bool, "
      .. "proxy = bool, proxyFrom = {networks}, proxyTimeout = seconds }", 2)
  end
  for k, v in pairs(opts or {}) do
    if not LISTEN_OPTS[k] then error(string.format("listen: unknown option %q", tostring(k)), 2) end
    if type(v) ~= LISTEN_OPTS[k] then
      error(("listen: option %s must be a %s"):format(k, LISTEN_OPTS[k] == "table" and
        "table (an array of networks)" or LISTEN_OPTS[k]), 2)
    end
  end
  opts = opts or {}
  if opts.proxy then
    if opts.proxyFrom == nil then
      error("listen: proxy = true needs proxyFrom, the networks of the proxies "
        .. "trusted to send the header", 2)
    end
    check_networks(opts.proxyFrom, "proxyFrom")
  elseif opts.proxyFrom ~= nil or opts.proxyTimeout ~= nil then
    error("listen: proxyFrom and proxyTimeout need proxy = true", 2)
  end
  if opts.proxyTimeout ~= nil and not (opts.proxyTimeout > 0 and opts.proxyTimeout <= 3600) then
    error("listen: proxyTimeout must be a number of seconds in (0, 3600]", 2)
  end
  local proxyFrom
  if opts.proxyFrom then proxyFrom = table.move(opts.proxyFrom, 1, #opts.proxyFrom, 1, {}) end
  local l = rawget(self, "listening")
  l[#l + 1] = { port = port, host = host, path = path, tls = opts.tls or nil,
    insecureAuth = opts.insecureAuth or nil, lmtp = opts.lmtp or nil, proxy = opts.proxy or nil,
    proxyFrom = proxyFrom,
    proxyTimeout = opts.proxyTimeout and math.max(1, math.floor(opts.proxyTimeout * 1000 + 0.5)) }
  return self
end

-- the Server class and smtp.createServer (I.kinds read when the server is
-- made); I.server and I.bridge out, once made
local function install_server(I)
  local core, platform, smtp, set_limit = I.core, I.platform, I.smtp, I.set_limit
  local server

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
      set_limit(k, v)
    end,
  }

  Server.listen = listen

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
    local bridge = core.bridge(I.kinds)
    local s = setmetatable({}, ServerMeta)
    rawset(s, "_opts", {})
    rawset(s, "listening", {})
    Emitter.init(s, SERVER_EVENTS, function(self)
      bridge:watch(self:has_listeners("connection"))
    end)
    server = s
    I.server, I.bridge = s, bridge
    if fn then s:on("connection", fn) end
    return s
  end

end

-- the 'start' listeners and smtp._policy()
local function install_policy(I)
  local core, smtp, log, spawn = I.core, I.smtp, I.log, I.spawn

  -- Runs the server's 'start' listeners, once: luasmtpd calls it in each
  -- worker as its event loop starts, smtp.testing when it loaded the script.
  -- Each runs in a task of its own (it may sleep, or loop with smtp.sleep,
  -- without holding the others up), logged without a session id; an error
  -- is logged and serving goes on.
  local started = false
  local function start()
    local server = I.server
    if started or not server then return end
    started = true
    local pool = rawget(server, "_opts").forwardPool
    if pool then I.forward_pool(pool) end
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

  -- What the host (lua_host.c) and the harness read after the script ran;
  -- a {tls = true} listener without server.tls fails here, for both.
  function smtp._policy()
    I.loaded = true
    local server = I.server
    if not server then return nil, "the script did not call smtp.createServer" end
    local sok, serr = smtp.store._ready(rawget(server, "_opts").stateDir)
    if not sok then return nil, serr end
    for _, l in ipairs(rawget(server, "listening")) do
      if l.tls and not rawget(server, "_opts").tls then
        return nil, core.TLS_NEEDS_CERT:format(l.port)
      end
    end
    return {
      bridge = I.bridge,
      server = server,
      config = server:_config(),
      listening = rawget(server, "listening"),
      start = start,
    }
  end
end

-- install(I): I.core, I.platform, I.smtp, I.log and the tasks in; I.server
-- and I.bridge out, once the script made the server
function M.install(I)
  network_ok = I.core.network_ok
  options.network_ok = network_ok	-- xclientFrom's check; the same C function for all
  install_server(I)
  install_policy(I)
end

return M
