#!/usr/bin/env bash
# bench/proxy-server.sh -- what a PROXY v2 header adds to a connection in the
# server: the same N connections (greeting, QUIT) to a {proxy = true} port
# with a v2 header and to a plain port, the server (--workers 0) counted by
# callgrind (user-space instructions; the same start and stop in both runs
# cancel out) and by strace -c (system calls), then R rounds of the same
# without a wrapper, reading the server's CPU time (user and system, in ns,
# from /proc/PID/schedstat) before and after the connections.  Prints per
# connection: the instructions, system calls and CPU time each way and the
# difference (CPU: the median of the rounds, interleaved plain/proxy).
#
#   bench/proxy-server.sh [-b BINARY] [-n CONNECTIONS] [-r ROUNDS]
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$BENCH/../build/luasmtpd"
n=2000
rounds=5
while getopts "b:n:r:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	r) rounds=$OPTARG ;;
	*) echo "usage: $0 [-b BINARY] [-n CONNECTIONS] [-r ROUNDS]" >&2; exit 2 ;;
	esac
done
for tool in valgrind callgrind_annotate strace python3; do
	command -v "$tool" >/dev/null || { echo "proxy-server.sh: $tool is missing" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/luasmtpd-proxy-server.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "${KEEP:-}" ] && cp "$tmp"/cg.* "$KEEP"/; rm -rf "$tmp"' EXIT
cat >"$tmp/policy.lua" <<'LUA'
local smtp = require "smtp"
smtp.createServer()
  :listen(0, "127.0.0.1", { proxy = true, proxyFrom = { "127.0.0.1" } })
LUA
cat >"$tmp/client.py" <<'PY'
import socket, struct, sys
port, n, proxy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "proxy"
sig = b"\r\n\r\n\x00\r\nQUIT\n"
hdr = sig + b"\x21\x11" + struct.pack("!H", 12) + socket.inet_aton("192.0.2.1") + \
    socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, port)
def until(s, code):
    buf = b""
    while not buf.endswith(b"\r\n") or buf[-1:] != b"\n" or not buf.split(b"\r\n")[-2].startswith(code + b" "):
        d = s.recv(4096)
        if not d:
            raise SystemExit("closed: %r" % buf)
        buf += d
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if proxy:
        s.sendall(hdr)
    until(s, b"220")
    s.sendall(b"QUIT\r\n")
    until(s, b"221")
    s.close()
PY
# one run: $1 = proxy|plain, $2 = wrapper (callgrind or strace); prints the port's figure
run() {
	local mode=$1 port listen
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	sed "s/listen(0,/listen($port,/" "$tmp/policy.lua" >"$tmp/p.lua"
	[ "$mode" = plain ] && sed -i 's/, { proxy = true, proxyFrom = { "127.0.0.1" } }//' "$tmp/p.lua"
	rm -f "$tmp/ready"
	case $2 in
	callgrind) valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$mode" "$bin" --workers 0 \
		--log-level warn --listen "127.0.0.1:$port" --ready-file "$tmp/ready" "$tmp/p.lua" 2>"$tmp/err.$mode" & ;;
	strace) strace -f -c -o "$tmp/st.$mode" "$bin" --workers 0 --log-level warn \
		--listen "127.0.0.1:$port" --ready-file "$tmp/ready" "$tmp/p.lua" 2>"$tmp/err.$mode" & ;;
	cpu) "$bin" --workers 0 --log-level warn --listen "127.0.0.1:$port" \
		--ready-file "$tmp/ready" "$tmp/p.lua" 2>"$tmp/err.$mode" & ;;
	esac
	pid=$!
	for _ in $(seq 600); do [ -s "$tmp/ready" ] && break; sleep 0.1; done
	[ -s "$tmp/ready" ] || { cat "$tmp/err.$mode" >&2; exit 1; }
	[ "$2" = cpu ] && read -r t0 _ </proc/$pid/schedstat
	python3 "$tmp/client.py" "$port" "$n" "$mode"
	if [ "$2" = cpu ]; then
		read -r t1 _ </proc/$pid/schedstat
		echo $((t1 - t0)) >>"$tmp/cpu.$mode"
	fi
	# strace's tracee is its child: stop the server, strace follows it out
	[ "$2" = strace ] && kill -TERM "$(pgrep -P "$pid")" || kill -TERM "$pid"
	wait "$pid" || true
	pid=
}
for mode in plain proxy; do
	run $mode callgrind
	ir[$([ $mode = plain ] && echo 0 || echo 1)]=$(callgrind_annotate "$tmp/cg.$mode" 2>/dev/null |
		awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
	run $mode strace
	sc[$([ $mode = plain ] && echo 0 || echo 1)]=$(awk '/^100.00|total/ { print $(NF-1) == "" ? $3 : $4; exit }' "$tmp/st.$mode")
done
for _ in $(seq "$rounds"); do
	run plain cpu
	run proxy cpu
done
med() { sort -n "$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
cpu0=$(med "$tmp/cpu.plain")
cpu1=$(med "$tmp/cpu.proxy")
# the header not in yet at the accept: the recvfrom that found nothing (EAGAIN)
waited=$(awk '$NF == "recvfrom" && NF == 6 { print $5; exit }' "$tmp/st.proxy")
awk -v n="$n" -v a="${ir[0]}" -v b="${ir[1]}" -v c="${sc[0]}" -v d="${sc[1]}" \
    -v e="$cpu0" -v f="$cpu1" -v r="$rounds" 'BEGIN {
	printf "per connection (%d each): instructions plain %.0f, with a v2 header %.0f: +%.0f\n", n, a / n, b / n, (b - a) / n
	printf "per connection: system calls plain %.2f, with a v2 header %.2f: +%.2f\n", c / n, d / n, (d - c) / n
	printf "per connection: CPU plain %.2f us, with a v2 header %.2f us: %+.2f us (median of %d rounds)\n", \
	    e / n / 1000, f / n / 1000, (f - e) / n / 1000, r
}'
echo "connections whose header was not in at the accept (waited for): ${waited:-0} of $n (under strace)"
