-- scripts/policyd.lua -- ask a Postfix policy delegation service at RCPT.
--
-- For each recipient, the script sends the policy service the request that
-- Postfix's smtpd sends (SMTPD_POLICY_README: name=value lines, a blank
-- line; request=smtpd_access_policy, protocol_state=RCPT, client_address,
-- helo_name, sender, recipient, ...) over smtp.tcp, and maps the service's
-- action= answer (access(5)) to the RCPT reply:
--   OK, DUNNO (and PREPEND, WARN, INFO: logged)  the recipient is accepted
--   REJECT [text]                                550 5.7.1 text
--   DEFER [text], DEFER_IF_PERMIT [text]         450 4.7.1 text
--   4NN [text], 5NN [text]                       that code and text
--   DEFER_IF_REJECT                              accepted (nothing here rejects later)
--   HOLD, DISCARD, FILTER, REDIRECT ...          accepted, with a warning (not supported)
--   anything else                                451 4.3.5 (a broken service)
-- A service that is down, slow (POLICYD_TIMEOUT) or answers nonsense gives
-- POLICYD_ON_FAILURE: "tempfail" (451 4.3.5, the default: the client
-- retries later), "accept" or "reject" (550 5.7.1).  One connection per
-- recipient, closed with the handler.
-- Run: POLICYD_ADDRESS=127.0.0.1:10040 luasmtpd scripts/policyd.lua
local smtp = require "smtp"

local HOST, PORT = (os.getenv("POLICYD_ADDRESS") or "127.0.0.1:10040"):match("^%[?(.-)%]?:(%d+)$")
PORT = tonumber(PORT)
assert(HOST and PORT, "POLICYD_ADDRESS must be host:port")
local TIMEOUT = tonumber(os.getenv("POLICYD_TIMEOUT")) or 10	-- seconds per step with the service
local ON_FAILURE = os.getenv("POLICYD_ON_FAILURE") or "tempfail"
assert(ON_FAILURE == "tempfail" or ON_FAILURE == "accept" or ON_FAILURE == "reject",
  "POLICYD_ON_FAILURE must be tempfail, accept or reject")
local MAX_LINES = 64	-- lines of one answer

-- a value on one line: the engine lets no CR or LF through, this is a second belt
local function clean(v)
  return (tostring(v or ""):gsub("[%z\r\n]", ""))
end

local function request(connection, recipient)
  local sender, helo, tls = connection.sender, connection.helo, connection.tls
  local attrs = {
    { "request", "smtpd_access_policy" },
    { "protocol_state", "RCPT" },
    { "protocol_name", helo and helo.extended and "ESMTP" or "SMTP" },
    { "client_address", connection.remoteAddress },
    { "client_port", connection.remotePort },
    { "client_name", "unknown" },
    { "reverse_client_name", "unknown" },
    { "server_address", connection.localAddress },
    { "server_port", connection.localPort },
    { "helo_name", helo and helo.name },
    { "sender", sender and sender.address },
    { "recipient", recipient.address },
    { "recipient_count", #connection.recipients },
    { "queue_id", "" },
    { "instance", connection.id },
    { "size", sender and sender.params.SIZE or 0 },
    { "sasl_username", connection.user },
    { "encryption_protocol", tls and tls.version },
    { "encryption_cipher", tls and tls.cipher },
  }
  local out = {}
  for i, a in ipairs(attrs) do out[i] = a[1] .. "=" .. clean(a[2]) .. "\n" end
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- asks the service: its action, or nil, err
local function ask(connection, recipient)
  local sock, err = smtp.tcp.connect(HOST, PORT, { timeout = TIMEOUT, maxLine = 4096 })
  if not sock then return nil, err end
  local ok, serr = sock:send(request(connection, recipient))
  if not ok then return nil, serr end
  local action
  for _ = 1, MAX_LINES do
    local line, rerr = sock:receive()
    if not line then return nil, rerr end
    if line == "" then break end
    action = action or line:match("^action=(.*)$")
  end
  sock:close()
  if not action then return nil, "no action in the answer" end
  return action
end

-- code, enhanced default, text of a "4NN text" / "5NN text" action
local function with_code(code, text, default)
  text = text:gsub("%c", " "):sub(1, 400)
  local class, enhanced, words = text:match("^(%d)(%.%d%d?%d?%.%d%d?%d?) *(.*)$")
  if class then	-- its class follows the code's: "450 5.7.1" would be refused
    text = ("%d%s %s"):format(code // 100, enhanced, words ~= "" and words or default)
  else
    text = ("%d.7.1 %s"):format(code // 100, text ~= "" and text or default)
  end
  return code, text
end

-- the reply an action gives: nil (accept), or code, text
local function decide(action)
  local word, rest = action:match("^(%S*)%s*(.*)$")
  local verb = word:upper()
  if verb == "OK" or verb == "DUNNO" or verb == "DEFER_IF_REJECT" then return nil end
  if verb == "REJECT" then return with_code(550, rest, "Access denied") end
  if verb == "DEFER" or verb == "DEFER_IF_PERMIT" then return with_code(450, rest, "Try again later") end
  local code = tonumber(word:match("^[45]%d%d$"))
  if code then return with_code(code, rest, code >= 500 and "Access denied" or "Try again later") end
  if verb == "PREPEND" or verb == "WARN" or verb == "INFO" or verb == "HOLD" or verb == "DISCARD"
    or verb == "FILTER" or verb == "REDIRECT" or verb == "BCC" then
    return nil, verb
  end
  return 451, "4.3.5 Policy service error", "unknown action"
end

smtp.createServer(function(connection)
  connection:on("RCPT", function(recipient)
    local action, err = ask(connection, recipient)
    if not action then
      connection:log("warn", "policyd %s:%d: %s (%s)", HOST, PORT, err, ON_FAILURE)
      if ON_FAILURE == "accept" then return end
      recipient.valid = false
      if ON_FAILURE == "reject" then
        recipient.code, recipient.message = 550, "5.7.1 Policy service unavailable"
      else
        recipient.code, recipient.message = 451, "4.3.5 Policy service unavailable"
      end
      return
    end
    local code, text, note = decide(action)
    if not code then
      if text then connection:log("info", "policyd: %s for %s (%s: accepted as DUNNO)", action, recipient, text) end
      return
    end
    if note then connection:log("warn", "policyd: %s for %s: %s", action, recipient, note) end
    recipient.valid, recipient.code, recipient.message = false, code, text
  end)
end):listen(2525, "127.0.0.1")
