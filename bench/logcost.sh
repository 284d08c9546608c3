#!/usr/bin/env bash
# bench/logcost.sh -- what the summary lines cost per message, in instructions.
#
# Runs bench/callgrind.sh on the same binary at --log-level warn (no line per
# message or connection) and at info (a transaction line per message, a
# connection line per connection, as text and as JSON), and prints each
# figure with its ratio to warn's.  The load is callgrind.sh's: smtp-source,
# 5 sessions, many 1 KiB messages per connection (S1's shape).
#
#   bench/logcost.sh [-b BINARY] [-n MESSAGES]
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$BENCH/../build-bench/luasmtpd"
n=2000
while getopts "b:n:" o; do
	case $o in
	b) bin=$OPTARG ;;
	n) n=$OPTARG ;;
	*) echo "usage: $0 [-b BINARY] [-n MESSAGES]" >&2; exit 2 ;;
	esac
done
per_msg() { "$BENCH/callgrind.sh" -s -n "$n" -b "$bin" "$@" | awk '{ print $2 }'; }
warn=$(per_msg -l warn)
text=$(per_msg -l info)
json=$(per_msg -l info -a "--log-format json")
printf 'warn (no summary lines) %8d instructions per message\n' "$warn"
for row in "info, text:$text" "info, json:$json"; do
	name=${row%%:*} v=${row##*:}
	printf '%-23s %8d instructions per message (%+.1f%%)\n' "$name" "$v" \
	    "$(echo "scale=4; ($v - $warn) * 100 / $warn" | bc)"
done
