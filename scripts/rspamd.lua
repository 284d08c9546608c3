-- scripts/rspamd.lua -- every message goes to rspamd's /checkv2 as it
-- arrives, and rspamd's action is the reply to its final dot.
--
-- The message streams into the request (smtp.http.stream: each 'data'
-- chunk is appended outside the Lua heap, the request leaves at the final
-- dot), with the envelope in rspamd's headers: From, one Rcpt per
-- recipient, IP, Helo, Hostname (when the connection knows the client's
-- name), Queue-Id, User (after AUTH).  rspamd's action:
--   reject                         550 5.7.1 (rspamd's SMTP message if it gave one)
--   soft reject                    451 4.7.1
--   greylist                       451 4.7.1 Greylisted, please try again later
--   add header, rewrite subject    accepted; X-Spam headers recorded (below)
--   no action                      accepted
-- A message over RSPAMD_MAX_SIZE octets (50 MiB) is not scanned: accepted.
-- rspamd unreachable, slow (RSPAMD_TIMEOUT), or an answer that is not
-- rspamd's: RSPAMD_FAILURE decides, "tempfail" (451 4.7.0, the default)
-- or "accept".  The message API cannot change a message yet, so the
-- headers rspamd wants added (X-Spam: Yes, X-Spam-Score, X-Spam-Action,
-- and its milter.add_headers) are kept in connection.data.rspamd.headers
-- ({ {name, value}, ... }) with .action and .score, for a delivery
-- listener added after this one to write in front of the message.
-- Run: RSPAMD_URL=http://127.0.0.1:11333 luasmtpd scripts/rspamd.lua
local smtp = require "smtp"
local json = require "dkjson"	-- Debian's lua-dkjson

local URL = (os.getenv("RSPAMD_URL") or "http://127.0.0.1:11333"):gsub("/+$", "") .. "/checkv2"
local TIMEOUT = tonumber(os.getenv("RSPAMD_TIMEOUT")) or 20	-- seconds rspamd has, from the dot
local FAILURE = os.getenv("RSPAMD_FAILURE") or "tempfail"	-- or "accept"
local PASSWORD = os.getenv("RSPAMD_PASSWORD")	-- rspamd's controller password, if it asks
local MAX_SIZE = tonumber(os.getenv("RSPAMD_MAX_SIZE")) or 50 << 20	-- larger: not scanned
local MAX_ANSWER = 1 << 20	-- octets of rspamd's JSON

assert(FAILURE == "tempfail" or FAILURE == "accept", "RSPAMD_FAILURE is tempfail or accept")

-- rspamd's text for the client: printable ASCII, bounded
local function clean(text, default)
  if type(text) ~= "string" then return default end
  text = text:gsub("[^\32-\126]", " "):sub(1, 200)
  return text ~= "" and text or default
end

-- the headers rspamd asks for: what the MTA knows of the message
local function request_headers(connection, message)
  local rcpts = {}
  for i, r in ipairs(message.recipients) do rcpts[i] = r.address end
  local h = {
    From = message.sender.address,
    Rcpt = rcpts,
    IP = connection.remoteAddress,
    ["Queue-Id"] = connection.id,
  }
  if connection.helo then h.Helo = connection.helo.name end
  -- the client's confirmed name, on a connection that knows it
  local ok, name = pcall(function() return connection.hostname end)
  if ok and type(name) == "string" then h.Hostname = name end
  if connection.user then h.User = connection.user end
  if PASSWORD then h.Password = PASSWORD end
  return h
end

-- the X-Spam headers of an accepted message
local function spam_headers(answer, action)
  local out = {
    { "X-Spam", "Yes" },
    { "X-Spam-Score", ("%.2f / %.2f"):format(tonumber(answer.score) or 0,
      tonumber(answer.required_score) or 0) },
    { "X-Spam-Action", action },
  }
  local milter = type(answer.milter) == "table" and answer.milter.add_headers
  if type(milter) == "table" then
    for name, v in pairs(milter) do
      local value = type(v) == "table" and v.value or v
      if type(name) == "string" and name:match("^[%w%-]+$") and type(value) == "string" then
        out[#out + 1] = { name, clean(value, "") }
      end
    end
  end
  return out
end

local server = smtp.createServer(function(connection)
  connection:on("DATA", function(message)
    local scan = smtp.http.stream { url = URL, headers = request_headers(connection, message),
      timeout = TIMEOUT, maxBody = MAX_ANSWER, maxRequestBody = MAX_SIZE }
    local too_big = false
    message:on("data", function(chunk)
      if not too_big and not scan:write(chunk) then too_big = true ; scan:cancel() end
    end)
    message:on("abort", function() scan:cancel() end)
    message:on("end", function()
      if too_big then	-- as rspamd's own max_message: too big to be spam
        connection:log("info", "rspamd: not scanned, over %d octets", MAX_SIZE)
        return message:accept()
      end
      local status, _, body = scan:finish()
      local answer, err
      if not status then
        err = _
      elseif status ~= 200 then
        err = "HTTP status " .. status
      else
        local ok, decoded = pcall(json.decode, body)
        if ok and type(decoded) == "table" and type(decoded.action) == "string" then
          answer = decoded
        else
          err = "not an rspamd answer"
        end
      end
      if not answer then
        connection:log("warn", "rspamd %s: %s (%s)", URL, err, FAILURE)
        if FAILURE == "accept" then return message:accept() end
        return message:reject(451, "4.7.0 Content scanner unavailable, try again later")
      end
      local action = answer.action
      local text = type(answer.messages) == "table" and answer.messages.smtp_message
      connection:log("info", "rspamd: %s (score %s)", action, tostring(answer.score))
      connection.data.rspamd = { action = action, score = tonumber(answer.score), headers = {} }
      if action == "reject" then
        return message:reject(550, "5.7.1 " .. clean(text, "Spam message rejected"))
      elseif action == "soft reject" then
        return message:reject(451, "4.7.1 " .. clean(text, "Try again later"))
      elseif action == "greylist" then
        return message:reject(451, "4.7.1 Greylisted, please try again later")
      elseif action == "add header" or action == "rewrite subject" then
        connection.data.rspamd.headers = spam_headers(answer, action)
        return message:accept()
      elseif action == "no action" then
        return message:accept()
      end
      connection:log("warn", "rspamd: unknown action %q (%s)", action, FAILURE)
      if FAILURE == "accept" then return message:accept() end
      return message:reject(451, "4.7.0 Content scanner unavailable, try again later")
    end)
  end)
end)

server.decisionTimeout = TIMEOUT + 30
server:listen(2525, "127.0.0.1")
