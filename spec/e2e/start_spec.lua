-- spec/e2e/start_spec.lua -- server:on("start", fn) in real workers: it runs
-- once in each worker as its event loop starts, a timer it starts fires
-- there, and its log lines carry the worker's name; an error in it is
-- logged and the worker serves on.
local support = require "spec.e2e.support"

local POLICY = [[
local smtp = require "smtp"
local server = smtp.createServer(function(conn) end)
server:on("start", function()
  smtp.setTimeout(function()
    smtp.log("info", "maintenance timer fired")
    local f = assert(io.open(@OUT@ .. "/ticks", "a"))
    f:write("tick\n")
    f:close()
  end, 50)
end)
server:on("start", function() error("no database yet") end)
]]

describe("e2e: 'start' listeners", function()
	local server = support.serve { policy = POLICY, workers = 2 }

	local function ticks()
		local text = server:read("ticks") or ""
		local n = 0
		for _ in text:gmatch("tick\n") do n = n + 1 end
		return n
	end

	it("run in every worker; a timer started there fires, logged with the worker's name", function()
		support.wait_until(function() return ticks() >= 2 end, 10, "a tick from each worker")
		assert.equal(2, ticks())
		local err = server:stderr()
		assert.matches("info  worker0%[%d+%] maintenance timer fired", err)
		assert.matches("info  worker1%[%d+%] maintenance timer fired", err)
		assert.not_matches("%[" .. ("%x"):rep(16) .. "%] maintenance timer fired", err)	-- no session id
	end)

	it("an error in one is logged, and the worker serves on", function()
		support.wait_until(function()
			local _, n = server:stderr():gsub("handler start failed: [^\n]*no database yet", "")
			return n == 2
		end, 10, "the failure logged by each worker")
		assert.matches("error worker%d%[%d+%] handler start failed: [^\n]*policy.lua:11: no database yet",
			server:stderr())
		local c = support.connect(server)
		c:expect("^220 ")
		c:cmd("QUIT", "^221 ")
		c:close()
	end)
end)
