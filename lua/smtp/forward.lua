-- smtp.forward -- message:forward(target) and connection:proxy(target):
-- the message handed to a next hop (SMTP or LMTP) while the client sends
-- it, the client told the next hop's reply (docs/API.md, "Forwarding").
--
-- Owns the target's checks, one forwarding transaction per message (its
-- steps on the platform's next hop: lua_nexthop.c in luasmtpd, the fake of
-- smtp.testing.nexthop in specs), the verdicts it gives (MAIL and RCPT
-- under proxy, DATA's 354, the final dot's reply) and its end: released
-- into the pool after a reply, dropped when the policy or the engine ends
-- the message first (the next hop never sees a final dot then).  The
-- message data goes to the next hop in C (handle:sink) without Lua, or
-- through nh:write where the platform has no C stream (the harness).

local Ask = require "smtp.ask"
local WAIT, UNDECIDED, verdict_of = Ask.WAIT, Ask.UNDECIDED, Ask.verdict_of

local M = {}

local DEFAULT_PORT = { smtp = 25, lmtp = 24 }
local TLS_MODES = { none = true, opportunistic = true, require = true }
local FIELDS = { host = "string", port = "number", protocol = "string", tls = "string",
  helo = "string", timeout = "number", auth = "table", authWithoutTls = "boolean",
  cafile = "string", servername = "string", verify = "boolean" }
local DEFAULT_TIMEOUT = 60	-- seconds per step
local NONE = {}

