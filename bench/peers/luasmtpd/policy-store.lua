-- bench/peers/luasmtpd/policy-store.lua -- the benchmark policy (policy.lua)
-- plus smtp.store work, for the "luasmtpd store=..." rows of S1:
--   BENCH_STORE=lmdb   one db:get and one db:set per recipient on the LMDB
--                      store (a greylist's lookup and update of its triplet;
--                      bench.py gives a fresh --state-dir)
--   BENCH_STORE=redis  one db:incr per message on Redis at $BENCH_REDIS
--                      (host:port; bench.py starts a private redis-server)
-- A store error refuses the recipient or message with 451, so the load
-- generator reports it instead of a figure.
local smtp = require "smtp"

local backend = os.getenv("BENCH_STORE") or "lmdb"
local db
if backend == "redis" then
  db = smtp.store.open("bench", { redis = assert(os.getenv("BENCH_REDIS"), "BENCH_REDIS unset") })
else
  assert(backend == "lmdb", "BENCH_STORE: lmdb or redis")
  db = smtp.store.open("bench")
end

local server = smtp.createServer(function(conn)
  local function helo(h) end
  conn:on("HELO", helo)
  conn:on("EHLO", helo)
  conn:on("MAIL", function(sender) end)
  conn:on("RCPT", function(rcpt)
    if rcpt.address:find("invalid", 1, true) then rcpt.valid = false return end
    if backend == "lmdb" then
      local key = ("t:%s\0%s\0%s"):format(conn.remoteAddress, conn.sender.address:lower(),
        rcpt.address:lower())
      local seen, err = db:get(key)
      if err then rcpt.valid, rcpt.code, rcpt.message = false, 451, "4.3.0 " .. err return end
      db:set(key, seen and "passed" or smtp.now(), 3600)
    end
  end)
  conn:on("DATA", function(message)
    message:on("data", function(chunk) end)
    message:on("end", function()
      if backend == "redis" then
        local n, err = db:incr("messages", 1)
        if not n then message:reject(451, "4.3.0 " .. tostring(err)) return end
      end
      message:accept()
    end)
  end)
end)
-- no connection limits, as every peer here (Postfix's are set to 0): S5 holds
-- 2,000 connections from 127.0.0.1, and a load must not meet a 421
server.maxConnections = 0
server.maxConnectionsPerClient = 0
