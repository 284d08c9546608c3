-- smtp.options -- the server options a script sets (server.maxSize = ...).
--
-- Owns OPTIONS: for each option name, check(v) -> ok, expected (what a
-- wrong value is told it should be) and to(cfg, v, core), which writes it
-- into the engine config (snake_case, read by lcore_config in C).  The
-- handler budgets (handlerBudget, ...) write nothing: smtp.tasks keeps them.
-- No state: shared by every instance.

local M = {}


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
  chunking = ext("CHUNKING"),		-- BDAT (RFC 3030)
  binaryMime = ext("BINARYMIME"),	-- BODY=BINARYMIME, with chunking (RFC 3030)
  dsn = ext("DSN"),			-- RET, ENVID, NOTIFY, ORCPT (RFC 3461)
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
  -- peers that may send XCLIENT (Postfix): an array of networks, offered in EHLO to them only
  xclientFrom = {
    check = function(v)
      local what = 'an array of at most 16 networks ("10.0.0.0/8", "::1")'
      if type(v) ~= "table" or #v > 16 then return false, what end
      for k, n in pairs(v) do
        if not is_int(k) or type(n) ~= "string" or not (M.network_ok or function() return true end)(n) then
          return false, what
        end
      end
      return true
    end,
    to = function(cfg, v) cfg.xclient_from = table.move(v, 1, #v, 1, {}) end,
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
  -- the Received field the engine prepends to the data (RFC 5321 4.4)
  receivedHeader = {
    check = function(v) return type(v) == "boolean", "a boolean" end,
    to = function(cfg, v) cfg.received_header = v end,
  },
  -- Received fields a message may arrive with (RFC 5321 6.3); more: 554 5.4.6
  maxHops = {
    check = function(v) return is_int(v) and v >= 0 and v <= 10000, "an integer in [0, 10000] (0: no limit)" end,
    to = function(cfg, v) cfg.max_hops = v end,
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
  -- into Lua may block it before it is replaced (lua_run.c, lua_host.c)
  memoryLimit = int("memory_limit", 8388608, "an integer >= 8388608 (bytes)"),
  -- live connections counted across every worker (connlimit.c); 0: no limit
  maxConnections = {
    check = function(v) return is_int(v) and v >= 0 and v <= 1000000, "an integer in [0, 1000000] (0: no limit)" end,
    to = function(cfg, v) cfg.max_connections = v end,
  },
  maxConnectionsPerClient = {
    check = function(v) return is_int(v) and v >= 0 and v <= 1000000,
      "an integer in [0, 1000000] (per IPv4 address, per /64 for IPv6; 0: no limit)" end,
    to = function(cfg, v) cfg.max_connections_per_client = v end,
  },
  -- smtp.tcp sockets open at once in a worker (lua/smtp/tcp.lua)
  maxSockets = {
    check = function(v) return is_int(v) and v >= 1 and v <= 65536, "an integer in [1, 65536]" end,
    to = function() end,
  },
  -- next-hop connections kept per worker between messages (lua/smtp/forward.lua)
  forwardPool = {
    check = function(v)
      local why = "a table {idle = seconds in [0, 3600], maxMessages = integer >= 1, maxPerTarget = integer >= 1}"
      if type(v) ~= "table" then return false, why end
      for k, x in pairs(v) do
        if k == "idle" then
          if type(x) ~= "number" or x < 0 or x > 3600 then return false, why end
        elseif k == "maxMessages" or k == "maxPerTarget" then
          if not is_int(x) or x < 1 or x > 1000000 then return false, why end
        else
          return false, why
        end
      end
      return true
    end,
    to = function() end,
  },
  -- smtp.dns (read by smtp.dns): the servers (default: /etc/resolv.conf's),
  -- seconds per attempt, attempts after the first, cached answers per worker
  resolvers = {
    check = function(v)
      local what = 'an array of "address" or "address:port" strings ("[v6]:port" for IPv6)'
      if type(v) ~= "table" or #v == 0 then return false, what end
      for k, s in pairs(v) do
        if not is_int(k) or type(s) ~= "string" then return false, what end
        local port = s:match("^%d+%.%d+%.%d+%.%d+:(%d+)$") or s:match("^%[[%x:.]+%]:(%d+)$")
        local ok = s:match("^%d+%.%d+%.%d+%.%d+$") or port or s:match("^[%x:.]*:[%x:.]*$")
        if port and (tonumber(port) < 1 or tonumber(port) > 65535) then ok = false end
        if not ok then return false, what .. " (got " .. string.format("%q", s) .. ")" end
      end
      return true
    end,
    to = function() end,
  },
  dnsTimeout = {
    check = function(v) return type(v) == "number" and v >= 0.01 and v <= 60, "a number of seconds in [0.01, 60]" end,
    to = function() end,
  },
  dnsRetries = {
    check = function(v) return is_int(v) and v >= 0 and v <= 10, "an integer in [0, 10]" end,
    to = function() end,
  },
  dnsCacheSize = {
    check = function(v) return is_int(v) and v >= 0 and v <= 1000000, "an integer in [0, 1000000] (0: no cache)" end,
    to = function() end,
  },
  blockedLimit = {
    check = function(v) return type(v) == "number" and v >= 1 and v <= 3600, "a number of seconds in [1, 3600]" end,
    to = function(cfg, v) cfg.blocked_limit_ms = math.floor(v * 1000 + 0.5) end,
  },
}

M.OPTIONS, M.is_int = OPTIONS, is_int
return M
