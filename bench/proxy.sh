#!/usr/bin/env bash
# bench/proxy.sh -- what a PROXY protocol header costs per connection
# (target: at most 2 us of CPU for a v2 header).  Builds bench/proxy.c with
# -O2 against src/engine/proxy.c, prints CPU time per header (parse alone; what
# conn.c does at the accept: recv + parse, peek + parse + recv, a miss),
# then callgrind's instruction count per parse of each header (the figure
# a loaded machine does not change).
#
#   bench/proxy.sh [N]
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp=$(mktemp -d /tmp/luasmtpd-proxy-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
n=${1:-1000000}
cc -O2 -D_GNU_SOURCE -I"$BENCH/../src/engine" "$BENCH/proxy.c" "$BENCH/../src/engine/proxy.c" -o "$tmp/proxy-bench"
"$tmp/proxy-bench" "$n"
if command -v valgrind >/dev/null; then
	# instructions of proxy_parse() inclusive, divided by its calls (1000, plus
	# 2 x 100 in the socket loop)
	for kind in v1 v2 v6; do
		valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$kind" "$tmp/proxy-bench" 1000 $kind \
			>/dev/null 2>&1
		callgrind_annotate --inclusive=yes "$tmp/cg.$kind" 2>/dev/null |
			awk -v k=$kind '/proxy_parse/ { gsub(",", "", $1);
				printf "proxy_parse %s: %d instructions per header\n", k, $1 / 1200; exit }'
	done
fi
