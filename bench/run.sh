#!/usr/bin/env bash
# run.sh -- the whole benchmark in one go (Debian 12, as root).
#
# Installs the peers (setup.sh), the build dependencies (.ci/install-deps),
# builds luasmtpd in release mode (build-bench/ at the top of the checkout)
# and bench/build/smtpload, runs every scenario against every peer
# (bench.py) and writes bench/results/latest.json, docs/benchmarks.{md,png} (report.py).
#
#	bench/run.sh [--skip-setup] [--skip-build] [bench.py options...]
#
# bench.py options: --only a,b  --scenarios S1,..,S5  --generators
# smtp-source,smtpload  --seconds S  --workers N  --server-cpu C  --load-cpu C
# --variants lmdb,redis,ops,forward (the rows measured against plain luasmtpd)
# (bench/bench.py --help).  With --out FILE.json (a trial run) the report
# goes to FILE.md and FILE.png instead of docs/.  Exit status: 0 when every load ran, 1 otherwise
# (the report is written either way).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (installs packages, starts Postfix/OpenSMTPD in private namespaces)" >&2; exit 1; }

setup=1 build=1
args=() out=() prev=
for a in "$@"; do
	case "$a" in
	--skip-setup)	setup=0 ;;
	--skip-build)	build=0 ;;
	--out=*)	out=("${a#--out=}" "${a#--out=}"); args+=("$a") ;;
	*)		[ "$prev" = --out ] && out=("$a" "${a%.json}")
			args+=("$a") ;;
	esac
	prev="$a"
done

if [ "$setup" = 1 ]; then
	"$BENCH/setup.sh"
	[ -x "$REPO/.ci/install-deps" ] && "$REPO/.ci/install-deps" run
fi

if [ "$build" = 1 ]; then
	mkdir -p "$BENCH/build"
	gcc -O2 -Wall -Wextra -o "$BENCH/build/smtpload" "$BENCH/smtpload.c"
	if ( cd "$REPO" &&
	     if [ -f build-bench/build.ninja ]; then
		meson configure build-bench --buildtype=release
	     else
		meson setup build-bench --buildtype=release
	     fi && ninja -C build-bench luasmtpd ); then
		echo "run.sh: built $REPO/build-bench/luasmtpd"
	else
		echo "run.sh: WARNING luasmtpd did not build; its rows will be skipped" >&2
		rm -f "$REPO/build-bench/luasmtpd"
	fi
fi

rc=0
/usr/bin/python3 "$BENCH/bench.py" ${args[@]+"${args[@]}"} || rc=$?
/usr/bin/python3 "$BENCH/report.py" ${out[@]+"${out[@]}"}
echo "run.sh: results in ${out[1]:-docs/benchmarks}.md and ${out[1]:-docs/benchmarks}.png"
exit "$rc"
