-- Unit specs of the server object (smtp.instance) with a stub smtp_core:
-- options are checked where they are set, and map onto the engine config.
local instance = require "smtp.instance"

local function stub_core()
  local watched
  return {
    EXT = { PIPELINING = 1, SIZE = 2, ["8BITMIME"] = 4, ENHANCEDSTATUSCODES = 8, SMTPUTF8 = 16 },
    EVENTS = {},
    defaults = function()
      return { extensions = 31, max_line = 512, max_text_line = 1000, max_recipients = 100,
        max_size = 0, max_bad_commands = 20, timeout_command_ms = 300000,
        timeout_data_ms = 180000, timeout_decision_ms = 600000 }
    end,
    bridge = function() return { watch = function(_, on) watched = on end } end,
    fqdn = function() return "host.example.net" end,
    log = function() end,
    watched = function() return watched end,
    network_ok = function(v) return v:match("^[%x.:]+/?%d*$") ~= nil end,
  }
end

local function new()
  local core = stub_core()
  return instance.new { core = core }, core
end

describe("smtp server options", function()
  it("default hostname is the machine's name", function()
    local smtp = new()
    assert.equal("host.example.net", smtp.createServer().hostname)
  end)

  it("maps options onto the engine config", function()
    local smtp = new()
    local server = smtp.createServer()
    server.hostname = "mx.example.org"
    server.maxSize = 1000000
    server.allowPipelining = false
    server.smtputf8 = false
    server.maxRecipients = 5
    server.decisionTimeout = 2.5
    server.commandTimeout = 60
    server.bareLineFeed = "accept"
    server.maxConnections = 0
    server.maxConnectionsPerClient = 2
    local cfg = server:_config()
    assert.equal("mx.example.org", cfg.hostname)
    assert.equal(1000000, cfg.max_size)
    assert.equal(31 & ~1 & ~16, cfg.extensions)
    assert.equal(5, cfg.max_recipients)
    assert.equal(2500, cfg.timeout_decision_ms)
    assert.equal(60000, cfg.timeout_command_ms)
    assert.equal(180000, cfg.timeout_data_ms)	-- untouched: the default
    assert.is_true(cfg.accept_bare_lf)
    assert.equal(0, cfg.max_connections)
    assert.equal(2, cfg.max_connections_per_client)
  end)

  it("reads back what was set, nil for unset options", function()
    local smtp = new()
    local server = smtp.createServer()
    assert.is_nil(server.maxSize)
    server.maxSize = 10
    assert.equal(10, server.maxSize)
    server.authMethods = { "PLAIN", "LOGIN" }
    assert.same({ "PLAIN", "LOGIN" }, server.authMethods)
  end)

  it("refuses a bad value where it is assigned, naming the option", function()
    local smtp = new()
    local server = smtp.createServer()
    local cases = {
      { "maxSize", "big", 'server.maxSize must be an integer >= 0' },
      { "maxSize", -1, 'server.maxSize must be' },
      { "hostname", "two words", 'server.hostname must be a host name' },
      { "allowPipelining", "yes", 'server.allowPipelining must be a boolean' },
      { "maxLineLength", 100, 'server.maxLineLength must be an integer >= 512' },
      { "maxTextLineLength", 500, 'server.maxTextLineLength must be 0' },
      { "decisionTimeout", 0, 'server.decisionTimeout must be a number of seconds' },
      { "handlerBudget", 1.5, 'server.handlerBudget must be an integer >= 1000' },
      { "handlerCpuTime", 0, 'server.handlerCpuTime must be a number of seconds in (0, 3600]' },
      { "handlerMemory", 1000, 'server.handlerMemory must be an integer >= 65536' },
      { "memoryLimit", 2 ^ 30, 'server.memoryLimit must be an integer >= 8388608' },
      { "blockedLimit", 0.5, 'server.blockedLimit must be a number of seconds in [1, 3600]' },
      { "authMethods", { 1 }, 'server.authMethods must be an array of strings' },
      { "bareLineFeed", "normalize", 'server.bareLineFeed must be "reject" or "accept"' },
      { "maxConnections", -1, 'server.maxConnections must be an integer in [0, 1000000]' },
      { "maxConnectionsPerClient", 2.5, 'server.maxConnectionsPerClient must be an integer in [0, 1000000]' },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(function() server[c[1]] = c[2] end)
      assert.is_false(ok, c[1])
      assert.matches(c[3], err, 1, true)
    end
  end)

  it("refuses an unknown option (a typo is an error, not a silent default)", function()
    local smtp = new()
    local server = smtp.createServer()
    assert.has_error(function() server.maxsize = 10 end, 'unknown server option "maxsize"')
  end)

  it("points the error at the script's line", function()
    local smtp = new()
    local server = smtp.createServer()
    local chunk = load("local server = ...\nserver.maxSize = 'x'", "=policy.lua")
    local ok, err = pcall(chunk, server)
    assert.is_false(ok)
    assert.matches("^policy.lua:2: server.maxSize must be", err)
  end)

  it("records listen addresses without binding", function()
    local smtp = new()
    local server = smtp.createServer()
    assert.equal(server, server:listen(2525))
    server:listen(2526, "::1")
    assert.same({ { port = 2525 }, { port = 2526, host = "::1" } }, server.listening)
    assert.has_error(function() server:listen(70000) end, "listen: port must be an integer from 0 to 65535")
    assert.has_error(function() server:listen("25") end)
  end)

  it("records PROXY listeners and refuses them without trusted networks", function()
    local smtp = new()
    local server = smtp.createServer()
    server:listen(2525, "127.0.0.1", { proxy = true, proxyFrom = { "10.0.0.0/8", "::1" },
      proxyTimeout = 2.5 })
    assert.same({ port = 2525, host = "127.0.0.1", proxy = true,
      proxyFrom = { "10.0.0.0/8", "::1" }, proxyTimeout = 2500 }, server.listening[1])
    assert.has_error(function() server:listen(25, { proxy = true }) end,
      "listen: proxy = true needs proxyFrom, the networks of the proxies trusted to send the header")
    assert.has_error(function() server:listen(25, { proxy = true, proxyFrom = {} }) end,
      "listen: proxyFrom must be an array of 1 to 16 networks")
    assert.has_error(function() server:listen(25, { proxy = true, proxyFrom = { "mx.example" } }) end,
      'listen: proxyFrom[1] is not a network ("10.0.0.0/8", "2001:db8::/32", "127.0.0.1")')
    assert.has_error(function() server:listen(25, { proxyFrom = { "::1" } }) end,
      "listen: proxyFrom and proxyTimeout need proxy = true")
    assert.has_error(function() server:listen(25, { proxy = "yes" }) end,
      "listen: option proxy must be a boolean")
    assert.has_error(function()
      server:listen(25, { proxy = true, proxyFrom = { "::1" }, proxyTimeout = 0 })
    end, "listen: proxyTimeout must be a number of seconds in (0, 3600]")
  end)

  it("allows one server per script", function()
    local smtp = new()
    smtp.createServer()
    assert.has_error(function() smtp.createServer() end,
      "one server per script: createServer was already called")
  end)

  it("asks for connections only when a 'connection' listener exists", function()
    local smtp, core = new()
    local server = smtp.createServer()
    assert.is_falsy(core.watched())
    local f = function() end
    server:on("connection", f)
    assert.is_true(core.watched())
    server:off("connection", f)
    assert.is_false(core.watched())
    assert.has_error(function() server:on("connect", f) end)
  end)

  it("reports a script that made no server", function()
    local smtp = new()
    local p, err = smtp._policy()
    assert.is_nil(p)
    assert.equal("the script did not call smtp.createServer", err)
  end)

  it("refuses smtp.sleep outside a handler, timers while loading and without a platform", function()
    local smtp = new()
    assert.has_error(function() smtp.sleep(1) end, "smtp.sleep must be called from a handler or a 'start' listener")
    assert.has_error(function() smtp.setTimeout(function() end, 10) end,
      'timers cannot start while the script loads: start them in a server:on("start", fn) '
      .. "listener or in a handler")
    smtp.createServer()
    assert.truthy(smtp._policy())	-- the script's top level is over
    assert.has_error(function() smtp.setTimeout(function() end, 10) end,
      "no event loop: timers run in luasmtpd or smtp.testing")
  end)
end)