-- the target as the platform takes it, and a name for logs
local function check_target(t, hostname, what)
  if type(t) ~= "table" then error(what .. ": a target table expected", 3) end
  for k, v in pairs(t) do
    local want = FIELDS[k]
    if not want then error(("%s: unknown target field %q"):format(what, tostring(k)), 3) end
    if type(v) ~= want then error(("%s: target.%s must be a %s"):format(what, k, want), 3) end
  end
  if not t.host or t.host == "" then error(what .. ": target.host expected", 3) end
  local proto = t.protocol or "smtp"
  if not DEFAULT_PORT[proto] then error(what .. ': target.protocol must be "smtp" or "lmtp"', 3) end
  local port = t.port or DEFAULT_PORT[proto]
  if math.type(port) ~= "integer" or port < 1 or port > 65535 then
    error(what .. ": target.port must be an integer in [1, 65535]", 3)
  end
  local tls = t.tls or "opportunistic"
  if not TLS_MODES[tls] then
    error(what .. ': target.tls must be "none", "opportunistic" or "require"', 3)
  end
  local timeout = t.timeout or DEFAULT_TIMEOUT
  if timeout <= 0 or timeout > 3600 then error(what .. ": target.timeout must be in (0, 3600] seconds", 3) end
  local auth = t.auth
  if auth and (type(auth.user) ~= "string" or type(auth.password) ~= "string") then
    error(what .. ": target.auth must be {user = string, password = string}", 3)
  end
  if t.helo and not t.helo:match("^[%w%.%-%[%]:]+$") then error(what .. ": target.helo is not a host name", 3) end
  local name = t.host .. ":" .. port
  return {
    host = t.host, port = port, lmtp = proto == "lmtp", tls = tls,
    helo = t.helo or hostname or "localhost", timeout_ms = math.floor(timeout * 1000),
    user = auth and auth.user, password = auth and auth.password,
    auth_plaintext = t.authWithoutTls or false, cafile = t.cafile, servername = t.servername,
    no_verify = t.verify == false,
    -- connections are pooled per everything that shapes them
    -- (the password too: a connection authenticated with one is not another's)
    key = table.concat({ proto, t.host, port, tls, t.helo or "", auth and auth.user or "",
      auth and auth.password or "", tostring(t.authWithoutTls),
      t.cafile or "", t.servername or "", tostring(t.verify) }, "|"),
  }, name
end

-- a reply of the next hop as a verdict: accept, code, text
local function verdict_of_reply(r, accept_class)
  local code, text = r.code, r.text
  if text == "" then text = nil end
  if r.enhanced ~= "" then text = r.enhanced .. " " .. (text or "") end
  if code == 421 then	-- the next hop closes: the client should not
    code = 451
    if text then text = text:gsub("^4%.%d+%.%d+ ", "") end
    text = "4.4.2 " .. (text or "Next hop closing")
  end
  return math.floor(code / 100) == accept_class, code, text
end

function M.install(I)
  local platform, log, settle, decide_message = I.platform, I.log, I.settle, I.decide_message
  local core = I.core
  local function info_on()
    local level = core.log_level and core.log_level()
    return level == nil or level == "info" or level == "debug"
  end
  local current_task, resume = I.current_task, I.resume

  local Fwd = {}
  Fwd.__index = Fwd

  -- nh:method(args..., fn): the platform's callback comes last (n
  -- arguments before it, at most 4: no table per call)
  local function call(nh, method, fn, n, a, b, c, d)
    if n == 0 then return nh[method](nh, fn)
    elseif n == 1 then return nh[method](nh, a, fn)
    elseif n == 2 then return nh[method](nh, a, b, fn)
    elseif n == 3 then return nh[method](nh, a, b, c, fn) end
    return nh[method](nh, a, b, c, d, fn)
  end

  -- The platform's replies to every step of a transaction come to one
  -- callback made with it (fwd.cb, see new_fwd: no closure per step), which
  -- hands the step's reply (LMTP: all of them, then) to the step in flight:
  -- fwd.k(fwd, r, all), set by step (a task waits) or step_cb (an ask's
  -- finish); what the step needs later is in the fwd's fields.
  local function on_reply(fwd, code, enhanced, text, loc, index, count)
    local r = { code = code, enhanced = enhanced, text = text, ["local"] = loc }
    if loc then fwd.dead = true end
    local all = fwd.all
    if count and count > 1 then
      if not all then all = {} ; fwd.all = all end
      all[index] = r
      if index < count then return end
    end
    local k = fwd.k
    fwd.k, fwd.all = false, false
    if k then return k(fwd, r, all or nil) end
  end

  -- step's continuation: the reply is in, the task resumes
  local function step_done(fwd, r, all)
    local task = fwd.w_task
    fwd.w_done, fwd.w_last, fwd.w_all = true, r, all or false
    if fwd.w_waiting and task.gen == fwd.w_gen and not task.dead and not task.dropped then
      resume(task, nil)
    end
  end

  -- fwd:step(method, ...) -> reply (the last one), replies (LMTP's, all)
  -- from a handler: the task waits; the step's timeout is the platform's
  function Fwd:step(method, ...)
    local task = current_task()
    self.w_task, self.w_gen, self.w_done, self.w_waiting = task, task.gen, false, false
    self.k, self.all = step_done, false
    local owned = task.owned
    if not owned then owned = {} ; task.owned = owned end
    owned[self] = true	-- the session going away ends it
    local ok, err = call(self.nh, method, self.cb, select("#", ...), ...)
    if ok == nil then
      self.k, self.w_task = false, false
      owned[self] = nil
      self.dead = true
      return { code = 451, enhanced = "4.4.2", text = ("Next hop %s: %s"):format(self.name, err or "closed"),
        ["local"] = true }
    end
    self.w_waiting = true
    repeat coroutine.yield() until self.w_done
    self.w_waiting = false
    if task.owned then task.owned[self] = nil end
    local last, all = self.w_last, self.w_all
    self.w_task, self.w_last, self.w_all = false, false, false
    if last["local"] then self.dead = true end
    return last, all or nil
  end

  local ANSWERED = { code = 354, enhanced = "", text = "" }	-- nh:data's true (read only)

  -- a step whose result settles an ask (no task: from an ask's finish):
  -- k(fwd, r, all) gets the reply
  function Fwd:step_cb(method, k, ...)
    self.k, self.all = k, false
    local ok, err = call(self.nh, method, self.cb, select("#", ...), ...)
    if ok == nil then
      self.k = false
      self.dead = true
      return nil, err
    end
    if ok == true then	-- answered already (nh:data)
      self.k = false
      k(self, ANSWERED)
    end
    return true
  end

  -- ends the transaction: back to the pool when it is between steps and
  -- healthy, else closed (mid-data: the next hop never gets the dot)
  function Fwd:close(keep)
    if self.closed then return end
    self.closed = true
    local conn = self.conn
    if self.sink then
      self.sink = false
      local paused = self.nh:close()
      conn._handle:sink(nil)
      if paused then conn._handle:resume() end
    elseif keep and not self.dead and not self.streaming then
      self.nh:release(self.completed)
    else
      self.nh:close()
    end
    if conn._proxy == self then conn._proxy = false end
  end

  -- opens the next hop and sends MAIL FROM for sender: nil | reply refusing.
  -- A pooled connection that the next hop dropped meanwhile fails its first
  -- step locally: once, a new connection is made instead.
  local open_and_mail
  local function retry_fresh(fwd, sender, size, rcpts)
    fwd.nh:close()
    local nh, err = platform.nexthop(fwd.target, true)
    if not nh then
      return { code = 451, enhanced = "4.4.1", text = ("Next hop %s: %s"):format(fwd.name, err), ["local"] = true }
    end
    fwd.nh, fwd.dead = nh, false
    return open_and_mail(fwd, sender, size, rcpts)
  end

  -- rcpts: addresses for an envelope step (MAIL and the RCPTs at once)
  function open_and_mail(fwd, sender, size, rcpts)
    local reused = fwd.nh:reused()
    if not reused then
      local r = fwd:step("open")
      if math.floor(r.code / 100) ~= 2 then
        if r["local"] then return r end
        -- a greeting, EHLO or AUTH refused: the session with the next hop is
        -- ours to fix, never a reason to bounce the client's message
        return { code = 451, enhanced = "4.4.0", ["local"] = true,
          text = ("Next hop %s refused the session: %d %s"):format(fwd.name, r.code, (r.text:gsub("\n", " "))) }
      end
    end
    local p, utf8 = sender.params or NONE, sender.utf8
    local body = p.BODY
    local params = ""
    if body or utf8 then	-- the next hop's extensions matter (a table: only then)
      local ext, list = fwd.nh:ext(), {}
      if body and body:upper() == "BINARYMIME" then
        -- BDAT's binary octets cannot be said with DATA: the client must send text
        return { code = 554, enhanced = "5.6.1", text = "The next hop takes no BINARYMIME" }
      end
      if body and ext["8BITMIME"] then list[#list + 1] = "BODY=" .. body end
      if utf8 then
        if not ext.SMTPUTF8 then
          return { code = 553, enhanced = "5.6.7", text = "The next hop does not take SMTPUTF8 addresses" }
        end
        list[#list + 1] = "SMTPUTF8"
      end
      params = table.concat(list, " ")
    end
    local r
    if rcpts then
      r = fwd:step("envelope", sender.address or "", params, size or 0, rcpts)
    else
      r = fwd:step("mail", sender.address or "", params, size or 0)
    end
    if reused and r["local"] and r.code == 451 then return retry_fresh(fwd, sender, size, rcpts) end
    if math.floor(r.code / 100) ~= 2 then return r end
    return nil
  end

  -- the server's name for EHLO, once per server: without server.hostname
  -- set it is the machine's name, a getaddrinfo (blocking) each time asked
  local hostnames = setmetatable({}, { __mode = "k" })
  local function hostname_of(server)
    if not server then return nil end
    local set = rawget(server, "hostname")
    if set then return set end
    local h = hostnames[server]
    if not h then h = server.hostname ; hostnames[server] = h end
    return h
  end

  -- The checked target per target table: a policy that passes the same
  -- table for every message has its checks and the pool's key (a concat of
  -- 11 strings) made once.  A table changed since (a field, the auth's user
  -- or password) or a new server.hostname is checked again.  A table is
  -- only marked the first time it is seen, so a policy that makes a new
  -- one per message pays no copy.
  local checked = setmetatable({}, { __mode = "k" })
  local function same_target(c, target, hostname)
    if c.hostname ~= hostname then return false end
    local snap, n = c.snap, 0
    for k, v in pairs(target) do
      if snap[k] ~= v then return false end
      n = n + 1
    end
    local auth = target.auth
    return n == c.n and (not auth or auth.user == c.user and auth.password == c.password)
  end

  local function new_fwd(conn, target, what)
    local server = I.server
    local hostname = (type(target) ~= "table" or target.helo == nil) and hostname_of(server) or nil
    local c = checked[target]
    local t, name
    if c and c ~= true and same_target(c, target, hostname) then
      t, name = c.t, c.name
    elseif not c then
      t, name = check_target(target, hostname, what)
      checked[target] = true	-- seen once
    else
      t, name = check_target(target, hostname, what)
      local snap, n = {}, 0
      for k, v in pairs(target) do snap[k] = v ; n = n + 1 end
      local auth = target.auth
      checked[target] = { t = t, name = name, snap = snap, n = n, hostname = hostname,
        user = auth and auth.user, password = auth and auth.password }
    end
    if not platform.nexthop then
      return nil, "no network here: forwarding runs in luasmtpd's workers and smtp.testing"
    end
    local nh, err = platform.nexthop(t)
    if not nh then return nil, err end
    -- every field it will have, made at once (no rehash as the steps go)
    local fwd = setmetatable({ nh = nh, conn = conn, name = name, lmtp = t.lmtp, dead = false, target = t,
      completed = false,
      closed = false, streaming = false, sink = false, accepted = 0, refused = false,
      cb = false, k = false, all = false, m = false, inside = false, ready = false, rcpt = false,
      w_task = false, w_gen = false, w_done = false, w_waiting = false, w_last = false,
      w_all = false }, Fwd)
    fwd.cb = function(code, enhanced, text, loc, index, count)
      return on_reply(fwd, code, enhanced, text, loc, index, count)
    end
    return fwd
  end

  local function size_of(sender)
    local s = sender.params and tonumber(sender.params.SIZE)
    return s and math.floor(s) or 0
  end

  -- message:forward(target) -> true | nil, err  (from a 'DATA' listener)
  -- Every recipient must be taken by the next hop, else the message is
  -- refused as a whole (the client was told 250 for each: no partial
  -- delivery, so nothing is lost and nothing delivered twice).
  function I.forward_message(m, target)
    local conn = m.connection
    local task = current_task()
    if not task or conn.currentMessage ~= m then error("message:forward is called from a 'DATA' listener", 3) end
    if m._forward then error("message:forward: already forwarded", 3) end
    local fwd, err = new_fwd(conn, target, "message:forward")
    if not fwd then
      m:reject(451, "4.4.1 Next hop unavailable")
      return nil, err
    end
    -- MAIL and every RCPT in one step (pipelined when the next hop offers it)
    local rcpts, addrs = m.recipients, {}
    for i, rcpt in ipairs(rcpts) do addrs[i] = rcpt.address end
    local r = open_and_mail(fwd, m.sender, size_of(m.sender), addrs)
    if r then
      fwd:close(not r["local"])
      local _, code, text = verdict_of_reply(r, 2)
      if code < 400 then code, text = 451, "4.4.2 " .. (text or "") end
      log("info", conn.id, "forward to %s refused: %s %s", fwd.name, r.code, r.text)
      m:reject(code, text)
      return nil, ("%d %s"):format(r.code, r.text)
    end
    local temp, first
    for i, rr in ipairs(fwd.nh:results() or NONE) do
      if math.floor(rr.code / 100) ~= 2 then
        first = first or { rcpt = rcpts[i], r = rr }
        if rr.code < 500 then temp = true end
      end
    end
    if first then
      local rr = first.r
      local code = temp and 451 or 554
      local text = ("%s Next hop refused <%s>: %d %s"):format(temp and "4.4.2" or "5.5.0",
        first.rcpt.address, rr.code, rr.text:gsub("\n", " "))
      fwd:close(true)
      log("info", conn.id, "forward to %s refused: %s", fwd.name, text)
      m:reject(code, text)
      return nil, text
    end
    m._forward = fwd
    return true
  end

  -- the next hop's RCPT reply settles the client's (fwd.rcpt: its address object)
  local function rcpt_done(fwd, r)
    local acc, c, t = verdict_of_reply(r, 2)
    if acc then fwd.accepted = fwd.accepted + 1 end
    local conn, rcpt = fwd.conn, fwd.rcpt
    fwd.rcpt = false
    local a = conn._ask
    if a and a.obj == rcpt and a.waiting then settle(conn, a, acc, c, t) end
  end

  -- an RCPT's verdict under proxy (fwd.rcpt_finish): the policy's, then
  -- the next hop's
  local function proxy_rcpt(fwd, rcpt)
    local accept, code, text = verdict_of(rcpt)
    if not accept then return accept, code, text end
    if fwd.dead then return false, 451, "4.4.2 Next hop unavailable" end
    if fwd.lmtp and fwd.accepted >= 1 then
      return false, 452, "4.5.3 One recipient per transaction here, send the others again"
    end
    fwd.rcpt = rcpt
    local ok = fwd:step_cb("rcpt", rcpt_done, rcpt.address, "")
    if not ok then return false, 451, "4.4.2 Next hop unavailable" end
    return WAIT
  end

  -- connection:proxy(target) -> true | nil, err  (from a 'MAIL' listener):
  -- the next hop's transaction opens now, its MAIL reply is the client's,
  -- and each RCPT the policy accepts goes to the next hop, whose reply the
  -- client gets.  LMTP: one recipient per transaction (see the docs).
  function I.proxy_connection(conn, target)
    local task = current_task()
    local sender = conn._mail_obj
    if not task or not sender then error("connection:proxy is called from a 'MAIL' listener", 3) end
    if conn._proxy then conn._proxy:close(true) end
    local fwd, err = new_fwd(conn, target, "connection:proxy")
    if not fwd then
      sender.valid, sender.code, sender.message = false, 451, "4.4.1 Next hop unavailable"
      return nil, err
    end
    local r = open_and_mail(fwd, sender, size_of(sender))
    if r then
      fwd:close(not r["local"])
      local _, code, text = verdict_of_reply(r, 2)
      sender.valid, sender.code, sender.message = false, code, text
      return nil, ("%d %s"):format(r.code, r.text)
    end
    fwd.rcpt_finish = function(rcpt) return proxy_rcpt(fwd, rcpt) end
    conn._proxy = fwd
    conn._on_change(conn)	-- RCPT, DATA and its end now come to Lua
    return true
  end

  -- the next hop's reply to DATA (fwd.m: the message): 354 starts the body
  local function data_done(self, r)
    local conn, m = self.conn, self.m
    local a = conn._ask
    local waiting = a and a.obj == m and a.waiting
    if r.code == 354 then
      self.streaming = true
      if type(self.nh) == "userdata" then
        conn._handle:sink(self.nh)	-- the body goes to the next hop in C
        self.sink = true
      else
        I.watch_data(m)	-- the body goes to the next hop from Lua
      end
      if self.inside then self.ready = true
      elseif waiting then settle(conn, a, true, 0, nil) end
      return
    end
    local _, c, t = verdict_of_reply(r, 3)
    if c < 400 then c, t = 451, "4.4.2 Next hop answered DATA with " .. r.code end
    self:close(not r["local"])
    m._forward = false
    if waiting then settle(conn, a, false, c, t) end
  end

  -- DATA accepted by the policy: the next hop's DATA (354) first
  function Fwd:start_data(m)
    if self.dead then
      self:close(false)
      m._forward = false
      return false, 451, "4.4.2 Next hop unavailable"
    end
    -- ready: the 354 came with the envelope, no wait
    self.m, self.inside, self.ready = m, true, false
    local ok = self:step_cb("data", data_done)
    self.inside = false
    if not ok then
      m._forward = false
      return false, 451, "4.4.2 Next hop unavailable"
    end
    if self.ready then return true, 0, nil end
    return WAIT
  end

  -- the next hop's reply to the final dot (LMTP: all, one per recipient)
  local function end_done(self, r, all)
    local conn, m, name = self.conn, self.m, self.name
    local accept, code, text = verdict_of_reply(r, 2)
    if all then	-- LMTP, several recipients: all or nothing (see the docs)
      local bad
      for _, x in ipairs(all) do if math.floor(x.code / 100) ~= 2 then bad = bad or x end end
      if bad then
        accept, code, text = verdict_of_reply(bad, 2)
        log("warn", conn.id, "next hop %s took the message for some recipients only", name)
      end
    end
    if info_on() then	-- the text's gsub and the format only for a line that is kept
      log("info", conn.id, "forwarded to %s: %d %s%s", name, r.code,
        r.enhanced ~= "" and r.enhanced .. " " or "", (r.text:gsub("\n", " ")))
    end
    self.streaming = false
    self.completed = not r["local"]	-- the next hop's transaction is over: no RSET
    if self.sink then
      self.sink = false
      conn._handle:sink(nil)
    end
    self:close(not r["local"])
    m._forward = false
    decide_message(m, accept, code, text)
  end

  -- the final dot: the next hop's reply is the client's
  function Fwd:end_verdict(m)
    local conn = self.conn
    if m._daccept == true then m._daccept = UNDECIDED end	-- the policy's yes: forward it
    self.m = m
    local ok, err = self:step_cb("finish", end_done)
    if not ok then
      log("info", conn.id, "not forwarded: %s", err)
      self:close(false)
      m._forward = false
      if not err or not err:find("^Next hop ") then err = ("Next hop %s unavailable"):format(self.name) end
      return false, 451, "4.4.2 " .. err
    end
    return WAIT
  end

  -- the message will not be delivered (the policy refused it, the client
  -- left, the engine failed it): the next hop never completes it
  function I.forward_abort(m)
    local fwd = m._forward
    if fwd then
      m._forward = false
      fwd:close(true)
    end
  end

  -- a chunk of message data where the platform streams in Lua (the harness)
  function I.forward_data(m, chunk)
    local fwd = m._forward
    if fwd and fwd.streaming and not fwd.sink then
      if not fwd.nh:write(chunk) then fwd.dead = true end
    end
  end

  -- server.forwardPool = {idle =, maxMessages =, maxPerTarget =}
  function I.forward_pool(opts)
    if platform.nexthop_pool then
      platform.nexthop_pool { idle_ms = math.floor((opts.idle or 30) * 1000),
        max_messages = opts.maxMessages or 100, max_per_target = opts.maxPerTarget or 8 }
    end
  end
end

return M
