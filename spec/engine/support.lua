-- spec/engine/support.lua -- what the engine specs share: a policy from a
-- source string (with `smtp` in scope) and a session past its HELO.
local testing = require "smtp.testing"

local support = {}

-- Loads src, preceded by `local smtp = require 'smtp'`, as policy.lua.
function support.policy(src, opts)
  return testing.load_string("local smtp = require 'smtp'\n" .. src, "=policy.lua", opts)
end

-- A session of harness h that has read the greeting and said HELO.
function support.helo(h, peer)
  local s = h:connect(peer)
  s:expect(220)
  s:send("HELO c.example"):expect(250)
  return s
end

-- The same, with a transaction open: MAIL from a@example.net, RCPT to b@example.org.
function support.transaction(h, peer)
  local s = support.helo(h, peer)
  s:send("MAIL FROM:<a@example.net>"):expect(250)
  s:send("RCPT TO:<b@example.org>"):expect(250)
  return s
end

return support
