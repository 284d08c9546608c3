#!/usr/bin/python3
"""bench.py -- run the benchmark scenarios against every peer and report.

Owns: starting each peer of peers.txt pinned to the server CPU (in a process
group of its own, stopped by that group and by PID), the loads of each
scenario from each load generator pinned to the load CPU, the measurements
(wall time, the server's CPU time and PSS summed over its process tree), and
the raw results (results/latest.json).  report.py turns those into
docs/benchmarks.md and docs/benchmarks.png.  run.sh installs and builds first;
this script assumes that done.

Scenarios (as in the issue):
  S1  1 KiB, 20 sessions, many messages per connection
  S2  1 KiB, 20 sessions, a new connection per message
  S3  100 KiB bodies, 20 sessions, many per connection
  S4  5 recipients per message, 20 sessions, many per connection
  S5  2,000 idle connections after EHLO: (PSS after - PSS before) / 2,000
and variant rows (--variants), each measured against the plain luasmtpd row
of the same run and scenario, with a target for that ratio:
  luasmtpd store=lmdb   S1, one get and one set per recipient on LMDB (temp --state-dir)
  luasmtpd store=redis  S1, one incr per message on a private redis-server
  luasmtpd-ops          S1, --log-level info (a summary line per transaction, to the
                        log file) and --metrics on a free loopback port
  luasmtpd-forward      S1 and S3, message:forward to an smtp-sink next hop
                        (peers/luasmtpd/policy-forward.lua; the sink on the load CPU)
  haraka-forward        S1, Haraka's queue/smtp_forward to the same sink: the forward
                        row must be ahead of it too
Each load scenario first runs a short warm-up whose rate sizes the measured
run to about --seconds.
"""
import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SMTPLOAD = os.path.join(BENCH, "build", "smtpload")
SMTPSOURCE = "/usr/sbin/smtp-source"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = {
	# name: (title, smtp-source-style options, warm-up messages, minimum messages)
	"S1": ("1 KiB, 20 sessions, many msgs per connection",
	       {"s": 20, "d": True, "l": 1024, "r": 1}, 2000, 2000),
	"S2": ("1 KiB, a new connection per message",
	       {"s": 20, "d": False, "l": 1024, "r": 1}, 100, 100),
	"S3": ("100 KiB bodies",
	       {"s": 20, "d": True, "l": 102400, "r": 1}, 200, 200),
	"S4": ("5 recipients per message",
	       {"s": 20, "d": True, "l": 1024, "r": 5}, 1000, 1000),
}
IDLE_CONNECTIONS = 2000
# smtpload -c: connections waiting for their greeting at a time.  OpenSMTPD's
# listen backlog is 5 (hard-coded): more concurrent connects overflow it, and
# with SYN cookies such a connection waits forever for its greeting.
CONNECTING = {"opensmtpd": 4}
# Variant rows: peers.txt name -> (row label, --variants name, {scenario:
# target}).  A target is the least share of plain luasmtpd's rate in the same
# scenario, same run, same generator; None: the row is there for comparison.
VARIANT_ROWS = {
	"luasmtpd-lmdb": ("luasmtpd store=lmdb", "lmdb", {"S1": 0.8}),
	"luasmtpd-redis": ("luasmtpd store=redis", "redis", {"S1": 0.6}),
	"luasmtpd-ops": ("luasmtpd-ops", "ops", {"S1": 0.95}),
	"luasmtpd-forward": ("luasmtpd-forward", "forward", {"S1": 0.5, "S3": 0.7}),
	"haraka-forward": ("haraka-forward", "forward", {"S1": None}),
}
# (row, scenario) -> the variant row it must also be ahead of, same run
AHEAD_OF = {"luasmtpd-forward": {"S1": "haraka-forward"}}
# the scenarios of the forward rows (the next hop alone is measured in each)
FORWARD_SCENARIOS = sorted({s for v in VARIANT_ROWS.values() if v[1] == "forward" for s in v[2]})
# the forward rows' next hop: smtp-sink -c on the load CPU (it counts what got there)
NEXT_HOP_PORT = 24539
REDIS_SERVER = "/usr/bin/redis-server"


def log(msg):
	print("bench: " + msg, flush=True)


# ---------------------------------------------------------------- /proc

