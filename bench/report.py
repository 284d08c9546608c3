#!/usr/bin/python3
"""report.py -- turn bench.py's raw results into a Markdown table and a chart.

Owns: docs/benchmarks.md (tables per load generator: messages/s, server CPU
time per message, server memory, each with its ratio to smtp-sink of the same
run; KiB per idle connection; which side saturated; the variant rows
(luasmtpd with smtp.store, with its info log and metrics, forwarding, and
Haraka forwarding) with their ratio to plain luasmtpd of the same run, their
target and whether it was met) and docs/benchmarks.png.

	report.py [results/latest.json [OUTBASE]]   (writes OUTBASE.md and OUTBASE.png;
	                                            default docs/benchmarks)
"""
import json
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
BASE = "smtp-sink"
SATURATED = 0.90	# a core busy at least this share of the wall time
PLAIN = "luasmtpd"	# the variant rows are ratios to this row, same scenario


def variants(res):
	"""label -> {scenario: target or None}; results of before the variant rows
	had only the store rows, of S1 (label -> target)."""
	if "variant_rows" in res:
		return res["variant_rows"]
	return {label: {"S1": t} for label, t in res.get("store_rows", {}).items()}


def main_peers(res):
	"""The peers of the side-by-side tables: all but the variant rows, which
	have a section of their own."""
	return [p for p in res["peers"] if p not in variants(res)]


def fmt_num(v):
	if v is None:
		return "–"
	if v >= 100:
		return "{:,.0f}".format(v)
	if v >= 10:
		return "{:.1f}".format(v)
	return "{:.2f}".format(v)


def cell(v, base):
	if v is None:
		return "–"
	if base and base > 0 and v is not None:
		return "%s (%.2f×)" % (fmt_num(v), v / base)
	return fmt_num(v)


def table(head, rows):
	out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
	out += ["| " + " | ".join(r) + " |" for r in rows]
	return "\n".join(out)


def matrix(res, gen, metric, scale=1.0):
	"""Rows of scenario x peer for one generator and metric, with ratios."""
	rows = []
	for scen, title in res["scenarios"].items():
		if scen == "S5":
			continue
		base = res["loads"].get("%s|%s|%s" % (gen, scen, BASE), {}).get(metric)
		base = base * scale if base is not None else None
		row = ["%s %s" % (scen, title)]
		for peer in main_peers(res):
			r = res["loads"].get("%s|%s|%s" % (gen, scen, peer))
			if r is None:
				err = res["errors"].get("%s|%s|%s" % (gen, scen, peer))
				row.append("failed" if err else "–")
				continue
			v = r[metric] * scale
			row.append(fmt_num(v) if peer == BASE else cell(v, base))
		rows.append(row)
	return rows


def idle_row(res):
	base = res["idle"].get(BASE, {}).get("kib_per_conn")
	row = ["S5 " + res["scenarios"].get("S5", "idle connections")]
	for peer in main_peers(res):
		r = res["idle"].get(peer)
		if r is None:
			row.append("failed" if ("idle|S5|" + peer) in res["errors"] else "–")
		else:
			v = r["kib_per_conn"]
			row.append(fmt_num(v) if peer == BASE else cell(v, base))
	return row


def share(r):
	if r is None:
		return "–"
	return "%d%% / %d%% / %d%%" % (100 * r["server_core"], 100 * r["generator_core"],
	                               100 * r.get("others_on_server_cpus", 0))


def saturation_notes(res, gen):
	notes = []
	for scen in res["scenarios"]:
		for peer in main_peers(res):
			r = res["loads"].get("%s|%s|%s" % (gen, scen, peer))
			if r is None:
				continue
			s, g = r["server_core"], r["generator_core"]
			if g >= SATURATED and s < SATURATED:
				notes.append("%s %s: the generator was the ceiling (generator core %d%%, "
				             "server core %d%%)" % (scen, peer, 100 * g, 100 * s))
	return notes


