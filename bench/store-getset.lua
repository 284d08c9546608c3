-- bench/store-getset.lua -- the store=lmdb row's store work without SMTP: a
-- greylist's db:get and db:set of one triplet, N times, on smtp.store's LMDB
-- backend with its default sync, through the API a handler calls.  Prints
-- the process's CPU time (user + system, os.clock) per pair: callgrind sees
-- only the user part, and a commit's msync/pwrite/fdatasync is most of it.
-- Usage (from the source tree): LUASMTPD_BUILD=build-bench lua5.4 bench/store-getset.lua [N] [DIR]
--   N    pairs (default 200000)
--   DIR  where the temp state directory goes (default /dev/shm, as run.sh's row)
local build = os.getenv("LUASMTPD_BUILD") or "build"
package.cpath = build .. "/?.so;" .. package.cpath
package.path = "lua/?.lua;" .. package.path
local n = tonumber(arg[1]) or 200000
local store, core = require "smtp.store", require "smtp_core"	-- before the temp dir
local p = io.popen("mktemp -d " .. (arg[2] or "/dev/shm") .. "/store-getset.XXXXXX")
local dir = p:read("l")
p:close()
local api = store.new({ store_mode = "serve", state_dir = dir,
  now = function() return 1700000000 end }, core)
local db = api.open("bench")
assert(api._ready())
local key = ("t:%s\0%s\0%s"):format("127.0.0.1", "sender@example.com", "rcpt@example.com")
local t0 = os.clock()
for _ = 1, n do
  local seen = db:get(key)
  db:set(key, seen and "passed" or 1700000000, 3600)
end
local dt = os.clock() - t0
db.backend:close()
os.execute("rm -rf '" .. dir .. "'")
print(("get+set x %d: %.2f CPU us per pair (user + system)"):format(n, dt / n * 1e6))