def proc_table():
	"""pid -> (ppid, utime+stime+cutime+cstime in ticks) for every process."""
	table = {}
	for name in os.listdir("/proc"):
		if not name.isdigit():
			continue
		try:
			with open("/proc/%s/stat" % name) as f:
				data = f.read()
		except OSError:
			continue
		rest = data[data.rindex(")") + 2:].split()
		# rest[0] is field 3 (state): ppid is field 4, utime..cstime 14..17
		table[int(name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
	return table


def cpus_busy(cpus):
	"""Busy seconds (all but idle and iowait) of the listed CPUs, "0,1" or "0-3"."""
	want = set()
	for part in cpus.split(","):
		lo, _, hi = part.partition("-")
		want.update(range(int(lo), int(hi or lo) + 1))
	busy = 0
	with open("/proc/stat") as f:
		for line in f:
			name = line.split(None, 1)[0]
			if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in want:
				v = [int(x) for x in line.split()[1:9]]
				busy += sum(v) - v[3] - v[4]
	return busy / CLK_TCK


def tree_pids(root, table=None):
	table = table if table is not None else proc_table()
	children = {}
	for pid, (ppid, _) in table.items():
		children.setdefault(ppid, []).append(pid)
	out, todo = [], [root]
	while todo:
		pid = todo.pop()
		if pid in table:
			out.append(pid)
			todo.extend(children.get(pid, []))
	return out


def tree_cpu(root):
	"""CPU seconds used by the tree under root, reaped children included."""
	table = proc_table()
	return sum(table[p][1] for p in tree_pids(root, table)) / CLK_TCK


def server_cpu(server):
	"""CPU seconds of the server's tree and of its helpers (the Redis row's
	redis-server), which work for it."""
	return sum(tree_cpu(pid) for pid in [server.proc.pid] + server.helper_pids)


def tree_pss(root):
	"""PSS of the tree under root, in KiB."""
	total = 0
	for pid in tree_pids(root):
		try:
			with open("/proc/%d/smaps_rollup" % pid) as f:
				for line in f:
					if line.startswith("Pss:"):
						total += int(line.split()[1])
						break
		except OSError:
			pass
	return total


def alive(pid):
	"""True if pid exists and is not a zombie."""
	try:
		with open("/proc/%d/stat" % pid) as f:
			return f.read().rsplit(") ", 1)[1][0] != "Z"
	except (OSError, IndexError):
		return False


def listening(port):
	want = ":%04X" % port
	for path in ("/proc/net/tcp", "/proc/net/tcp6"):
		try:
			with open(path) as f:
				next(f)
				for line in f:
					fields = line.split()
					if fields[1].endswith(want) and fields[3] == "0A":
						return True
		except OSError:
			pass
	return False


# ---------------------------------------------------------------- servers

class Server:
	def __init__(self, name, port, command, cpus, env_extra):
		self.name, self.port, self.command, self.cpus = name, port, command, cpus
		self.ready = "/tmp/smtp-bench/%s.%d.ready" % (name, port)
		self.logpath = "/tmp/smtp-bench/%s.%d.log" % (name, port)
		self.env = dict(os.environ, PORT=str(port), BENCH=BENCH, REPO=REPO,
		                READY=self.ready, **env_extra)
		self.proc = None
		self.helper_pids = []

	def start(self, timeout=30):
		os.makedirs("/tmp/smtp-bench", exist_ok=True)
		if os.path.exists(self.ready):
			os.unlink(self.ready)
		if listening(self.port):
			raise RuntimeError("port %d is already in use" % self.port)
		self.logf = open(self.logpath, "w")
		self.proc = subprocess.Popen(
			["taskset", "-c", self.cpus, "bash", "-c", self.command],
			env=self.env, stdin=subprocess.DEVNULL, stdout=self.logf,
			stderr=subprocess.STDOUT, start_new_session=True)
		deadline = time.monotonic() + timeout
		while time.monotonic() < deadline:
			if self.proc.poll() is not None:
				raise RuntimeError("exited with %d before listening: %s" %
				                   (self.proc.returncode, self.log_tail()))
			if listening(self.port) and ("luasmtpd" not in self.name or
			                             os.path.exists(self.ready)):
				return
			time.sleep(0.05)	# polling the kernel's socket table, bounded
		self.stop()
		raise RuntimeError("not listening on %d after %d s" % (self.port, timeout))

	def log_tail(self):
		try:
			with open(self.logpath) as f:
				return " | ".join(f.read().strip().splitlines()[-3:])
		except OSError:
			return ""

	def stop(self):
		if self.proc is None:
			return
		pids = tree_pids(self.proc.pid)
		if self.proc.poll() is None:
			try:
				os.killpg(self.proc.pid, signal.SIGTERM)
			except ProcessLookupError:
				pass
		for pid in pids:	# members that left the process group
			try:
				os.kill(pid, signal.SIGTERM)
			except ProcessLookupError:
				pass
		try:
			self.proc.wait(timeout=10)
		except subprocess.TimeoutExpired:
			for pid in [self.proc.pid] + pids:
				try:
					os.kill(pid, signal.SIGKILL)
				except ProcessLookupError:
					pass
			self.proc.wait(timeout=10)
		# wait (bounded) for the rest of the tree to go, then kill leftovers
		deadline = time.monotonic() + 10
		while time.monotonic() < deadline:
			left = [p for p in pids if alive(p)]
			if not left:
				break
			time.sleep(0.05)
		else:
			for pid in left:
				try:
					os.kill(pid, signal.SIGKILL)
				except ProcessLookupError:
					pass
		self.proc = None
		self.logf.close()


# ---------------------------------------------------------------- loads

def generator_argv(gen, opts, messages, port, peer, timeout):
	if gen == "smtp-source":
		argv = [SMTPSOURCE, "-s", str(opts["s"]), "-l", str(opts["l"]),
		        "-r", str(opts["r"]), "-m", str(messages), "-M", "bench.example.com",
		        "-f", "sender@example.com", "-t", "rcpt@example.com"]
	else:
		argv = [SMTPLOAD, "-s", str(opts["s"]), "-l", str(opts["l"]),
		        "-r", str(opts["r"]), "-m", str(messages), "-M", "bench.example.com",
		        "-f", "sender@example.com", "-t", "rcpt@example.com", "-T", str(timeout),
		        "-c", str(CONNECTING.get(peer, 100))]
	if opts["d"]:
		argv.insert(1, "-d")
	return argv + ["127.0.0.1:%d" % port]


def run_generator(argv, cpus, timeout):
	"""Run one load; returns (wall seconds, generator CPU seconds)."""
	t0 = time.monotonic()
	timeout += 5	# smtpload bounds itself; this bounds smtp-source too
	p = subprocess.Popen(["taskset", "-c", cpus] + argv, stdin=subprocess.DEVNULL,
	                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
	deadline = t0 + timeout
	out = b""
	while True:
		r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
		if r:
			chunk = os.read(p.stdout.fileno(), 65536)
			if chunk:
				out += chunk
				continue
		break
	if time.monotonic() >= deadline:
		p.kill()
		p.wait()
		raise RuntimeError("load generator timed out after %d s" % timeout)
	_, status, ru = os.wait4(p.pid, 0)
	p.returncode = os.waitstatus_to_exitcode(status)
	wall = time.monotonic() - t0
	if p.returncode != 0:
		raise RuntimeError("load generator failed (%d): %s" %
		                   (p.returncode, out.decode(errors="replace").strip()[-300:]))
	return wall, ru.ru_utime + ru.ru_stime


def run_load(server, gen, scen, args):
	title, opts, warm, minimum = SCENARIOS[scen]
	wall, _ = run_generator(generator_argv(gen, opts, warm, server.port, server.name, args.timeout),
	                        args.load_cpu, args.timeout)
	rate = warm / wall
	n = int(max(minimum, min(args.max_messages, rate * args.seconds)))
	cpu0, busy0 = server_cpu(server), cpus_busy(server.cpus)
	wall, gen_cpu = run_generator(generator_argv(gen, opts, n, server.port, server.name, args.timeout),
	                              args.load_cpu, args.timeout)
	cpu1, busy1 = server_cpu(server), cpus_busy(server.cpus)
	return {
		"messages": n, "seconds": round(wall, 3), "rate": n / wall,
		"server_cpu_s": cpu1 - cpu0,
		"cpu_us_per_msg": (cpu1 - cpu0) * 1e6 / n,
		"server_core": (cpu1 - cpu0) / wall,
		"generator_core": gen_cpu / wall,
		# what else kept the server's CPUs busy (other work on the machine,
		# interrupts); high values mean the server did not have its core
		"others_on_server_cpus": max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall,
		"pss_kib": tree_pss(server.proc.pid),
	}


def run_load_quiet(server, gen, scen, args):
	"""run_load, again while other work took more than --max-others of the
	server's core (on a shared machine that share comes and goes); keeps the
	quietest try, so a ratio compares two servers that each had their core."""
	best = None
	for attempt in range(1, args.tries + 1):
		r = run_load(server, gen, scen, args)
		r["tries"] = attempt
		if best is None or r["others_on_server_cpus"] < best["others_on_server_cpus"]:
			best = r
		if r["others_on_server_cpus"] <= args.max_others:
			break
		log("%s %s %s: others took %.0f%% of the server's core; measuring again"
		    % (server.name, gen, scen, 100 * r["others_on_server_cpus"]))
	best["tries"] = attempt
	return best


def run_idle(server, args):
	pss0 = tree_pss(server.proc.pid)
	p = subprocess.Popen(["taskset", "-c", args.load_cpu, SMTPLOAD, "-i", "-s",
	                      str(IDLE_CONNECTIONS), "-M", "bench.example.com",
	                      "-c", str(CONNECTING.get(server.name, 100)), "-T",
	                      str(args.timeout), "127.0.0.1:%d" % server.port],
	                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
	                     stderr=subprocess.STDOUT)
	try:
		r, _, _ = select.select([p.stdout], [], [], args.timeout + 5)
		line = p.stdout.readline().decode(errors="replace").strip() if r else ""
		if not line.startswith("ready "):
			raise RuntimeError("idle holder: %s" % (line or "no answer"))
		# every connection has had its 250 to EHLO: the server holds them now
		pss1 = tree_pss(server.proc.pid)
		return {"connections": IDLE_CONNECTIONS, "pss_before_kib": pss0,
		        "pss_after_kib": pss1,
		        "kib_per_conn": (pss1 - pss0) / IDLE_CONNECTIONS,
		        "connect_seconds": float(line.split("seconds=")[1])}
	finally:
		p.stdin.close()
		try:
			p.wait(timeout=10)
		except subprocess.TimeoutExpired:
			p.kill()
			p.wait()


def free_port():
	"""A loopback TCP port nobody listens on now."""
	import socket
	with socket.socket() as s:
		s.bind(("127.0.0.1", 0))
		return s.getsockname()[1]


def sink_count(sink):
	"""Messages smtp-sink -c counted so far (its last counter in its log)."""
	import re
	try:
		with open(sink.logpath, "rb") as f:
			nums = re.findall(rb"(\d+)", f.read()[-4096:])
		return int(nums[-1]) if nums else 0
	except OSError:
		return 0


def scrape_metrics(port):
	"""luasmtpd_messages_total{result="accepted"} from --metrics, or an error
	string: the ops row checks that the metrics it pays for are served."""
	import urllib.request
	try:
		with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as f:
			text = f.read().decode(errors="replace")
	except Exception as e:
		return "no /metrics: %s" % e
	for line in text.splitlines():
		if line.startswith('luasmtpd_messages_total{result="accepted"}'):
			return int(float(line.split()[-1]))
	return "no luasmtpd_messages_total{result=\"accepted\"} in /metrics"


class Redis:
	"""A private redis-server for the store=redis row: a free loopback port,
	a temp directory, no persistence; stopped by PID."""
	def __init__(self, cpus):
		os.makedirs("/tmp/smtp-bench", exist_ok=True)
		self.port = free_port()
		self.dir = tempfile.mkdtemp(prefix="redis.", dir="/tmp/smtp-bench")
		self.logf = open(os.path.join(self.dir, "redis.log"), "w")
		self.proc = subprocess.Popen(
			["taskset", "-c", cpus, REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
			 "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no"],
			stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
		deadline = time.monotonic() + 10
		while not listening(self.port):
			if self.proc.poll() is not None or time.monotonic() > deadline:
				self.stop()
				raise RuntimeError("redis-server did not start on %d" % self.port)
			time.sleep(0.05)	# polling the kernel's socket table, bounded

	def stop(self):
		if self.proc.poll() is None:
			self.proc.terminate()
			try:
				self.proc.wait(timeout=10)
			except subprocess.TimeoutExpired:
				self.proc.kill()
				self.proc.wait(timeout=10)
		self.logf.close()
		shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- main

def read_peers():
	peers = []
	with open(os.path.join(BENCH, "peers.txt")) as f:
		for line in f:
			line = line.strip()
			if not line or line.startswith("#"):
				continue
			name, port, cmd = line.split(None, 2)
			optional = name.endswith("?")
			peers.append((name.rstrip("?"), int(port), cmd, optional))
	return peers


def haraka_modules():
	"""Where Haraka is installed: $HARAKA_MODULES, else as setup.sh puts it."""
	return os.environ.get("HARAKA_MODULES", os.path.join(BENCH, "peers", "node_modules"))


def available(name, args):
	"""None if the peer can run here, else the reason why not."""
	need = {
		"smtp-sink": "/usr/sbin/smtp-sink",
		"postfix": "/usr/lib/postfix/sbin/master",
		"haraka": os.path.join(BENCH, "peers/node_modules/Haraka/bin/haraka"),
		"smtp-server": os.path.join(BENCH, "peers/node_modules/smtp-server/package.json"),
		"opensmtpd": os.path.join(BENCH, "peers/opensmtpd/root/usr/sbin/smtpd"),
		"luasmtpd": os.path.join(REPO, "build-bench/luasmtpd"),
		"luasmtpd-workers": os.path.join(REPO, "build-bench/luasmtpd"),
		"luasmtpd-lmdb": os.path.join(REPO, "build-bench/luasmtpd"),
		"luasmtpd-redis": os.path.join(REPO, "build-bench/luasmtpd"),
		"luasmtpd-ops": os.path.join(REPO, "build-bench/luasmtpd"),
		"luasmtpd-forward": os.path.join(REPO, "build-bench/luasmtpd"),
		"haraka-forward": os.path.join(haraka_modules(), "Haraka/bin/haraka"),
	}.get(name)
	if name == "luasmtpd-redis" and not os.access(REDIS_SERVER, os.X_OK):
		return "redis-server not installed (%s missing)" % REDIS_SERVER
	if need and not os.path.exists(need):
		return "not installed or not built (%s missing)" % os.path.relpath(need, REPO) \
			if need.startswith(REPO) else "not installed (%s missing)" % need
	if name == "aiosmtpd" and subprocess.call(["/usr/bin/python3", "-c", "import aiosmtpd"],
	                                          stderr=subprocess.DEVNULL) != 0:
		return "python3-aiosmtpd not installed"
	return None


def main():
	ncpu = os.cpu_count()
	ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
	ap.add_argument("--only", help="comma-separated peer names (smtp-sink is always run)")
	ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5")
	ap.add_argument("--generators", default="smtp-source,smtpload")
	ap.add_argument("--seconds", type=float, default=3.0, help="length of each measured load")
	ap.add_argument("--max-messages", type=int, default=300000)
	ap.add_argument("--timeout", type=int, default=60, help="bound on one load (s)")
	ap.add_argument("--max-others", type=float, default=0.10,
	                help="measure a load again when other work took more than this share of the server's core")
	ap.add_argument("--tries", type=int, default=4, help="bound on measuring one load")
	ap.add_argument("--workers", type=int, default=ncpu,
	                help="N of the luasmtpd N-worker row (0 skips the row)")
	ap.add_argument("--server-cpu", default="0")
	ap.add_argument("--load-cpu", default="1")
	ap.add_argument("--workers-cpus",
	                help="CPUs of the N-worker row (default: all but --load-cpu)")
	ap.add_argument("--variants", "--stores", dest="variants", default="lmdb,redis,ops,forward",
	                help="the variant rows to run, measured against plain luasmtpd of the same "
	                     "run: lmdb, redis (smtp.store, S1), ops (info log + metrics, S1), "
	                     "forward (luasmtpd-forward S1,S3 and haraka-forward S1 to an "
	                     "smtp-sink next hop); \"\" for none (--stores: the old name)")
	ap.add_argument("--redis-cpu",
	                help="CPUs of the store=redis row's redis-server (default: --server-cpu; "
	                     "its CPU time counts as the server's)")
	ap.add_argument("--state-base", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp",
	                help="where the store rows' temp --state-dir goes (default /dev/shm, a tmpfs "
	                     "like Postfix's queue: the rows measure the store's CPU cost, not the "
	                     "disk's fsync; give a disk path to measure that)")
	ap.add_argument("--note", help="a sentence for the report (e.g. what else ran)")
	ap.add_argument("--out", default=os.path.join(BENCH, "results", "latest.json"))
	args = ap.parse_args()

	resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
	if not args.workers_cpus:
		load = set(int(c) for c in args.load_cpu.split(","))
		args.workers_cpus = ",".join(str(c) for c in range(ncpu) if c not in load) or args.server_cpu
	scenarios = args.scenarios.split(",")
	generators = args.generators.split(",")
	only = set(args.only.split(",")) | {"smtp-sink"} if args.only else None
	variants = set(x for x in args.variants.split(",") if x)
	unknown = variants - set(v[1] for v in VARIANT_ROWS.values())
	if unknown:
		sys.exit("bench: unknown --variants %s" % ",".join(sorted(unknown)))
	args.redis_cpu = args.redis_cpu or args.server_cpu
	for tool in ([SMTPLOAD] if "smtpload" in generators or "S5" in scenarios else []) + \
	            ([SMTPSOURCE] if "smtp-source" in generators else []):
		if not os.access(tool, os.X_OK):
			sys.exit("bench: %s missing (run bench/run.sh, or bench/setup.sh)" % tool)

	res = {
		"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
		"host": {"kernel": platform.release(), "cpus": ncpu,
		         "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
		                            if l.startswith("model name")), "?"),
		         "loadavg_start": open("/proc/loadavg").read().split()[:3]},
		"commit": subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
		                         capture_output=True, text=True).stdout.strip(),
		"settings": {"seconds": args.seconds, "server_cpu": args.server_cpu,
		             "load_cpu": args.load_cpu, "workers": args.workers,
		             "workers_cpus": args.workers_cpus, "idle_connections": IDLE_CONNECTIONS,
		             "redis_cpu": args.redis_cpu, "state_base": args.state_base,
		             "state_fs": subprocess.run(["stat", "-f", "-c", "%T", args.state_base],
		                                        capture_output=True, text=True).stdout.strip()},
		"scenarios": {k: SCENARIOS[k][0] for k in scenarios if k in SCENARIOS},
		"generators": generators,
		"note": args.note,
		"peers": [], "skipped": {}, "loads": {}, "idle": {}, "errors": {},
		# variant row label -> {scenario: target (a share of plain luasmtpd's
		# rate in that scenario) or None}, and the rows each must be ahead of
		"variant_rows": {}, "ahead_of": {}, "plain": "luasmtpd",
	}
	if "S5" in scenarios:
		res["scenarios"]["S5"] = "KiB of memory per idle connection after EHLO (%d open)" % IDLE_CONNECTIONS
	t_start = time.monotonic()
	next_hop = None	# the forward rows' smtp-sink, started for the first of them
	for name, port, cmd, optional in read_peers():
		variant = VARIANT_ROWS.get(name)
		if variant and (variant[1] not in variants or not set(variant[2]) & set(scenarios)):
			continue
		# --only luasmtpd takes the variant rows too: they are ratios to it
		if only is not None and name not in only and not (variant and "luasmtpd" in only):
			continue
		label = name
		cpus = args.server_cpu
		extra = {"WORKERS": str(args.workers)}
		helper = None
		if variant:
			label = variant[0]
		if name == "luasmtpd-workers":
			if args.workers <= 0:
				continue
			label = "luasmtpd x%d" % args.workers
			cpus = args.workers_cpus
		why = available(name, args)
		if why:
			log("skip %s: %s" % (label, why))
			res["skipped"][label] = why
			continue
		srv = None
		try:
			if variant and variant[1] == "forward":
				if next_hop is None:
					import atexit
					atexit.register(lambda: next_hop and next_hop.proc and next_hop.stop())
					next_hop = Server("smtp-sink-next-hop", NEXT_HOP_PORT,
					                  "exec /usr/sbin/smtp-sink -u nobody -c -h sink.bench.example "
					                  "-m 4000 127.0.0.1:$PORT 4096", args.load_cpu, {})
					next_hop.start()
					log("next hop smtp-sink: started (pid %d, cpus %s, port %d)"
					    % (next_hop.proc.pid, args.load_cpu, NEXT_HOP_PORT))
					# The next hop alone (the generator sending to it
					# directly, both on the load CPU): the most a forwarding
					# row can reach, whatever the server does.
					res["next_hop_alone"] = {}
					for gen in generators:
						for scen in scenarios:
							if scen not in FORWARD_SCENARIOS:
								continue
							try:
								rate = run_load(next_hop, gen, scen, args)["rate"]
								res["next_hop_alone"]["%s|%s" % (gen, scen)] = rate
								log("next hop alone  %-11s %s  %8.0f msg/s" % (gen, scen, rate))
							except Exception as e:
								log("next hop alone %s %s: FAILED: %s" % (gen, scen, e))
				extra.update(NEXT_HOP_HOST="127.0.0.1", NEXT_HOP_PORT=str(NEXT_HOP_PORT),
				             HARAKA_MODULES=haraka_modules())
			if name == "luasmtpd-ops":
				extra["METRICS_PORT"] = str(free_port())
			if name in ("luasmtpd-lmdb", "luasmtpd-redis"):
				extra["STATE"] = tempfile.mkdtemp(prefix="luasmtpd-bench-state.", dir=args.state_base)
				if name == "luasmtpd-redis":
					helper = Redis(args.redis_cpu)
					extra["BENCH_REDIS"] = "127.0.0.1:%d" % helper.port
			srv = Server(name, port, cmd, cpus, extra)
			if helper:
				srv.helper_pids.append(helper.proc.pid)
			srv.start()
		except Exception as e:
			why = str(e)
			if name == "luasmtpd-workers":
				why = "the binary does not accept --workers yet (%s)" % why
			log("skip %s: %s" % (label, why))
			res["skipped"][label] = why
			if helper:
				helper.stop()
			if "STATE" in extra:
				shutil.rmtree(extra["STATE"], ignore_errors=True)
			continue
		res["peers"].append(label)
		if variant:
			res["variant_rows"][label] = {k: v for k, v in variant[2].items() if k in scenarios}
			if name in AHEAD_OF:
				res["ahead_of"][label] = {k: VARIANT_ROWS[v][0] for k, v in AHEAD_OF[name].items()
				                          if k in scenarios}
		log("%s: started (pid %d, cpus %s)" % (label, srv.proc.pid, cpus))
		try:
			for gen in generators:
				for scen in scenarios:
					if scen not in SCENARIOS or (variant and scen not in variant[2]):
						continue
					key = "%s|%s|%s" % (gen, scen, label)
					try:
						sunk = sink_count(next_hop) if next_hop else 0
						r = run_load_quiet(srv, gen, scen, args)
						if variant and variant[1] == "forward":
							time.sleep(0.2)	# smtp-sink prints its counter as it goes: let the last one land
							# warm-ups and tries included: at least r["messages"]
							r["next_hop_got"] = sink_count(next_hop) - sunk
						if "METRICS_PORT" in extra:
							r["metrics_accepted"] = scrape_metrics(int(extra["METRICS_PORT"]))
						res["loads"][key] = r
						log("%-12s %-11s %s  %8.0f msg/s  %7.1f us/msg  server %3.0f%%  generator %3.0f%%  others %3.0f%%"
						    % (label, gen, scen, r["rate"], r["cpu_us_per_msg"],
						       100 * r["server_core"], 100 * r["generator_core"],
						       100 * r["others_on_server_cpus"]))
					except Exception as e:
						res["errors"][key] = str(e)
						log("%s %s %s: FAILED: %s" % (label, gen, scen, e))
					if srv.proc.poll() is not None:
						raise RuntimeError("server died: %s" % srv.log_tail())
			if "S5" in scenarios and not variant:
				try:
					r = run_idle(srv, args)
					res["idle"][label] = r
					log("%-12s S5  %.1f KiB per idle connection (connect %.1f s)"
					    % (label, r["kib_per_conn"], r["connect_seconds"]))
				except Exception as e:
					res["errors"]["idle|S5|" + label] = str(e)
					log("%s S5: FAILED: %s" % (label, e))
		except Exception as e:
			res["errors"]["server|" + label] = str(e)
			log("%s: %s" % (label, e))
		finally:
			srv.stop()
			if helper:
				helper.stop()
			if "STATE" in extra:
				shutil.rmtree(extra["STATE"], ignore_errors=True)
			log("%s: stopped" % label)
	if next_hop:
		next_hop.stop()
		log("next hop smtp-sink: stopped")
	res["elapsed_s"] = round(time.monotonic() - t_start, 1)
	res["host"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
	os.makedirs(os.path.dirname(args.out), exist_ok=True)
	with open(args.out, "w") as f:
		json.dump(res, f, indent=1, sort_keys=True)
	log("raw results in %s (%.0f s)" % (os.path.relpath(args.out), res["elapsed_s"]))
	return 1 if res["errors"] else 0


if __name__ == "__main__":
	sys.exit(main())
