-- spec/e2e/message_events_spec.lua -- a message's 'accept' and 'reject'
-- listeners run when the client is told, not at the client's next command.
local support = require "spec.e2e.support"

local POLICY = [[
local smtp = require "smtp"
smtp.createServer(function(conn)
  conn:on("DATA", function(message)
    message:on("accept", function() conn:log("info", "event accept") end)
    message:on("reject", function() conn:log("info", "event reject") end)
    message:on("end", function()
      if message.sender.address:find("refuse", 1, true) then message:reject() else message:accept() end
    end)
  end)
end)
]]

describe("e2e: message events", function()
	local server = support.serve { policy = POLICY }

	local function send_message(c, from)
		c:cmd("MAIL FROM:<" .. from .. ">", "^250 ")
		c:cmd("RCPT TO:<b@b.example>", "^250 ")
		c:cmd("DATA", "^354 ")
	end

	it("fires 'accept' and 'reject' while the client waits idle after the reply", function()
		local c = support.connect(server)
		c:hello()
		send_message(c, "a@a.example")
		c:send("Subject: one\r\n\r\nbody\r\n.\r\n")
		c:expect("^250 2%.0%.0 ")
		-- the client says nothing more: the event must not wait for it
		support.wait_until(function() return server:stderr():find("event accept", 1, true) end,
			5, "the 'accept' listener")
		send_message(c, "refuse@a.example")
		c:send("Subject: two\r\n\r\nbody\r\n.\r\n")
		c:expect("^550 5%.7%.1 ")
		support.wait_until(function() return server:stderr():find("event reject", 1, true) end,
			5, "the 'reject' listener")
		c:cmd("QUIT", "^221 ")
		c:close()
	end)
end)
