#!/usr/bin/env bash
# forward.sh -- the forwarding benchmark (Debian 12, as root): luasmtpd's
# plain S1, Haraka 3's smtp_forward and luasmtpd forwarding, each to the same
# smtp-sink next hop, side by side in one run (bench/forward.py).
#
#	bench/forward.sh [--skip-build] [forward.py options...]
#
# Assumes bench/setup.sh ran (Haraka in bench/peers/node_modules, or give
# --haraka-modules DIR / $HARAKA_MODULES), builds build-bench/luasmtpd
# (release) unless --skip-build.  forward.py options: --forward-policy PATH
# (the luasmtpd forwarding row's script, "" to skip it), --scenarios S1,S3,
# --rounds N, --seconds S, --server-cpu C, --load-cpu C, --binary PATH, --out FILE.json.
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
[ "$(id -u)" = 0 ] || { echo "forward.sh: run as root (smtp-sink -u nobody, taskset)" >&2; exit 1; }

build=1
args=()
for a in "$@"; do
	case "$a" in
	--skip-build)	build=0 ;;
	*)		args+=("$a") ;;
	esac
done
if [ "$build" = 1 ]; then
	( cd "$REPO" &&
	  if [ -f build-bench/build.ninja ]; then meson configure build-bench --buildtype=release
	  else meson setup build-bench --buildtype=release; fi &&
	  ninja -C build-bench luasmtpd )
fi
exec /usr/bin/python3 "$BENCH/forward.py" ${args[@]+"${args[@]}"}
