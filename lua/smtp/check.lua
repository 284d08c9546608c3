-- smtp.check -- what a script must pass, after it ran, before luasmtpd serves it.
--
-- luasmtpd loads a script in its master process to check it (--check, the
-- start, every reload on SIGHUP: lua_host.c with no event loop) and then
-- calls check(policy, script) with what smtp._policy() returned:
--
--  * server.authMethods needs a way to be offered: server.tls (AUTH after
--    STARTTLS, or on a {tls = true} listener) or a listener with
--    {insecureAuth = true}.  Without either AUTH could never be offered.
--  * The 'connection' listeners run once, on the real engine, for a
--    simulated client (smtp_core.session: the in-memory transport of
--    smtp.testing, no socket), so that an error in them (an unknown event
--    name in connection:on, a typo) fails here, with its file and line,
--    instead of answering every client 421.  Only they run: no command is
--    sent, so no other handler runs; timers they start never fire (a
--    listener that waits is checked up to its wait, and so do smtp.http's
--    requests); the session is never
--    closed, so no 'close' listener runs (it goes with the Lua state).  What
--    they do themselves (open a file, a socket) happens, in the master.
local core = require "smtp_core"

-- The simulated client: TEST-NET-1 (RFC 5737), on the script's first port.
local PEER = { remoteAddress = "192.0.2.1", remotePort = 49152, localAddress = "127.0.0.1" }

local function inert_timer()
  return { cancel = function() end }
end

-- smtp.http while checking: a request that never answers, a body that takes all
local function inert_http()
  return { cancel = function() end }
end
local function inert_body()
  return { write = function() return true end, size = function() return 0 end }
end

local function check_auth(policy, script)
  local cfg = policy.config
  if (cfg.auth_methods or 0) == 0 or cfg.tls_cert then return true end
  for _, l in ipairs(policy.listening) do
    if l.insecureAuth then return true end
  end
  return nil, script .. ": server.authMethods is set but AUTH could never be offered: it needs "
    .. "server.tls (AUTH after STARTTLS) or a listener with {insecureAuth = true}"
end

-- The first line of a failure: the error without its traceback.
local function first_line(err)
  err = tostring(err)
  return err:match("^(.-)\nstack traceback:") or err
end

local function check_connection(policy, script)
  local platform = package.loaded["smtp.platform"]
  if type(platform) ~= "table" then return true end	-- not luasmtpd's instance
  local failure
  local saved_timer, saved_failed = platform.timer, platform.handler_failed
  local saved_http, saved_body = platform.http, platform.http_body
  platform.timer, platform.http, platform.http_body = inert_timer, inert_http, inert_body
  platform.handler_failed = function(name, err)
    if name == "CONNECT" and not failure then failure = err end
  end
  local first = policy.listening[1]
  local peer = { localPort = first and first.port ~= 0 and first.port or 25 }
  for k, v in pairs(PEER) do peer[k] = v end
  -- no summary lines for it: it is no client
  local config = setmetatable({ no_summary = true }, { __index = policy.config })
  local ok, err = pcall(core.session, policy.bridge, config, peer)
  platform.timer, platform.handler_failed = saved_timer, saved_failed
  platform.http, platform.http_body = saved_http, saved_body
  if not ok then return nil, "the check of the 'connection' listener failed: " .. tostring(err) end
  if failure then
    local msg = first_line(failure)
    if not msg:find("^[^\n]-:%d+: ") then msg = script .. ": " .. msg end	-- no file:line of its own
    return nil, msg .. " (in a 'connection' listener, run once for a simulated client)"
  end
  return true
end

-- check(policy, script) -> true | nil, message
return function(policy, script)
  local ok, err = check_auth(policy, script)
  if not ok then return nil, err end
  return check_connection(policy, script)
end
