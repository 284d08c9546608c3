#!/usr/bin/python3
"""forward.py -- forwarding side by side: luasmtpd's plain S1, Haraka's smtp_forward, luasmtpd forwarding.

Owns the forwarding rows of the benchmark.  One smtp-sink is the next hop
(pinned to the load CPU, with -c so that what reached it is counted); on
the server CPU, one at a time and in turn for --rounds rounds:
  luasmtpd            the plain bench policy (peers/luasmtpd/policy.lua): the reference
  haraka forward      Haraka 3 with queue/smtp_forward to the sink (peers/haraka-forward)
  luasmtpd forward    --forward-policy (default peers/luasmtpd/policy-forward.lua:
                      message:forward to $NEXT_HOP_HOST:$NEXT_HOP_PORT); skipped with
                      --forward-policy ""
Each load is bench.py's (warm-up, then about --seconds; measured again while
other work took the server's core, up to --tries), with smtp-source.  The
report gives per row the median rate, its spread over the rounds, CPU time per
message, the ratio to plain luasmtpd of the same round (median over rounds) and
what the sink counted.  Rows that fail (a build without message:forward
answers 451) say why.  Uses bench.py's Server, loads and /proc readings.
"""
import argparse
import json
import os
import re
import resource
import statistics
import sys
import time

sys.dont_write_bytecode = True	# no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same helpers as the main benchmark)

BENCH, REPO = bench.BENCH, bench.REPO
SINK_PORT = 24540


def sink_count(sink):
	"""Messages smtp-sink -c counted so far (its last counter on stdout)."""
	try:
		with open(sink.logpath, "rb") as f:
			nums = re.findall(rb"(\d+)", f.read()[-4096:])
		return int(nums[-1]) if nums else 0
	except OSError:
		return 0


def main():
	ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
	ap.add_argument("--binary", help="luasmtpd (default build-bench/luasmtpd, else build/luasmtpd)")
	ap.add_argument("--forward-policy", default=os.path.join(BENCH, "peers", "luasmtpd", "policy-forward.lua"),
	                help='the luasmtpd forwarding row\'s policy ("" skips the row)')
	ap.add_argument("--haraka-modules", default=os.environ.get("HARAKA_MODULES",
	                os.path.join(BENCH, "peers", "node_modules")),
	                help="where Haraka is installed (setup.sh: peers/node_modules)")
	ap.add_argument("--scenarios", default="S1", help="S1 and/or S3")
	ap.add_argument("--rounds", type=int, default=3)
	ap.add_argument("--seconds", type=float, default=3.0)
	ap.add_argument("--max-messages", type=int, default=300000)
	ap.add_argument("--timeout", type=int, default=60)
	ap.add_argument("--max-others", type=float, default=0.10)
	ap.add_argument("--tries", type=int, default=2)
	ap.add_argument("--server-cpu", default="0")
	ap.add_argument("--load-cpu", default="1")
	ap.add_argument("--out", default=os.path.join(BENCH, "results", "forward.json"))
	args = ap.parse_args()
	resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)

	binary = args.binary
	if not binary:
		for b in ("build-bench", "build"):
			if os.access(os.path.join(REPO, b, "luasmtpd"), os.X_OK):
				binary = os.path.join(REPO, b, "luasmtpd")
				break
	if not binary:
		sys.exit("forward.py: no luasmtpd binary (build it, or give --binary)")
	lua = "exec %s --workers 1 --log-level warn --listen 127.0.0.1:$PORT --ready-file $READY " % binary
	env = {"NEXT_HOP_HOST": "127.0.0.1", "NEXT_HOP_PORT": str(SINK_PORT),
	       "HARAKA_MODULES": args.haraka_modules}
	rows = [("luasmtpd", 24541, lua + os.path.join(BENCH, "peers", "luasmtpd", "policy.lua"))]
	if os.path.exists(os.path.join(args.haraka_modules, "Haraka", "bin", "haraka")):
		rows.append(("haraka-forward", 24542,
		             "exec %s/peers/haraka-forward/start.sh $PORT %d" % (BENCH, SINK_PORT)))
	else:
		bench.log("no Haraka in %s (bench/setup.sh installs it): its row is skipped" % args.haraka_modules)
	if args.forward_policy:
		rows.append(("luasmtpd-forward", 24543, lua + args.forward_policy))

	sink_cmd = "exec /usr/sbin/smtp-sink %s-c -h sink.bench.example -m 4000 127.0.0.1:$PORT 4096" % (
		"-u nobody " if os.geteuid() == 0 else "")
	sink = bench.Server("smtp-sink-next-hop", SINK_PORT, sink_cmd, args.load_cpu, {})
	sink.start()
	results = {name: [] for name, _, _ in rows}
	failures = {}
	try:
		for rnd in range(args.rounds):
			for name, port, cmd in rows:
				if name in failures:
					continue
				for scen in args.scenarios.split(","):
					server = bench.Server(name, port, cmd, args.server_cpu, env)
					try:
						server.start()
						before = sink_count(sink)
						r = bench.run_load_quiet(server, "smtp-source", scen, args)
						time.sleep(0.2)	# smtp-sink's counter is written as it goes; let the last print land
						r["sink_delta"] = sink_count(sink) - before
						r["scenario"], r["round"] = scen, rnd
						results[name].append(r)
						bench.log("round %d %s %s: %.0f msg/s, %.0f us CPU/msg, sink +%d"
						          % (rnd + 1, name, scen, r["rate"], r["cpu_us_per_msg"], r["sink_delta"]))
					except Exception as e:  # a row that cannot run says why, the others go on
						failures[name] = str(e)[:300]
						bench.log("%s: %s" % (name, failures[name]))
					finally:
						server.stop()
	finally:
		sink.stop()

	load = os.getloadavg()
	lines = ["| row | scenario | msg/s (median) | min–max over rounds | CPU µs/msg | ÷ plain luasmtpd (same round) | the sink got (warm-ups, tries) / measured |",
	         "|---|---|---|---|---|---|---|"]
	for name, _, _ in rows:
		if name in failures:
			lines.append("| %s | | failed: %s | | | | |" % (name, failures[name].replace("|", "/")))
			continue
		for scen in args.scenarios.split(","):
			rs = [r for r in results[name] if r["scenario"] == scen]
			if not rs:
				continue
			ref = {r["round"]: r["rate"] for r in results["luasmtpd"] if r["scenario"] == scen}
			ratios = [r["rate"] / ref[r["round"]] for r in rs if r["round"] in ref]
			lines.append("| %s | %s | %.0f | %.0f–%.0f | %.0f | %s | %d / %d |" % (
				name, scen, statistics.median(r["rate"] for r in rs),
				min(r["rate"] for r in rs), max(r["rate"] for r in rs),
				statistics.median(r["cpu_us_per_msg"] for r in rs),
				"%.2f" % statistics.median(ratios) if ratios else "–",
				sum(r["sink_delta"] for r in rs), sum(r["messages"] for r in rs)))
	report = "\n".join(lines)
	print(report)
	print("load average at the end: %.2f %.2f %.2f; server CPU %s, load and sink CPU %s"
	      % (load + (args.server_cpu, args.load_cpu)))
	os.makedirs(os.path.dirname(args.out), exist_ok=True)
	with open(args.out, "w") as f:
		json.dump({"rows": results, "failures": failures, "loadavg": load, "binary": binary,
		           "report": report, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
	return 1 if failures else 0


if __name__ == "__main__":
	sys.exit(main())
