-- spec/e2e/redis_support.lua -- a private redis-server for the specs: started
-- on a given free loopback port with no persistence, in a temp directory,
-- awaited with PING, stopped by PID (bounded).
local support = require "spec.e2e.support"
local shquote = support.shquote

local R = {}

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end
R.alive = alive

-- starts redis-server on port (in dir); returns its pid once it answers PING
function R.start(port, dir)
	local cmd = ("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s"
		.. " >>%s 2>&1 </dev/null & echo $!"):format(port, shquote(dir), shquote(dir .. "/redis.log"))
	local h = assert(io.popen("sh -c " .. shquote(cmd)))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start redis-server")
	support.wait_until(function()
		if not alive(pid) then error("redis-server exited:\n" .. (support.slurp(dir .. "/redis.log") or ""), 0) end
		local _, _, out = support.run(("redis-cli -p %d ping"):format(port), 5)
		return out:match("PONG")
	end, 10, "redis-server to answer PING")
	return pid
end

-- stops it by PID (sig, default TERM), KILL if it has not exited within 10 s
function R.stop(pid, sig)
	if not pid or not alive(pid) then return end
	os.execute(("kill -%s %d"):format(sig or "TERM", pid))
	local ok = pcall(support.wait_until, function() return not alive(pid) end, 10, "redis-server to exit")
	if not ok then os.execute(("kill -KILL %d"):format(pid)) end
end

-- redis-cli -p port args: its output, trailing space removed
function R.cli(port, args)
	local _, _, out = support.run(("redis-cli -p %d %s"):format(port, args), 5)
	return (out:gsub("%s+$", ""))
end

return R
