-- spec/e2e/knot.lua -- a real authoritative DNS server for the DNS specs and
-- benches: knotd from the system, started on a free loopback port with the
-- zones it is given (config, zone files and database in a temp dir), and
-- stopped by PID.  knot.start{zones = {["example.test"] = "zone text"}}
-- (a zone false has no file: knotd answers SERVFAIL for it)
-- -> { pid, port, dir, stop = fn }.
local support = require "spec.e2e.support"
local shquote = support.shquote

local knot = {}

local function alive(pid) return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true end

local function spit(path, text)
	local f = assert(io.open(path, "wb"))
	f:write(text)
	f:close()
end

-- answers dig? (the zone's SOA at the server)
local function answers(port, zone)
	local _, _, out = support.run(("dig +short +time=1 +tries=1 -p %d @127.0.0.1 %s SOA"):format(port, zone), 5)
	return out and out:match("%S") ~= nil
end

function knot.start(opts)
	local dir = support.tmpdir()
	local port = opts.port or support.free_port()
	local conf = { "server:", ('    rundir: "%s"'):format(dir), ("    listen: 127.0.0.1@%d"):format(port),
		"    udp-workers: 1", "    tcp-workers: 1", "    background-workers: 1",
		"database:", ('    storage: "%s/db"'):format(dir),
		"log:", "  - target: stderr", "    any: warning",
		"template:", "  - id: default", ('    storage: "%s"'):format(dir), "    semantic-checks: off",
		"zone:" }
	local first
	for name, text in pairs(opts.zones) do
		if text then first = first or name end
		if text then spit(dir .. "/" .. name .. ".zone", text) end	-- false: SERVFAIL
		conf[#conf + 1] = ("  - domain: %s"):format(name)
		conf[#conf + 1] = ("    file: %s.zone"):format(name)
	end
	spit(dir .. "/knot.conf", table.concat(conf, "\n") .. "\n")
	local cmd = ("knotd -c %s >>%s 2>&1 </dev/null & echo $!"):format(shquote(dir .. "/knot.conf"),
		shquote(dir .. "/knot.log"))
	local h = assert(io.popen("sh -c " .. shquote(cmd)))
	local pid = tonumber(h:read("l"))
	h:close()
	assert(pid, "could not start knotd")
	local self = { pid = pid, port = port, dir = dir }
	function self.stop()
		if alive(pid) then
			os.execute(("kill -TERM %d"):format(pid))
			local ok = pcall(support.wait_until, function() return not alive(pid) end, 10, "knotd to exit")
			if not ok then os.execute(("kill -KILL %d"):format(pid)) end
		end
		os.execute("rm -rf " .. shquote(dir))
	end
	local ok, err = pcall(support.wait_until, function()
		if not alive(pid) then
			error("knotd exited:\n" .. (support.slurp(dir .. "/knot.log") or ""), 0)
		end
		return answers(port, first)
	end, 60, "knotd to answer")
	if not ok then self.stop() ; error(err, 2) end
	return self
end

return knot