def variant_rows(res):
	"""The variant rows, per generator and scenario, as ratios to plain
	luasmtpd's rate of the same scenario and run, with their targets (and the
	row each must be ahead of)."""
	rows = []
	plain_label = res.get("plain", PLAIN)
	for gen in res["generators"]:
		vs = variants(res)
		# in the order they ran (the results' keys are sorted)
		for label in sorted(vs, key=lambda l: res["peers"].index(l) if l in res["peers"] else len(vs)):
			for scen, target in sorted(vs[label].items()):
				plain = res["loads"].get("%s|%s|%s" % (gen, scen, plain_label))
				key = "%s|%s|%s" % (gen, scen, label)
				r = res["loads"].get(key)
				other = res.get("ahead_of", {}).get(label, {}).get(scen)
				want = "≥ %.2f×" % target if target is not None else "– (for comparison)"
				if other:
					want += ", ahead of %s" % other
				if r is None:
					rows.append([gen, label, scen, "failed" if key in res["errors"] else "–", "–",
					             want, "**no**" if target is not None else "–", "–", "–", ""])
					continue
				ratio = r["rate"] / plain["rate"] if plain else None
				met = ratio >= target if ratio is not None and target is not None else None
				notes = []
				if other:
					o = res["loads"].get("%s|%s|%s" % (gen, scen, other))
					if o:
						notes.append("%.2f× %s" % (r["rate"] / o["rate"], other))
						met = met and r["rate"] > o["rate"]
					else:
						notes.append("no %s figure" % other)
						met = False if met is not None else None
				if "next_hop_got" in r:
					notes.append("next hop got %d (measured %d + warm-ups)"
					             % (r["next_hop_got"], r["messages"]))
					alone = res.get("next_hop_alone", {}).get("%s|%s" % (gen, scen))
					if alone:
						note = "the next hop alone took %s msg/s" % fmt_num(alone)
						if plain and target is not None and target * plain["rate"] > alone:
							note += (" (**below the target's %s**: the next hop, not the "
							         "server, is the ceiling)" % fmt_num(target * plain["rate"]))
						notes.append(note)
				if "metrics_accepted" in r:
					notes.append("/metrics after it: %s accepted since start" % r["metrics_accepted"])
				rows.append([gen, label, scen, fmt_num(r["rate"]),
				             "%.2f×" % ratio if ratio is not None else "– (no plain row)",
				             want,
				             "–" if met is None else ("yes" if met else "**no**"),
				             cell(r["cpu_us_per_msg"], plain and plain["cpu_us_per_msg"]),
				             share(r), "; ".join(notes)])
	return rows


