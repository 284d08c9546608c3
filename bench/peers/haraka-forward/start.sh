#!/usr/bin/env bash
# Haraka forwarding peer: ./start.sh PORT NEXT_HOP_PORT  (foreground, single process)
# The haraka peer's config (../haraka/config) with this folder's files over it:
# the policy plugin without its discarding queue hook, then Haraka's own
# queue/smtp_forward to 127.0.0.1:NEXT_HOP_PORT (a before-queue forward: the
# client hears 250 once the next hop said it).  $HARAKA_MODULES: where Haraka
# is installed (default ../node_modules, as setup.sh installs it).
set -eu
PORT=${1:?port}
NEXT=${2:?next hop port}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULES=${HARAKA_MODULES:-$HERE/../node_modules}
RUN=/tmp/smtp-bench/haraka-forward.$PORT
rm -rf "$RUN"; mkdir -p "$RUN"
cp -r "$HERE/../haraka/config" "$RUN/"
cp -r "$HERE/config/." "$RUN/config/"
cp -r "$HERE/plugins" "$RUN/"
echo "listen=127.0.0.1:$PORT" >>"$RUN/config/smtp.ini"
printf 'host=127.0.0.1\nport=%s\n' "$NEXT" >>"$RUN/config/smtp_forward.ini"
exec node "$MODULES/Haraka/bin/haraka" -c "$RUN"
