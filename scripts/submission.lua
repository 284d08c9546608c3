-- scripts/submission.lua -- a message submission server (RFC 6409): port 587
-- with STARTTLS, AUTH required before MAIL, each user sending only as one of
-- their own addresses; port 465 serves the same over implicit TLS (RFC 8314).
--
-- Run: SUBMISSION_CERT=chain.pem SUBMISSION_KEY=key.pem luasmtpd scripts/submission.lua
-- (defaults: Debian's ssl-cert snakeoil pair).  AUTH is offered only after
-- STARTTLS (538 5.7.11 before it); MAIL before AUTH gets 530 5.7.0.
-- The users table is an example: keep real credentials out of the script
-- (read a file, ask a database) and compare hashes, not passwords.
local smtp = require "smtp"

local users = {
  alice = { password = "wonderland", addresses = { "alice@example.org" } },
  bob = { password = "builder", addresses = { "bob@example.org", "robert@example.org" } },
}

local function may_send_as(user, address)
  for _, a in ipairs(users[user] and users[user].addresses or {}) do
    if a:lower() == address:lower() then return true end
  end
  return false
end

local server = smtp.createServer(function(conn)
  conn:on("AUTH", function(auth)
    local u = users[auth.username]
    auth.valid = u ~= nil and u.password == auth.password
        and (auth.authzid == nil or auth.authzid == "" or auth.authzid == auth.username)
  end)

  conn:on("MAIL", function(sender)
    if not conn.user then
      sender.valid, sender.code, sender.message = false, 530, "5.7.0 Authentication required"
    elseif not may_send_as(conn.user, sender.address) then
      sender.valid, sender.code = false, 553
      sender.message = "5.7.1 Sender address not owned by " .. conn.user
    end
  end)

  conn:on("DATA", function(message)
    message:on("end", function()
      conn:log("info", "accepted from %s (%s) for %d recipient(s), %d octets",
        conn.user, message.sender.address, #message.recipients, message.size)
      message:accept()
    end)
  end)
end)

server.tls = {
  cert = os.getenv("SUBMISSION_CERT") or "/etc/ssl/certs/ssl-cert-snakeoil.pem",
  key = os.getenv("SUBMISSION_KEY") or "/etc/ssl/private/ssl-cert-snakeoil.key",
}
server.authMethods = { "PLAIN", "LOGIN" }
server.maxSize = 25 * 1024 * 1024
server:listen(587, "127.0.0.1")
server:listen(465, "127.0.0.1", { tls = true })