def write_md(res, path, png="benchmarks.png"):
	peers = main_peers(res)
	h = res["host"]
	st = res["settings"]
	md = ["# Benchmark: latest run", "",
	      "Written by `bench/report.py` from `%s`; produced by `bench/run.sh` (see "
	      "`bench/README.md`). Chart: [%s](%s)." % (res.get("_source", "bench/results/latest.json"),
	                                              os.path.basename(png), os.path.basename(png)), "",
	      "- started %s, %s s in all; commit `%s`" % (res["started"], res.get("elapsed_s"), res["commit"]),
	      "- %d × %s, Linux %s; load average %s at the start, %s at the end"
	      % (h["cpus"], h["cpu_model"], h["kernel"], " ".join(h["loadavg_start"]),
	         " ".join(h.get("loadavg_end", ["?"]))),
	      "- server pinned to CPU %s (the N-worker row to CPUs %s), load generator to CPU %s; "
	      "loopback only; each load sized to about %s s after a warm-up run"
	      % (st["server_cpu"], st["workers_cpus"], st["load_cpu"], st["seconds"]),
	      "- every programmable peer runs the same policy: any sender, 550 for recipients "
	      "containing \"invalid\", body read and dropped, 250; smtp-sink has no policy",
	      "- ratios are to smtp-sink measured in the same run: for messages/s higher is "
	      "better, for CPU time and memory lower is better. Quote ratios, not absolute figures.",
	      "- CPU time: the server's utime+stime over its whole process tree (children "
	      "included) from /proc, before and after the measured load, divided by the messages. "
	      "Memory: PSS of the server's process tree after the load.", ""]
	if res.get("note"):
		md += ["**Note:** " + res["note"], ""]
	head = ["scenario"] + peers
	for gen in res["generators"]:
		if not any(k.startswith(gen + "|") for k in res["loads"]):
			continue
		md += ["## Load generator: %s" % gen, ""]
		if gen == "smtp-source":
			md += ["Postfix's `smtp-source` (HELO, no pipelining).", ""]
		else:
			md += ["`bench/smtpload` (EHLO, pipelined MAIL/RCPT/DATA groups when PIPELINING "
			       "is advertised, epoll): a faster generator for when smtp-source is the ceiling.", ""]
		md += ["### Messages per second", "", table(head, matrix(res, gen, "rate")), ""]
		md += ["### Server CPU time per message (µs)", "",
		       table(head, matrix(res, gen, "cpu_us_per_msg")), ""]
		md += ["### Server memory after the load (PSS, MiB)", "",
		       table(head, matrix(res, gen, "pss_kib", 1 / 1024)), ""]
		md += ["### Share of a core used: server / generator / others on the server's CPU", "",
		       "\"others\": the server CPU's busy time not spent by the server (other "
		       "work on the machine); well above a few % means the server lacked its core.", "",
		       table(head, [[r[0]] + [share(res["loads"].get(k))
		                               for k in ("%s|%s|%s" % (gen, r[0].split()[0], p) for p in peers)]
		                    for r in matrix(res, gen, "rate")]), ""]
		notes = saturation_notes(res, gen)
		if notes:
			md += ["Where the generator, not the server, was the limit:", ""] + \
			      ["- " + n for n in notes] + [""]
	if res["idle"]:
		md += ["## Memory per idle connection", "",
		       "%d connections from `bench/smtpload -i`, each after its EHLO's 250; "
		       "(server PSS after − before) / %d, KiB." % (st["idle_connections"], st["idle_connections"]), "",
		       table(head, [idle_row(res)]), ""]
	vrows = variants(res)
	if vrows:
		st = res["settings"]
		md += ["## Variant rows: ratios to plain luasmtpd of the same run", "",
		       "Each a server of its own, one worker on the server CPU like the plain `luasmtpd` "
		       "row, measured in the same run; its rate is divided by plain luasmtpd's in the same "
		       "scenario from the same generator, and held to its target (CPU: higher is worse).", ""]
		if any(l.startswith("luasmtpd store=") for l in vrows):
			md += ["- `luasmtpd store=...`: `bench/peers/luasmtpd/policy-store.lua`, the same "
			       "policy plus, for `store=lmdb`, one `db:get` and one `db:set` per recipient on "
			       "the LMDB store (a greylist's lookup and update; default sync, state directory "
			       "in a fresh directory under `%s`, a %s), for `store=redis`, one `db:incr` per "
			       "message on a private `redis-server` (loopback, no persistence, pinned to CPU "
			       "%s; its CPU time counts as the server's)."
			       % (st.get("state_base", "?"), st.get("state_fs", "?"), st.get("redis_cpu", "?"))]
		if "luasmtpd-ops" in vrows:
			md += ["- `luasmtpd-ops`: the plain row's binary and policy with `--log-level info` "
			       "(a summary line per transaction and per connection, to a log file as under a "
			       "supervisor) and `--metrics` on a loopback port, read once after the load (the "
			       "count of accepted messages it gave is in the notes)."]
		if any(l.endswith("-forward") for l in vrows):
			md += ["- `luasmtpd-forward`: `bench/peers/luasmtpd/policy-forward.lua`, each message "
			       "handed on with `message:forward` from the `'DATA'` listener, the client's reply "
			       "the next hop's; `haraka-forward`: Haraka with `queue/smtp_forward` "
			       "(`bench/peers/haraka-forward/`). Both to the same `smtp-sink -c` next hop on the "
			       "load CPU (its CPU time is not the server's); the notes say how many messages "
			       "reached it, and how fast the next hop took the same load alone (the generator "
			       "sending to it directly, both on the load CPU): the most a forwarding row can "
			       "reach."]
		md += ["", table(["generator", "row", "scenario", "messages/s", "÷ plain luasmtpd",
		                  "target", "met", "server CPU µs/msg (÷ plain)",
		                  "server / generator / others", "notes"],
		                 variant_rows(res)), ""]
	if res["skipped"] or res["errors"]:
		md += ["## Skipped and failed", ""]
		md += ["- %s skipped: %s" % (k, v) for k, v in sorted(res["skipped"].items())]
		md += ["- %s failed: %s" % (k.replace("|", " "), v) for k, v in sorted(res["errors"].items())]
		md += [""]
	with open(path, "w") as f:
		f.write("\n".join(md))


