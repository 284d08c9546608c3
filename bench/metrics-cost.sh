#!/usr/bin/env bash
# bench/metrics-cost.sh -- what counting the metrics costs per message, in
# callgrind instructions: HEAD's luasmtpd (committed work only) against the
# same load on a build of REV without them (a commit before the metrics), both release
# builds, measured in the same run by bench/callgrind.sh (S1's message:
# 1 KiB, 1 recipient, many messages per connection, the bench policy with
# listeners on HELO, MAIL, RCPT, data and end).
#
#   bench/metrics-cost.sh [-n MESSAGES] [-r ROUNDS] REV
#
# How many reads a message takes varies with smtp-source's timing, which
# moves a single figure by a percent or two: the builds are measured ROUNDS
# times each, alternately, and the medians compared.  Prints every figure,
# the medians and the ratio.  The counting runs whether or not
# --metrics is given (only serving needs it), so REV is the "without".
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$BENCH/.."
n=1000
rounds=3
while getopts "n:r:" o; do
	case $o in
	n) n=$OPTARG ;;
	r) rounds=$OPTARG ;;
	*) echo "usage: $0 [-n MESSAGES] [-r ROUNDS] REV" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-n MESSAGES] [-r ROUNDS] REV" >&2; exit 2; }
rev=$1
tmp=$(mktemp -d /tmp/luasmtpd-metrics-cost.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# REV's tree and HEAD's, built as bench/run.sh builds, in directories whose
# paths have the same length: the Lua library's path is in every chunk name,
# and a longer one alone costs instructions in Lua's string handling
mkdir "$tmp/a" "$tmp/b"
git -C "$REPO" archive "$rev" | tar -x -C "$tmp/a"
git -C "$REPO" archive HEAD | tar -x -C "$tmp/b"
for d in a b; do
	(cd "$tmp/$d" && meson setup build-bench --buildtype=release >/dev/null &&
	    ninja -C build-bench luasmtpd >/dev/null)
done

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: >"$tmp/without"
: >"$tmp/with"
for i in $(seq "$rounds"); do
	"$BENCH/callgrind.sh" -s -n "$n" -b "$tmp/a/build-bench/luasmtpd" | awk '{ print $2 }' >>"$tmp/without"
	"$BENCH/callgrind.sh" -s -n "$n" -b "$tmp/b/build-bench/luasmtpd" | awk '{ print $2 }' >>"$tmp/with"
done
without=$(median <"$tmp/without")
with=$(median <"$tmp/with")
printf 'without metrics (%s): %s -> median %d instructions per message\n' "$rev" \
    "$(tr '\n' ' ' <"$tmp/without")" "$without"
printf 'with metrics (HEAD):         %s -> median %d instructions per message\n' \
    "$(tr '\n' ' ' <"$tmp/with")" "$with"
awk -v a="$without" -v b="$with" 'BEGIN { printf "cost: %+d instructions per message, %+.2f%%\n", b - a, (b - a) * 100 / a }'
