-- scripts/maildir.lua -- deliver every message into a Maildir, durably.
--
-- The message is written to tmp/, fsync'd, renamed into new/ and the
-- directory fsync'd: only then is the client told 250.  Any failure gives
-- 451 (the client retries later) and removes the partial file.
-- Run: MAILDIR=/var/mail/inbox luasmtpd scripts/maildir.lua
local smtp = require "smtp"

local root = os.getenv("MAILDIR") or "Maildir"
local hostname = "luasmtpd"
local serial = 0

local function ensure_maildir()
  for _, d in ipairs { root, root .. "/tmp", root .. "/new", root .. "/cur" } do
    local ok, err = smtp.fs.mkdir(d)
    if not ok then return nil, err end
  end
  return true
end

-- A unique name: time, session id, a counter and the host (Maildir style).
local function unique_name(connection)
  serial = serial + 1
  return string.format("%d.S%s_%d.%s", os.time(), connection.id, serial, hostname)
end

local server = smtp.createServer(function(connection)
  connection:on("DATA", function(message)
    local name = unique_name(connection)
    local tmp, new = root .. "/tmp/" .. name, root .. "/new/" .. name
    local ok, err = ensure_maildir()
    local file
    if ok then file, err = io.open(tmp, "wb") end
    if file then	-- the data starts with the engine's Received field (server.receivedHeader)
      ok, err = file:write("Return-Path: <", message.sender.address, ">\r\n")
    end

    local function fail(why)
      if file then file:close() ; file = nil end
      os.remove(tmp)
      connection:log("warn", "maildir delivery failed: %s", tostring(why))
      message:reject(451, "4.3.0 Cannot store the message now, try again later")
    end

    message:on("data", function(chunk)
      if file and ok then ok, err = file:write(chunk) end
    end)

    message:on("end", function()
      if not file or not ok then return fail(err) end
      ok, err = file:close()
      file = nil
      if not ok then return fail(err) end
      ok, err = smtp.fs.fsync(tmp)
      if not ok then return fail(err) end
      ok, err = os.rename(tmp, new)
      if not ok then return fail(err) end
      ok, err = smtp.fs.fsync(root .. "/new")
      if not ok then return fail(err) end
      connection:log("info", "delivered %s (%d octets)", new, message.size)
      message:accept()
    end)

    message:on("abort", function()	-- not delivered (too big, client gone, an error): no partial file
      if file then file:close() ; file = nil end
      os.remove(tmp)
    end)
  end)
end)

server:listen(2525, "127.0.0.1")
