-- smtp.instance -- the smtp API (require "smtp") bound to one platform.
--
-- Owns new(): one instance, a context table that the library's parts
-- install their functions into, in an order that lets each take what it
-- calls as upvalues once (nothing is looked up per event), and the small
-- API that belongs to none of them (smtp.log, smtp.now, smtp.fs).  The
-- parts: smtp.tasks (coroutines, budgets, timers), smtp.ask (listeners to
-- verdicts), smtp.message, smtp.connection, smtp.dispatch (what the C
-- bridge calls), smtp.server (options, listen, 'start', _policy).
-- A platform supplies time and timers: libevent in the server
-- (lua_host.c), a virtual clock in smtp.testing (and smtp.check, while it
-- checks a script, timers that never fire and handler_failed).  Each call
-- of new() is a fresh instance: the harness loads every policy into its own.

local PARTS = { "smtp.tasks", "smtp.ask", "smtp.message", "smtp.connection",
  "smtp.forward", "smtp.dispatch", "smtp.server" }

local M = {}

function M.new(platform)
  platform = platform or {}
  local core = platform.core or require "smtp_core"
  local smtp = { _VERSION = "luasmtpd smtp 0.1" }

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

  -- FAIL_TEXT is the engine's one text for a failed handler (smtp_core)
  local I = { core = core, platform = platform, smtp = smtp, log = log,
    FAIL_CODE = 451, FAIL_TEXT = core.POLICY_ERROR, loaded = false, server = false }
  for _, name in ipairs(PARTS) do require(name).install(I) end
  local current_task = I.current_task

  -- smtp.now() -> seconds (the virtual clock under smtp.testing)
  function smtp.now()
    return platform.now and platform.now() or os.time()
  end

  -- smtp.log(level, fmt, ...): level is "error", "warn", "info" or "debug"
  function smtp.log(level, fmt, ...)
    local task = current_task()
    log(level, task and task.conn and task.conn.id or nil, fmt, ...)
  end

  -- smtp.store.open(name[, opts]): shared state (smtp.store)
  smtp.store = require("smtp.store").new(platform, core, I)

  -- smtp.tcp.connect(host, port[, opts]): sockets for handlers (smtp.tcp)
  smtp.tcp = require("smtp.tcp").new(platform, I)
  -- smtp.all{f, ...}: functions that wait, run concurrently (smtp.all)
  smtp.all = require("smtp.all").new(I)
  -- smtp.dns.query, .mx, .ptr; smtp.dnsbl; connection.hostname (smtp.dns)
  smtp.dns = require("smtp.dns").new(I)
  -- smtp.http.request{...}, smtp.http.stream{...}: HTTP from handlers (smtp.http)
  smtp.http = require("smtp.http").new(platform, I)

  -- smtp.fs: what durable delivery needs and plain Lua lacks
  smtp.fs = {
    fsync = core.fsync,	-- fsync(path) -> true | nil, err (a file or a directory)
    mkdir = core.mkdir,	-- mkdir(path[, mode]) -> true | nil, err (existing is fine)
  }

  return smtp
end

return M
