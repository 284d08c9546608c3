#!/usr/bin/env bash
# test-smtpload.sh -- checks of bench/smtpload against smtp-sink and aiosmtpd
# (both from bench/setup.sh), on 127.0.0.1 only, bounded in time; prints TAP.
# Every server it starts is stopped by its PID on exit.
#
#	bench/test-smtpload.sh        (builds bench/build/smtpload if missing)
set -u
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOAD="$BENCH/build/smtpload"
SINKPORT=24591 AIOPORT=24592
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done' EXIT

[ -x "$LOAD" ] || { mkdir -p "$BENCH/build" && gcc -O2 -Wall -o "$LOAD" "$BENCH/smtpload.c"; } || exit 1
n=0 failed=0
check() {	# check NAME COMMAND...: ok if the command succeeds
	local name=$1; shift
	n=$((n + 1))
	if "$@" >/tmp/smtpload-test.out 2>&1; then echo "ok $n - $name"
	else failed=$((failed + 1)); echo "not ok $n - $name"; sed 's/^/# /' /tmp/smtpload-test.out; fi
}
fails() { ! "$@"; }
listening() {	# wait (bounded) until something listens on port $1
	local i
	for i in $(seq 100); do
		ss -ltn "sport = :$1" | grep -q LISTEN && return 0
		sleep 0.05
	done
	return 1
}
output_has() { "${@:2}" | grep -q -- "$1"; }

/usr/sbin/smtp-sink -u nobody -h test.example.com -m 300 127.0.0.1:$SINKPORT 256 & pids+=($!)
/usr/bin/python3 "$BENCH/peers/aiosmtpd/server.py" $AIOPORT & pids+=($!)
listening $SINKPORT && listening $AIOPORT || { echo "Bail out! servers did not start"; exit 1; }

echo "1..9"
check "many messages per connection, exactly -m delivered" \
	output_has "messages=500 .*connections=20$" $LOAD -d -s 20 -m 500 -T 20 127.0.0.1:$SINKPORT
check "a connection per message" \
	output_has "messages=60 .*connections=60$" $LOAD -s 7 -m 60 -T 20 127.0.0.1:$SINKPORT
check "-c bounds connects without losing messages" \
	output_has "messages=61 .*connections=61$" $LOAD -c 2 -s 9 -m 61 -T 20 127.0.0.1:$SINKPORT
check "100 KiB bodies and 5 recipients" \
	output_has "messages=40 " $LOAD -d -s 4 -m 40 -l 102400 -r 5 -T 20 127.0.0.1:$SINKPORT
check "aiosmtpd (pipelining) accepts the same dialogue" \
	output_has "messages=200 " $LOAD -d -s 5 -m 200 -r 2 -T 20 127.0.0.1:$AIOPORT
check "a rejected recipient is an error (exit 1)" \
	fails $LOAD -d -s 1 -m 3 -t invalid@example.com -T 20 127.0.0.1:$AIOPORT
check "a refused connection is an error" \
	fails $LOAD -s 1 -m 1 -T 5 127.0.0.1:1
check "-i holds idle connections and reports them" \
	output_has "^ready 50 " $LOAD -i -s 50 -T 20 127.0.0.1:$AIOPORT </dev/null
check "bad options are refused" fails $LOAD -r 0 127.0.0.1:$SINKPORT
echo "# $((n - failed)) passed, $failed failed"
[ "$failed" = 0 ]
