-- bench/store-incr.lua -- db:incr on smtp.store's LMDB backend, one process,
-- through the API a handler calls (lua/smtp/store.lua over smtp_store).
-- Usage (from the source tree): LUASMTPD_BUILD=build lua5.4 bench/store-incr.lua [N] [sync]
--   N     increments (default 300000; 1000 with sync)
--   sync  LMDB's default (each commit waits for the disk); without it the
--         store is opened with sync = false (MDB_NOSYNC, flushed every second)
-- Prints ops/s (wall clock).  The file lives in a fresh temp directory.
local build = os.getenv("LUASMTPD_BUILD") or "build"
package.cpath = build .. "/?.so;" .. package.cpath
package.path = "lua/?.lua;" .. package.path
local sync = arg[2] == "sync"
local n = tonumber(arg[1]) or (sync and 1000 or 300000)
local dir = os.tmpname()
os.remove(dir)
local api = require("smtp.store").new({ store_mode = "serve", state_dir = dir,
  now = function() return 1700000000 end }, require "smtp_core")
local db = api.open("bench", { sync = sync })
assert(api._ready())
local function wall()
  local p = io.popen("date +%s.%N") ; local t = tonumber(p:read("l")) ; p:close()
  return t
end
local t0 = wall()
for _ = 1, n do db:incr("counter", 1, 3600) end
local dt = wall() - t0
assert(db:get("counter") == n)
db.backend:close()
os.execute("rm -rf '" .. dir .. "'")
print(("incr x %d (%s): %.3f s, %.0f ops/s"):format(n, sync and "sync" or "sync = false", dt, n / dt))
