#!/usr/bin/env bash
# bench/tcp.sh -- what smtp.tcp costs a worker: memory per socket waiting in
# a receive, and CPU per round trip (connect, send a line, receive it back,
# close) against a local echo peer.
#
#   bench/tcp.sh [-b BINARY] [-n WAITING] [-r ROUNDTRIPS]
#
# Starts spec/e2e/tcp_peers.py (silent and echo) and the server on loopback,
# one worker; one RCPT runs the measurement inside the worker and answers
# with the figures: the worker's RSS and Lua heap growth per waiting socket
# (N handlers each in a receive on the silent peer), and the worker's CPU
# time (os.clock) per round trip, R round trips one after the other.  The CPU
# figure includes the peer's share of nothing (another process) but does
# move with the machine's load: compare runs made together.
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$BENCH/.."
bin="$ROOT/build/luasmtpd"
n=500
r=2000
while getopts "b:n:r:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	r) r=$OPTARG ;;
	*) exit 2 ;;
	esac
done
dir=$(mktemp -d /tmp/luasmtpd-bench-tcp.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}
trap cleanup EXIT
for mode in silent echo; do
	python3 "$ROOT/spec/e2e/tcp_peers.py" $mode "$dir/$mode.port" 2>>"$dir/peers.err" &
	pids+=($!)
done
for i in $(seq 100); do [ -e "$dir/silent.port" ] && [ -e "$dir/echo.port" ] && break; sleep 0.1; done
cat >"$dir/policy.lua" <<LUA
local smtp = require "smtp"
local SILENT, ECHO, N, R = $(cat "$dir/silent.port"), $(cat "$dir/echo.port"), $n, $r
local server = smtp.createServer(function(conn)
  conn:on("RCPT", function(rcpt)
    local function rss()
      local f = io.open("/proc/self/status")
      local kb = f:read("a"):match("VmRSS:%s*(%d+)")
      f:close()
      return tonumber(kb)
    end
    collectgarbage("collect")
    local rss0, lua0 = rss(), collectgarbage("count")
    local waiting, done = 0, 0
    for _ = 1, N do
      smtp.setTimeout(function()
        local s = assert(smtp.tcp.connect("127.0.0.1", SILENT, { timeout = 30 }))
        waiting = waiting + 1
        s:settimeout(1)
        while waiting < N do s:receive() end	-- all N wait at once, then time out
        done = done + 1
      end, 0)
    end
    while waiting < N do smtp.sleep(0.01) end
    local rss1, lua1 = rss(), collectgarbage("count")
    while done < N do smtp.sleep(0.05) end
    local c0 = os.clock()
    for _ = 1, R do
      local s = assert(smtp.tcp.connect("127.0.0.1", ECHO))
      assert(s:send("ping\n"))
      assert(s:receive() == "echo ping")
      s:close()
    end
    local cpu = (os.clock() - c0) / R
    rcpt.valid, rcpt.code = false, 550
    rcpt.message = ("5.0.0 waiting: %.2f KiB RSS, %.2f KiB Lua heap per socket (%d); round trip: %.1f us CPU (%d)")
      :format((rss1 - rss0) / N, (lua1 - lua0) / N, N, cpu * 1e6, R)
  end)
end)
server.maxSockets = N + 10
LUA
ulimit -n 4096 2>/dev/null || true	# N sockets and the server's own
"$bin" --listen 127.0.0.1:0 --workers 1 --ready-file "$dir/ready" "$dir/policy.lua" 2>"$dir/server.err" &
pids+=($!)
for i in $(seq 150); do [ -s "$dir/ready" ] && break; sleep 0.1; done
port=$(head -1 "$dir/ready" | sed 's/.*://')
swaks -s 127.0.0.1:"$port" -f a@example.net -t b@example.org --quit-after RCPT --timeout 300 2>&1 |
	sed -n 's/^<\*\* 550 5.0.0 //p'
