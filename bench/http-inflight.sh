#!/usr/bin/env bash
# bench/http-inflight.sh -- what a worker holds per smtp.http request in flight.
#
# Starts luasmtpd (--workers 0) with a policy that, at 'start', opens N
# requests at once to a loopback socket that listens and never accepts
# (each waits for its timeout, 10 s), after one request that makes the
# worker's resolver (its UDP socket stays), and reads the server's VmRSS and
# descriptor count before and while they wait; prints KiB and descriptors
# per request in flight, then checks both come back once they time out.
#
#   bench/http-inflight.sh [-b BINARY] [-n REQUESTS]
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$BENCH/../build/luasmtpd"
n=1000
while getopts "b:n:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	*) echo "usage: $0 [-b BINARY] [-n REQUESTS]" >&2; exit 2 ;;
	esac
done
dir=$(mktemp -d /tmp/luasmtpd-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

# the socket that never accepts (backlog 4096: most connects complete)
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True); time.sleep(3600)' >"$dir/hole" &
pids+=($!)
for _ in $(seq 50); do [ -s "$dir/hole" ] && break; sleep 0.1; done
port=$(cat "$dir/hole")

cat >"$dir/policy.lua" <<EOF
local smtp = require "smtp"
local server = smtp.createServer(function() end)
smtp.http.maxInFlight = $n
server:on("start", function()
  -- one request first: the worker's resolver is made at the first one
  smtp.http.request { url = "http://127.0.0.1:$port/", timeout = 0.1 }
  smtp.sleep(1)	-- the "before" sample
  local done = 0
  for _ = 1, $n do
    smtp.setTimeout(function()
      smtp.http.request { url = "http://127.0.0.1:$port/", timeout = 10 }
      done = done + 1
    end, 0)
  end
  smtp.sleep(0.5)
  smtp.log("info", "bench: in flight")
  while done < $n do smtp.sleep(0.1) end
  smtp.log("info", "bench: all timed out")
end)
server:listen(0)
EOF
"$bin" --workers 0 --listen 127.0.0.1:0 "$dir/policy.lua" >"$dir/log" 2>&1 &
srv=$!
pids+=($srv)
sample() { echo "$(awk '/^VmRSS/ {print $2}' /proc/$srv/status) $(ls /proc/$srv/fd | wc -l)"; }
until grep -q ready "$dir/log"; do sleep 0.1; done
sleep 0.7
read -r rss0 fd0 <<<"$(sample)"
until grep -q "bench: in flight" "$dir/log"; do sleep 0.05; done
read -r rss1 fd1 <<<"$(sample)"
until grep -q "bench: all timed out" "$dir/log"; do sleep 0.2; done
sleep 0.5
read -r rss2 fd2 <<<"$(sample)"
echo "requests in flight: $n"
echo "before:   VmRSS ${rss0} KiB, ${fd0} descriptors"
echo "waiting:  VmRSS ${rss1} KiB, ${fd1} descriptors"
echo "after:    VmRSS ${rss2} KiB, ${fd2} descriptors"
awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN { printf "per request in flight: %.1f KiB\n", (b - a) / n }'
[ "$fd2" -eq "$fd0" ] || { echo "descriptors leaked: $fd0 -> $fd2" >&2; exit 1; }
