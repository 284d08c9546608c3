#!/usr/bin/env bash
# setup.sh -- install every peer of the benchmark (idempotent; Debian 12, root).
# Uses only apt (Debian archive) and npm (registry). Starts no service.
#
#   apt : postfix (smtp-source, smtp-sink, and a private smtpd instance),
#         python3-aiosmtpd, python3-matplotlib (the chart), swaks,
#         util-linux/iproute2/procps (taskset, unshare, ss), gcc
#   apt : opensmtpd is NOT installed (its package conflicts with postfix: both
#         are "the system MTA"); its .deb is fetched with apt-get download and
#         unpacked into peers/opensmtpd/root (git-ignored). Optional: a failure
#         there only drops the OpenSMTPD column.
#   npm : Haraka and smtp-server into peers/node_modules (git-ignored),
#         versions pinned by peers/package.json (+ package-lock.json)
#
# Postfix is installed without a system configuration and never started:
# debconf is preseeded with "No configuration", and an executable
# /usr/sbin/policy-rc.d answering 101 forbids invoke-rc.d to start anything
# during the install (one that this script created is removed afterwards).
set -eu
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }

need=()
for p in postfix python3 python3-aiosmtpd python3-matplotlib swaks util-linux \
         iproute2 procps gcc libc6-dev libevent-2.1-7 libdb5.3 libssl3 libpam0g \
         zlib1g libcrypt1; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	made_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# benchmark setup: start no service while installing\nexit 101\n' \
		    >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update
	rc=0
	apt-get install -y --no-install-recommends "${need[@]}" || rc=$?
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	[ "$rc" = 0 ] || { echo "setup.sh: apt-get install failed" >&2; exit 1; }
fi

# OpenSMTPD (optional): unpack the Debian package without installing it
OSROOT="$BENCH/peers/opensmtpd/root"
if [ ! -x "$OSROOT/usr/sbin/smtpd" ]; then
	tmp=$(mktemp -d /tmp/smtp-bench-deb.XXXXXX)
	chmod 777 "$tmp"	# apt-get download runs as _apt
	if ( cd "$tmp" && apt-get download opensmtpd ); then
		rm -rf "$OSROOT"; mkdir -p "$OSROOT"
		dpkg-deb -x "$tmp"/opensmtpd_*.deb "$OSROOT"
	else
		echo "setup.sh: WARNING could not fetch opensmtpd; its column will be skipped" >&2
	fi
	rm -rf "$tmp"
fi

# Node peers (Haraka 3 needs node >= 20)
command -v node >/dev/null || apt-get install -y --no-install-recommends nodejs npm
nodemajor=$(node -p 'process.versions.node.split(".")[0]')
[ "$nodemajor" -ge 20 ] || echo "setup.sh: WARNING node $(node -v) < 20; Haraka 3 needs >= 20" >&2
if [ ! -e "$BENCH/peers/node_modules/Haraka/bin/haraka" ] || \
   [ ! -e "$BENCH/peers/node_modules/smtp-server/package.json" ]; then
	( cd "$BENCH/peers" && npm install --no-audit --no-fund --loglevel=error )
fi

# sanity
[ "$(ulimit -Hn)" -ge 4200 ] || echo "setup.sh: WARNING hard 'ulimit -n' $(ulimit -Hn) < 4200: S5 needs ~2000 fds per side" >&2
for f in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/lib/postfix/sbin/master \
         "$BENCH/peers/node_modules/Haraka/bin/haraka" \
         "$BENCH/peers/node_modules/smtp-server/package.json"; do
	[ -e "$f" ] || { echo "setup.sh: missing $f" >&2; exit 1; }
done
/usr/bin/python3 -c 'import aiosmtpd, matplotlib' || { echo "setup.sh: aiosmtpd/matplotlib not importable by /usr/bin/python3" >&2; exit 1; }
echo "setup.sh: all peers installed"
