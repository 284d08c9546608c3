-- smtp.store: the same semantics from the in-memory backend (smtp.testing,
-- on the virtual clock) and the LMDB one (smtp_store, files in a temp dir);
-- LMDB shared by two processes loses no update; the Redis backend's options,
-- commands and answers (a stand-in client; spec/e2e/redis_spec.lua has the
-- real one).
local support = require "spec.engine.support"
local store = require "smtp.store"
local core = require "smtp_core"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(core.mkdir(p, tonumber("700", 8)))
  return p
end

local function rm_rf(p) os.execute("rm -rf '" .. p .. "'") end

local function exists(p) return os.rename(p, p) ~= nil end

-- A store api on a manual clock: mode "memory" or "serve" (LMDB in dir).
local function make(mode, dir)
  local clock = { t = 1700000000, timers = {} }
  local api = store.new({
    store_mode = mode, state_dir = dir,
    now = function() return clock.t end,
    timer = function(s, fn) clock.timers[#clock.timers + 1] = { s, fn } end,
  }, core)
  return api, clock
end

for _, mode in ipairs { "memory", "serve" } do
  describe("smtp.store (" .. (mode == "serve" and "LMDB" or "memory") .. ")", function()
    local api, clock, dir, db
    before_each(function()
      dir = mode == "serve" and tmpdir() or nil
      api, clock = make(mode, dir)
      db = api.open("s1")
      assert(api._ready())
    end)
    after_each(function() if dir then rm_rf(dir) end end)

    it("gets what was set: strings, integers and floats round-trip exactly", function()
      assert.is_nil(db:get("k"))
      db:set("k", "a\0b")
      assert.equal("a\0b", db:get("k"))
      db:set("i", 42)
      assert.equal(42, db:get("i"))
      assert.equal("integer", math.type(db:get("i")))
      db:set("f", 0.1)
      assert.equal(0.1, db:get("f"))
      assert.equal("float", math.type(db:get("f")))
      db:set("big", math.maxinteger)
      assert.equal(math.maxinteger, db:get("big"))
      assert.is_true(db:delete("k"))
      assert.is_false(db:delete("k"))
      assert.is_nil(db:get("k"))
    end)

    it("add only when absent or expired", function()
      assert.is_true(db:add("a", "x", 10))
      assert.is_false(db:add("a", "y"))
      assert.equal("x", db:get("a"))
      clock.t = clock.t + 10
      assert.is_true(db:add("a", "z"))
      assert.equal("z", db:get("a"))
    end)

    it("hides an expired key at once; ttl says what is left", function()
      db:set("t", "v", 60)
      assert.equal(60, db:ttl("t"))
      clock.t = clock.t + 59.5
      assert.equal("v", db:get("t"))
      assert.near(0.5, db:ttl("t"), 0.01)
      clock.t = clock.t + 0.5
      assert.is_nil(db:get("t"))
      assert.is_nil(db:ttl("t"))
      db:set("p", "v")
      assert.equal(math.huge, db:ttl("p"))
      db:set("p", "w", 5)	-- set replaces the expiry too
      assert.equal(5, db:ttl("p"))
    end)

    it("incr counts from by, keeps the ttl of an existing key, refuses a string", function()
      assert.equal(1, db:incr("c", 1, 60))
      clock.t = clock.t + 30
      assert.equal(6, db:incr("c", 5, 600))
      assert.equal(30, db:ttl("c"))
      assert.equal(7, db:incr("c"))
      assert.equal(7.5, db:incr("c", 0.5))
      clock.t = clock.t + 30
      assert.equal(2, db:incr("c", 2))	-- expired: starts over, no ttl
      assert.equal(math.huge, db:ttl("c"))
      db:set("s", "text")
      assert.has_error(function() db:incr("s", 1) end, "store s1: incr of a value that is not a number")
    end)

    it("refuses bad keys, values and ttls with an error naming the store", function()
      local function err(fn)
        local ok, e = pcall(fn)
        assert.is_false(ok)
        assert.matches("store s1: ", e)
        return e
      end
      assert.matches("1 to 511 octets", err(function() db:set(("k"):rep(512), 1) end))
      assert.matches("1 to 511 octets", err(function() db:get("") end))
      assert.matches("a key is a string", err(function() db:get(7) end))
      assert.matches("at most 65536 octets", err(function() db:set("k", ("v"):rep(65537)) end))
      assert.matches("a string or a number", err(function() db:set("k", {}) end))
      assert.matches("a ttl is a number", err(function() db:set("k", 1, 0) end))
      assert.matches("a ttl is a number", err(function() db:set("k", 1, "3") end))
      assert.matches("cannot be NaN", err(function() db:set("k", 0/0) end))
      -- the error points at the caller's line, not into smtp.store
      assert.matches("^[^:]*store_spec%.lua:%d+: store s1: a key", err(function() db:get(7) end))
      assert.matches("^[^:]*store_spec%.lua:%d+: store s1: a ttl", err(function() db:set("k", 1, -1) end))
      db:set(("k"):rep(511), ("v"):rep(65536))	-- the bounds themselves are fine
      assert.equal(65536, #db:get(("k"):rep(511)))
    end)

    it("a full store is an error naming it; what was there stays readable", function()
      local small = api.open("small", { maxSize = 65536 })
      small:set("first", "kept")
      local ok, e
      for i = 1, 64 do
        ok, e = pcall(small.set, small, "k" .. i, ("x"):rep(8000))
        if not ok then break end
      end
      assert.is_false(ok)
      assert.matches("store small: full %(maxSize is 65536 octets%)", e)
      assert.equal("kept", small:get("first"))
      assert.is_true(small:delete("k1"))
    end)

    it("sweeps expired keys a bounded number at a time", function()
      for i = 1, 10 do db:set(("e%02d"):format(i), i, 1) end
      db:set("live", 1)
      local b = db.backend
      assert.equal(0, b:sweep(clock.t, 100))
      clock.t = clock.t + 2
      -- 3 keys looked at: all expired, or 2 and "live" (the memory backend
      -- walks its table in hash order)
      local first = b:sweep(clock.t, 3)
      assert.is_true(first == 3 or first == 2, "removed " .. first)
      local total = first
      for _ = 1, 10 do total = total + b:sweep(clock.t, 3) end
      assert.equal(10, total)
      assert.equal(1, db:get("live"))
    end)

    it("refuses bad names and options", function()
      assert.has_error(function() api.open("../x") end)
      assert.has_error(function() api.open("s1") end, "store.open: store s1 is already open")
      assert.has_error(function() api.open("x", { maxSize = 10 }) end)
      assert.has_error(function() api.open("x", { size = 1 }) end, "store.open: unknown option size")
    end)
  end)
end

describe("smtp.store with LMDB", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rm_rf(dir) end)

  it("keeps what was written for the next opener (a restart)", function()
    local a = make("serve", dir)
    local db = a.open("keep")
    assert(a._ready())
    db:set("k", "v")
    db:incr("n", 3)
    db.backend:close()
    local b = make("serve", dir)
    local db2 = b.open("keep")
    assert(b._ready())
    assert.equal("v", db2:get("k"))
    assert.equal(3, db2:get("n"))
    assert.is_true(exists(dir .. "/keep.mdb"))
  end)

  it("sync = false: commits do not wait for the disk, the sweep timer flushes", function()
    local a, clock = make("serve", dir)
    local db = a.open("fast", { sync = false })
    assert(a._ready())
    for _ = 1, 1000 do db:incr("n") end
    clock.timers[1][2]()	-- a tick: sweeps, flushes, re-arms
    assert.equal(2, #clock.timers)
    assert.equal(1000, db:get("n"))
    assert.has_error(function() a.open("bad", { sync = "yes" }) end, "store.open: sync is a boolean")
  end)

  it("arms one sweep timer per process when serving", function()
    local a, clock = make("serve", dir)
    a.open("one") ; a.open("two")
    assert(a._ready())
    assert.equal(1, #clock.timers)
  end)

  it("a checking load opens the file, closes it, and writes nothing there", function()
    local c = make("check", dir .. "/sub/state")
    local db = c.open("chk")
    assert(c._ready())
    assert.is_true(exists(dir .. "/sub/state/chk.mdb"))
    db:set("simulated", 1)	-- the check's simulated client
    local s = make("serve", dir .. "/sub/state")
    local db2 = s.open("chk")
    assert(s._ready())
    assert.is_nil(db2:get("simulated"))
  end)

  it("an unusable state directory fails the load with a clear error", function()
    local f = io.open(dir .. "/file", "w") ; f:close()
    local a = make("serve", dir .. "/file/state")
    a.open("x")
    local ok, err = a._ready()
    assert.is_nil(ok)
    assert.matches("store x: state directory .*/file/state", err)
  end)

  it("two processes incrementing one key lose no update", function()
    local n = 20000
    local build = os.getenv("LUASMTPD_BUILD") or "build"
    local prog = ([[package.cpath = %q .. "/?.so;" .. package.cpath
      local s = require("smtp_store").open(%q, 1 << 24, "race", true)
      for _ = 1, %d do s:incr("n", 1, nil, os.time()) end]]):format(build, dir .. "/race.mdb", n)
    local f = io.open(dir .. "/race.lua", "w") ; f:write(prog) ; f:close()
    local cmd = ("cd %q && (timeout 120 lua5.4 race.lua & timeout 120 lua5.4 race.lua & wait)"):format(dir)
    assert.is_true(os.execute(cmd))
    local s = require("smtp_store").open(dir .. "/race.mdb", 1 << 24, "race")
    assert.equal(2 * n, s:get("n", os.time()))
    s:close()
  end)

  it("on tmpfs reserves maxSize at open (writes go through the map); the data survives a reopen", function()
    local p = io.popen("stat -f -c %T /dev/shm 2>/dev/null")
    local fs = p:read("l")
    p:close()
    if fs ~= "tmpfs" then pending("no tmpfs at /dev/shm") return end
    local shm = io.popen("mktemp -d /dev/shm/store_spec.XXXXXX"):read("l")
    local path = shm .. "/w.mdb"
    local ok, err = pcall(function()
      local s = require("smtp_store").open(path, 1 << 20, "w")
      s:set("k", "v", nil, os.time(), false)
      s:close()
      local f = assert(io.open(path, "rb"))
      local size = f:seek("end")
      f:close()
      assert.equal(1 << 20, size)	-- the whole map, reserved
      p = io.popen("du -k " .. path)
      local kib = tonumber(p:read("l"):match("^(%d+)"))
      p:close()
      assert.is_true(kib >= 1024, kib .. " KiB allocated")
      s = require("smtp_store").open(path, 1 << 20, "w")
      assert.equal("v", s:get("k", os.time()))
      s:close()
    end)
    rm_rf(shm)
    assert(ok, err)
  end)
end)

describe("smtp.store under smtp.testing", function()
  it("follows the virtual clock, leaves no files, and a store error is a 451", function()
    local had_state = exists("state")
    local h = support.policy([[
      local db = smtp.store.open("grey")
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if r.localPart == "big" then db:set("k", ("x"):rep(70000)) end
          if db:add(r.address, 1, 300) then r.valid = false ; r.code = 450 end
        end)
      end)
    ]])
    local s = support.helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(450)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    h.clock:advance(299)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    h.clock:advance(1)
    s:send("RCPT TO:<b@example.org>"):expect(450)
    s:send("RCPT TO:<big@example.org>"):expect(451)
    assert.matches("store grey: a value is at most 65536 octets", h:log())
    assert.equal(had_state, exists("state"))
  end)

  it("refuses to be used while the script loads", function()
    assert.has_error(function()
      support.policy([[
        local db = smtp.store.open("early")
        db:set("k", 1)
        smtp.createServer(function() end)
      ]])
    end)
  end)
end)

describe("smtp.store with opts.redis", function()
  local function api_with(mode, client_calls)
    local current = nil
    local I = {
      current_task = function() return current end,
      resume = function(task, _, ...)
        local ok, err = coroutine.resume(task.co, ...)
        if not ok then task.err = err end
      end,
    }
    local platform = {
      store_mode = mode, now = function() return 1700000000 end,
      timer = function() end,
      redis = function(host, port, timeout, password, db)
        client_calls.opened = { host, port, timeout, password, db }
        return {
          call = function(_, fn, ctx, gen, ...)
            client_calls[#client_calls + 1] = table.concat({ ... }, " ")
            local answer = client_calls.answer
            if answer == "down" then return nil, "redis 127.0.0.1:6379: Connection refused" end
            if type(answer) == "function" then answer = answer(...) end
            client_calls.pending = function() fn(ctx, gen, table.unpack(answer)) end
            return true
          end,
        }
      end,
    }
    -- runs fn() as a handler would: in a task that waits for the answer
    local function run(fn)
      local results
      local task = { gen = 1 }
      task.co = coroutine.create(function() results = table.pack(fn()) end)
      current = task
      local ok, err = coroutine.resume(task.co)
      while ok and client_calls.pending and not err do
        local p = client_calls.pending
        client_calls.pending = nil
        p()
        err = task.err
      end
      current = nil
      err = err or task.err
      if not ok or err then error(err, 0) end
      return table.unpack(results, 1, results.n)
    end
    return store.new(platform, core, I), run
  end

  it("refuses bad options with a clear error", function()
    local api = api_with("memory", {})
    assert.has_error(function() api.open("r", { redis = 6379 }) end,
      'store.open: redis is "host:port" (a string)')
    assert.has_error(function() api.open("r", { redis = "host:99999" }) end,
      'store.open: redis is "host:port" (got "host:99999")')
    assert.has_error(function() api.open("r", { redis = "h:1", db = -1 }) end,
      "store.open: db is an integer >= 0 (a Redis database number)")
    assert.has_error(function() api.open("r", { redis = "h:1", timeout = 0 }) end,
      "store.open: timeout is a number of seconds > 0 (at most 3600)")
    assert.has_error(function() api.open("r", { redis = "h:1", password = 1 }) end,
      "store.open: password is a string")
    assert.has_error(function() api.open("r", { redis = "h:1", maxSize = 1 << 20 }) end,
      "store.open: maxSize is an option of the LMDB backend, not of Redis")
    assert.has_error(function() api.open("r", { password = "x" }) end,
      "store.open: password goes with opts.redis")
  end)

  it("a checking load never connects and creates no state directory", function()
    local calls = {}
    local dir = os.tmpname() ; os.remove(dir)
    local api = api_with("check", calls)
    local db = api.open("r", { redis = "127.0.0.1:1" })
    assert(api._ready(dir))
    assert.is_nil(calls.opened)
    assert.is_false(exists(dir))
    assert.is_true(db:add("k", 1))	-- the simulated client: in memory
    assert.is_false(db:add("k", 1))
  end)

  it("sends one command per call, waits for it, and answers nil, err when Redis cannot", function()
    local calls = {}
    local api, run = api_with("serve", calls)
    local db = api.open("lim", { redis = "[::1]:6380", password = "pw", db = 2, timeout = 0.5 })
    assert(api._ready())
    assert.same({ "::1", 6380, 0.5, "pw", 2 }, calls.opened)
    calls.answer = { true, "OK" }
    assert.is_true(run(function() return db:set("k", "v", 1.5) end))
    assert.equal("SET lim:k s:v PX 1500", calls[1])
    calls.answer = { true, nil }
    assert.is_false(run(function() return db:add("k", 7) end))
    assert.equal("SET lim:k 7 NX", calls[2])
    calls.answer = { true, "2.5" }
    assert.equal(2.5, run(function() return db:get("f") end))
    calls.answer = { true, 3 }
    local n = run(function() return db:incr("c", 1, 60) end)
    assert.equal("integer", math.type(n))
    assert.equal("EVALSHA " .. store._INCR_SHA .. " 1 lim:c 1 i 60000", calls[4])
    calls.answer = { true, -1 }
    assert.equal(math.huge, run(function() return db:ttl("k") end))
    -- no answer: nil, err for the policy to decide
    calls.answer = { false, "redis ::1:6380: timeout (0.5 s)" }
    local v, err = run(function() return db:incr("c") end)
    assert.is_nil(v)
    assert.equal("redis ::1:6380: timeout (0.5 s)", err)
    calls.answer = "down"
    v, err = run(function() return db:get("c") end)
    assert.is_nil(v)
    assert.matches("Connection refused", err)
    -- an error reply of Redis is an error naming the store
    calls.answer = { false, "ERR value is not a valid float", true }
    assert.has_error(function() run(function() return db:incr("s") end) end,
      "store lim: redis: ERR value is not a valid float")
  end)

  it("incr: INCRBY without a ttl, the script by EVALSHA otherwise, EVAL when Redis lacks it", function()
    local calls = {}
    local api, run = api_with("serve", calls)
    local db = api.open("n", { redis = "127.0.0.1:6379" })
    assert(api._ready())
    calls.answer = { true, 5 }
    assert.equal(5, run(function() return db:incr("c", 2) end))
    assert.equal("INCRBY n:c 2", calls[1])
    -- INCRBY refuses a float value: the script does INCRBYFLOAT
    calls.answer = function(cmd)
      if cmd == "INCRBY" then return { false, "ERR value is not an integer or out of range", true } end
      return { true, "3.5" }
    end
    assert.equal(3.5, run(function() return db:incr("f", 2) end))
    assert.equal("INCRBY n:f 2", calls[2])
    assert.equal("EVALSHA " .. store._INCR_SHA .. " 1 n:f 2 i ", calls[3])
    -- a server without the script (new, or restarted): EVAL, which loads it
    calls.answer = function(cmd)
      if cmd == "EVALSHA" then return { false, "NOSCRIPT No matching script.", true } end
      return { true, 1 }
    end
    assert.equal(1, run(function() return db:incr("t", 1, 10) end))
    assert.equal("EVALSHA " .. store._INCR_SHA .. " 1 n:t 1 i 10000", calls[4])
    assert.equal("EVAL " .. store._INCR_SCRIPT .. " 1 n:t 1 i 10000", calls[5])
    assert.equal(5, #calls)
  end)

  it("the script's SHA-1 is INCR_SCRIPT's (else every incr with a ttl costs two round trips)", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(store._INCR_SCRIPT)
    f:close()
    local p = assert(io.popen("sha1sum " .. path))
    local sum = p:read("l"):match("^%x+")
    p:close()
    os.remove(path)
    assert.equal(sum, store._INCR_SHA)
  end)

  it("is refused outside a handler with a clear error", function()
    local api = api_with("serve", { answer = { true, "OK" } })
    local db = api.open("r", { redis = "127.0.0.1:6379" })
    assert(api._ready())
    assert.has_error(function() db:get("k") end,
      "store r: a Redis store waits for Redis, so it is used from handlers and 'start' listeners only")
  end)

  it("is in memory under smtp.testing, on the virtual clock", function()
    local h = support.policy([[
      local db = smtp.store.open("rl", { redis = "127.0.0.1:1" })
      smtp.createServer(function(c)
        c:on("RCPT", function(r)
          if db:incr("n", 1, 60) > 2 then r.valid = false ; r.code = 452 end
        end)
      end)
    ]])
    local s = support.helo(h)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(452)
    h.clock:advance(60)
    s:send("RCPT TO:<b@example.org>"):expect(250)
  end)
end)
