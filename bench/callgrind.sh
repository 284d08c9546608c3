#!/usr/bin/env bash
# bench/callgrind.sh -- server instructions per message, counted by callgrind.
#
# Instruction counts do not move with what else the machine is doing, so this
# is the figure to compare two commits by (bench/run.sh's rates and CPU times
# are the figures to compare servers by).  Starts the server under
# valgrind --tool=callgrind with the bench policy, sends N messages with
# smtp-source, and again 1 message; prints (total(N) - total(1)) / (N - 1):
# the cost of a message without start-up and shutdown.  smtp-sink's figure for
# the same load is printed alongside as the reference.
#
#   bench/callgrind.sh [-b BINARY] [-n MESSAGES] [-r RECIPIENTS] [-k DIR] [-s] [-S STORES]
#                      [-l LEVEL] [-a 'SERVER ARGS']
#
# -k DIR keeps the callgrind outputs (DIR/luasmtpd.N.out ...) for
# callgrind_annotate --inclusive=yes; -s skips smtp-sink's reference run.
# -S lmdb,redis also runs bench/run.sh's store rows (policy-store.lua; LMDB
# in a fresh --state-dir under /dev/shm, Redis on a private redis-server that
# runs under callgrind too, its instructions counted with the server's as
# run.sh counts its CPU time) and prints each as a ratio to plain luasmtpd.
# -l sets the server's --log-level (warn: no line per message or connection;
# info: the summary lines, what a production server logs), -a adds options
# (-a '--log-format json').  The log goes to a file, as under a supervisor.
#
# Needs valgrind and smtp-source (bench/setup.sh installs postfix), and a
# release build (bench/run.sh makes build-bench/luasmtpd).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$BENCH/../build-bench/luasmtpd"
n=2000
rcpts=1
keep=
peers="luasmtpd smtp-sink"
stores=
level=warn
server_args=
while getopts "b:n:r:k:sS:l:a:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	r) rcpts=$OPTARG ;;
	k) keep=$OPTARG; mkdir -p "$keep" ;;
	s) peers=luasmtpd ;;
	S) stores=$OPTARG ;;
	l) level=$OPTARG ;;
	a) server_args=$OPTARG ;;
	*) echo "usage: $0 [-b BINARY] [-n MESSAGES] [-r RECIPIENTS] [-k DIR] [-s] [-S lmdb,redis] [-l LEVEL] [-a ARGS]" >&2; exit 2 ;;
	esac
done
for tool in valgrind callgrind_annotate smtp-source /usr/sbin/smtp-sink; do
	command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is missing" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "callgrind.sh: no $bin (build it, or -b BINARY)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/luasmtpd-callgrind.XXXXXX)
redis_pid=
trap '[ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
for st in ${stores//,/ }; do
	case $st in
	lmdb) peers="$peers luasmtpd-lmdb" ;;
	redis) peers="$peers luasmtpd-redis"
		command -v redis-server >/dev/null || { echo "callgrind.sh: redis-server is missing" >&2; exit 1; } ;;
	*) echo "callgrind.sh: -S takes lmdb and/or redis" >&2; exit 2 ;;
	esac
done

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'; }

# total instructions of one server run that received $1 messages
count() {	# what messages
	local what=$1 messages=$2 port pid out=$tmp/cg.out rport= rout=$tmp/redis.out extra=0
	local policy=policy.lua state=
	port=$(free_port)
	rm -f "$out" "$rout" "$tmp/ready"
	if [ "$what" = luasmtpd-redis ]; then
		rport=$(free_port)
		mkdir -p "$tmp/redis"
		valgrind --tool=callgrind --callgrind-out-file="$rout" redis-server --bind 127.0.0.1 \
		    --port "$rport" --dir "$tmp/redis" --save '' --appendonly no --daemonize no \
		    >"$tmp/redis.log" 2>&1 &
		redis_pid=$!
		for _ in $(seq 300); do ss -ltn | grep -q ":$rport " && break; sleep 0.1; done
	fi
	if [ "${what#luasmtpd}" != "$what" ]; then
		state=$(mktemp -d /dev/shm/luasmtpd-callgrind.XXXXXX)
		[ "$what" = luasmtpd ] || policy=policy-store.lua
		BENCH_STORE=${what#luasmtpd-} BENCH_REDIS=127.0.0.1:$rport \
		valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --workers 0 \
		    --log-level "$level" $server_args --listen "127.0.0.1:$port" --ready-file "$tmp/ready" \
		    --state-dir "$state" "$BENCH/peers/luasmtpd/$policy" 2>"$tmp/server.log" &
		pid=$!
		for _ in $(seq 300); do [ -f "$tmp/ready" ] && break; sleep 0.1; done
	else
		# as root so that callgrind can write its output (-u nobody could not)
		valgrind --tool=callgrind --callgrind-out-file="$out" /usr/sbin/smtp-sink -u root \
		    "127.0.0.1:$port" 100 2>"$tmp/server.log" &
		pid=$!
		for _ in $(seq 300); do ss -ltn | grep -q ":$port " && break; sleep 0.1; done
	fi
	smtp-source -s 5 -d -l 1024 -r "$rcpts" -m "$messages" -M bench.example.com \
	    -f sender@example.com -t rcpt@example.com "127.0.0.1:$port"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	[ -z "$state" ] || rm -rf "$state"
	if [ -n "$redis_pid" ]; then
		kill "$redis_pid"
		wait "$redis_pid" 2>/dev/null || true
		redis_pid=
		extra=$(total "$rout")
		[ -z "$keep" ] || cp "$rout" "$keep/redis-server.$messages.out"
	fi
	[ -z "$keep" ] || cp "$out" "$keep/$what.$messages.out"
	echo $(( $(total "$out") + extra ))
}

plain=
for what in $peers; do
	one=$(count "$what" 1)
	all=$(count "$what" "$n")
	per=$(( (all - one) / (n - 1) ))
	[ "$what" != luasmtpd ] || plain=$per
	ratio=
	[ "${what#luasmtpd-}" = "$what" ] || [ -z "$plain" ] ||
		ratio=$(awk -v a="$per" -v b="$plain" 'BEGIN { printf "  %.3fx plain luasmtpd", a / b }')
	printf '%-14s %8d instructions per message (%d messages, %d recipient(s) each)%s\n' \
	    "$what" "$per" "$n" "$rcpts" "$ratio"
done
