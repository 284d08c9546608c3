#!/usr/bin/env bash
# bench/forward-callgrind.sh -- what forwarding costs the worker: instructions per
# message (valgrind --tool=callgrind) of a policy that accepts each message
# itself and of one that hands it to smtp-sink with message:forward, in the
# same run, and their ratio.  Instruction counts do not move with the load of
# the machine; wall-clock rates do (bench/run.sh has those).
#
#   bench/forward-callgrind.sh [-b BINARY] [-n MESSAGES] [-l LENGTH]
#
# Each figure is (total(N + 1) - total(1)) / N: a message without start-up
# and shutdown.  Needs valgrind, smtp-source and smtp-sink (postfix).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$BENCH/../build/luasmtpd"
n=500
len=1000
while getopts "b:n:l:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	l) len=$OPTARG ;;
	*) echo "usage: $0 [-b BINARY] [-n MESSAGES] [-l LENGTH]" >&2; exit 2 ;;
	esac
done
for tool in valgrind callgrind_annotate smtp-source smtp-sink; do
	command -v "$tool" >/dev/null || { echo "forward-callgrind.sh: $tool is missing" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/luasmtpd-forward.XXXXXX)
sinkpid=
cleanup() {
	[ -n "$sinkpid" ] && kill "$sinkpid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sinkport=$(free_port)
smtp-sink -u nobody 127.0.0.1:"$sinkport" 256 >/dev/null 2>&1 &
sinkpid=$!
cat >"$tmp/local.lua" <<'LUA'
local smtp = require "smtp"
smtp.createServer(function(conn)
	conn:on("DATA", function(m) m:on("end", function() m:accept() end) end)
end):listen(2525)
LUA
cat >"$tmp/forward.lua" <<LUA
local smtp = require "smtp"
smtp.createServer(function(conn)
	conn:on("DATA", function(m) m:forward { host = "127.0.0.1", port = $sinkport, tls = "none" } end)
end):listen(2525)
LUA

# instructions of the worker for m messages of policy $1
count() {
	local policy=$1 m=$2 port pid
	port=$(free_port)
	rm -f "$tmp"/cg.*
	valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" --trace-children=yes \
		"$bin" --listen 127.0.0.1:"$port" --workers 1 "$tmp/$policy.lua" >"$tmp/log" 2>&1 &
	pid=$!
	for _ in $(seq 1 100); do
		grep -q "ready:" "$tmp/log" 2>/dev/null && break
		sleep 0.2
	done
	smtp-source -s 5 -m "$m" -l "$len" -f a@bench.example -t b@bench.example 127.0.0.1:"$port" >/dev/null
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	# the worker's file is the biggest
	callgrind_annotate "$(ls -S "$tmp"/cg.* | head -1)" 2>/dev/null |
		awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

per() { echo $(( ($(count "$1" $((n + 1))) - $(count "$1" 1)) / n )); }
l=$(per local)
f=$(per forward)
echo "instructions per message ($len octets, $n messages): accepted here $l, forwarded to smtp-sink $f"
awk -v l="$l" -v f="$f" 'BEGIN { printf "forwarded / accepted here: %.2f\n", f / l }'