def write_png(res, path):
	import matplotlib
	matplotlib.use("Agg")
	import matplotlib.pyplot as plt

	peers = main_peers(res)
	scens = [s for s in res["scenarios"] if s != "S5"]
	gens = [g for g in res["generators"] if any(k.startswith(g + "|") for k in res["loads"])]
	panels = [(g, "rate", "messages/s ÷ smtp-sink (%s)" % g) for g in gens]
	panels += [(gens[-1], "cpu_us_per_msg", "server CPU per message ÷ smtp-sink (%s)" % gens[-1])] \
		if gens else []
	n = len(panels) + (1 if res["idle"] else 0)
	fig, axes = plt.subplots(n, 1, figsize=(11, 3.6 * n), squeeze=False)
	width = 0.8 / max(1, len(peers))
	for ax, (gen, metric, title) in zip(axes[:, 0], panels):
		for i, peer in enumerate(peers):
			vals = []
			for s in scens:
				r = res["loads"].get("%s|%s|%s" % (gen, s, peer))
				b = res["loads"].get("%s|%s|%s" % (gen, s, BASE))
				vals.append(r[metric] / b[metric] if r and b and b[metric] else 0)
			ax.bar([x + i * width for x in range(len(scens))], vals, width, label=peer)
		ax.axhline(1.0, color="black", linewidth=0.8)
		ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(scens))])
		ax.set_xticklabels(["%s\n%s" % (s, res["scenarios"][s]) for s in scens], fontsize=8)
		ax.set_title(title)
		ax.legend(fontsize=7, ncol=4)
	if res["idle"]:
		ax = axes[-1, 0]
		names = [p for p in peers if p in res["idle"]]
		vals = [max(res["idle"][p]["kib_per_conn"], 0.1) for p in names]
		ax.bar(names, vals, color=["C%d" % peers.index(p) for p in names])
		ax.set_yscale("log")
		ax.set_ylabel("KiB")
		ax.set_title("memory per idle connection after EHLO (log scale; lower is better)")
		for x, v in enumerate(vals):
			ax.text(x, v, fmt_num(v), ha="center", va="bottom", fontsize=8)
	fig.suptitle("luasmtpd benchmark, %s (%s)" % (res["started"], res["commit"]))
	fig.tight_layout(rect=(0, 0, 1, 0.97))
	fig.savefig(path, dpi=90)


def main():
	src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(BENCH, "results", "latest.json")
	with open(src) as f:
		res = json.load(f)
	res["_source"] = os.path.relpath(os.path.abspath(src), os.path.dirname(BENCH)) \
		if os.path.abspath(src).startswith(os.path.dirname(BENCH) + os.sep) else src
	# the table and chart are documentation; the raw JSON stays in bench/results
	base = os.path.join(os.path.dirname(BENCH), "docs", "benchmarks")
	if len(sys.argv) > 2:	# elsewhere, e.g. for a trial run
		base = sys.argv[2]
	write_md(res, base + ".md", base + ".png")
	try:
		write_png(res, base + ".png")
	except ImportError as e:	# setup.sh installs python3-matplotlib; the tables do not need it
		print("report: no chart (%s); wrote %s.md" % (e, os.path.relpath(base)))
		return
	print("report: wrote %s.md and %s.png" % (os.path.relpath(base), os.path.relpath(base)))


if __name__ == "__main__":
	main()
