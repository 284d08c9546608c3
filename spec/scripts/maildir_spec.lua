-- scripts/maildir.lua: durable delivery, and no partial file on failure.
local testing = require "smtp.testing"

local function ls(dir)
  local p = assert(io.popen("ls -A '" .. dir .. "' 2>/dev/null"))
  local names = {}
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  return names
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("scripts/maildir.lua", function()
  local root

  before_each(function()
    local p = assert(io.popen("mktemp -d /tmp/maildir-spec.XXXXXX"))
    root = p:read("l")
    p:close()
  end)

  after_each(function()
    assert(root:match("^/tmp/maildir%-spec%.")) -- never anything else
    os.execute("rm -rf '" .. root .. "'")
  end)

  local function load(globals)
    return testing.load("scripts/maildir.lua", { env = { MAILDIR = root .. "/inbox" }, globals = globals })
  end

  it("stores the message in new/ and only then says 250", function()
    local h = load()
    local s = h:connect { remoteAddress = "198.51.100.1" }
    local r = s:sendmail { helo = "client.example", from = "alice@example.net", to = { "bob@example.org" },
      data = "Subject: hi\r\n\r\n.dotted\r\nbody\r\n" }
    assert.is_true(r.ok, s:transcript())
    local new = ls(root .. "/inbox/new")
    assert.equal(1, #new)
    assert.same({}, ls(root .. "/inbox/tmp"))
    assert.same({}, ls(root .. "/inbox/cur"))
    local text = slurp(root .. "/inbox/new/" .. new[1])
    -- the engine's Received field, once (the script adds none of its own)
    assert.matches("^Return%-Path: <alice@example.net>\r\nReceived: from client.example %(%[198.51.100.1%]%)", text)
    assert.equal(1, select(2, text:gsub("\nReceived:", "")))
    assert.matches("\r\nSubject: hi\r\n\r\n.dotted\r\nbody\r\n$", text)
    assert.matches("delivered .*/inbox/new/", s:log())
  end)

  it("gives each message its own file", function()
    local s = load():connect()
    for i = 1, 3 do
      assert.is_true(s:sendmail { from = "a@example.net", to = "b@example.org", data = "n" .. i }.ok)
    end
    assert.equal(3, #ls(root .. "/inbox/new"))
  end)

  it("answers 451 when the Maildir cannot be made", function()
    local f = assert(io.open(root .. "/inbox", "w"))	-- a file where the directory should be
    f:close()
    local s = load():connect()
    local r = s:sendmail { from = "a@example.net", to = "b@example.org", data = "x" }
    assert.equal(451, r.done.code)
    assert.equal("4.3.0", r.done.enhanced)
    assert.matches("maildir delivery failed: mkdir", s:log())
  end)

  it("answers 451 and leaves no partial file when a write fails", function()
    local failing_io = setmetatable({
      open = function(path, mode)
        local file, err = io.open(path, mode)
        if not file then return nil, err end
        return {
          write = function(self, ...)
            for _, v in ipairs { ... } do
              if tostring(v):find("DISK FULL", 1, true) then return nil, "No space left on device" end
            end
            return file:write(...) and self
          end,
          close = function() return file:close() end,
        }
      end,
    }, { __index = io })
    local s = load({ io = failing_io }):connect()
    local r = s:sendmail { from = "a@example.net", to = "b@example.org",
      data = "first line\r\nDISK FULL here\r\n" }
    assert.equal(451, r.done.code)
    assert.same({}, ls(root .. "/inbox/tmp"))
    assert.same({}, ls(root .. "/inbox/new"))
    assert.matches("No space left on device", s:log())
  end)

  it("removes the partial file when the client goes away mid-message", function()
    local s = load():connect()
    s:expect(220)
    s:send("HELO c.example"):expect(250)
    s:send("MAIL FROM:<a@example.net>"):expect(250)
    s:send("RCPT TO:<b@example.org>"):expect(250)
    s:send("DATA"):expect(354)
    s:send_raw("half a message\r\n")
    assert.equal(1, #ls(root .. "/inbox/tmp"))
    s:close()
    assert.same({}, ls(root .. "/inbox/tmp"))
    assert.same({}, ls(root .. "/inbox/new"))
  end)
end)
