#!/usr/bin/env python3
"""bench/dnsbl.py -- what a DNSBL check costs luasmtpd, against a local knotd.

1. CPU per connection: the worker's CPU time (utime + stime from
   /proc/PID/stat) over N connections from smtp-source (one message each),
   with the bench policy (bench/peers/luasmtpd/policy.lua), then with the same
   policy plus smtp.dnsbl against 3 zones on knotd (the client is listed
   nowhere: 3 NXDOMAIN lookups per connection), with the cache off (every
   connection a miss) and on.  Prints microseconds per connection and the
   difference to the plain path, and how often per connection the worker
   slept waiting for an event (voluntary context switches: each costs its
   CPU a wake-up, and a lookup's answers arriving apart cost one each).  With --callgrind, the same as instructions
   (valgrind, --workers 0; (total(N) - total(1)) / (N - 1)): the figure to
   compare commits by on a loaded machine.
2. Waiting sessions: a UDP server that answers every query NXDOMAIN 1 s late
   stands for a slow DNSBL; 1,000 clients connect at once and each session
   waits for its lookup before the greeting.  Prints the worker's RSS growth
   per waiting session (VmRSS when all 1,000 lookups are held, minus before)
   and how many sessions got their 220.

Usage: bench/dnsbl.py [-b BINARY] [--baseline BINARY] [-n CONNECTIONS] [-c AT_ONCE] [-p 0,1] [--rounds 3]
                      [--sessions 1000] [--callgrind] [--callgrind-keep DIR]
Needs knotd (Debian knot), smtp-source (postfix), valgrind for --callgrind.
"""
import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
ZONES = ["bl1.test", "bl2.test", "bl3.test"]
TCK = os.sysconf("SC_CLK_TCK")
# as bench.py: the server on one core, what loads it (smtp-source and knotd)
# on another, so that neither takes the worker's core and its caches
# (-p/--pin; None: unpinned)
PIN = {"server": None, "load": None}


def pinned(role, argv):
    cpu = PIN[role]
    return ["taskset", "-c", str(cpu)] + argv if cpu is not None and shutil.which("taskset") else argv


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(fn, timeout, what):
    deadline = time.time() + timeout
    delay = 0.01
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise SystemExit("timed out waiting for " + what)


class Knot:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "knot")
        os.makedirs(self.dir)
        self.port = free_port(socket.SOCK_DGRAM)
        conf = ["server:", '    rundir: "%s"' % self.dir, "    listen: 127.0.0.1@%d" % self.port,
                "    udp-workers: 1", "    tcp-workers: 1", "    background-workers: 1",
                "database:", '    storage: "%s/db"' % self.dir,
                "log:", "  - target: stderr", "    any: warning",
                "template:", "  - id: default", '    storage: "%s"' % self.dir, "zone:"]
        for z in ZONES:
            with open(os.path.join(self.dir, z + ".zone"), "w") as f:
                f.write("$ORIGIN %s.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\n"
                        "ns A 127.0.0.1\n2.0.0.127 A 127.0.0.2\n2.0.0.127 TXT \"listed\"\n" % z)
            conf += ["  - domain: " + z, "    file: %s.zone" % z]
        with open(os.path.join(self.dir, "knot.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        self.log = open(os.path.join(self.dir, "knot.log"), "w")
        self.proc = subprocess.Popen(pinned("load", ["knotd", "-c", os.path.join(self.dir, "knot.conf")]),
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(self.port),
                                         "@127.0.0.1", ZONES[0], "SOA"], capture_output=True,
                                        text=True).stdout.strip(), 20, "knotd")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def policy(tmp, name, zones, resolver, cache, extra="", check=None):
    """the bench policy, plus a DNSBL check of zones (none: the plain path),
    or the code check before the greeting"""
    with open(os.path.join(BENCH, "peers", "luasmtpd", "policy.lua")) as f:
        src = f.read()
    if zones:
        check = ("  local listed, failures = smtp.dnsbl(conn.remoteAddress, {%s})\n"
                 "  if listed and listed[1] then conn.valid, conn.code = false, 554 return end\n"
                 "  if failures and failures[1] then conn.valid, conn.code = false, 421 return end\n"
                 % ", ".join('"%s"' % z for z in zones))
    if check:
        src = src.replace("local server = smtp.createServer(function(conn)\n",
                          "local server = smtp.createServer(function(conn)\n" + check)
    if zones:
        src += 'server.resolvers = { "127.0.0.1:%d" }\nserver.dnsCacheSize = %d\n' % (resolver, cache)
    src += extra
    path = os.path.join(tmp, name + ".lua")
    with open(path, "w") as f:
        f.write(src)
    return path


class Server:
    def __init__(self, binary, tmp, script, wrapper=()):
        self.port = free_port()
        ready = os.path.join(tmp, "ready")
        if os.path.exists(ready):
            os.remove(ready)
        workers = "0" if wrapper else "1"
        self.err = open(os.path.join(tmp, "server.log"), "w")
        self.proc = subprocess.Popen(pinned("server", list(wrapper) + [binary, "--workers", workers, "--log-level", "warn",
                                                      "--listen", "127.0.0.1:%d" % self.port,
                                                      "--ready-file", ready, script]),
                                     stdout=self.err, stderr=self.err, stdin=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(ready) or self.proc.poll() is not None, 120, "the ready file")
        if self.proc.poll() is not None:
            raise SystemExit("luasmtpd exited: see " + self.err.name)
        if wrapper:
            self.worker = self.proc.pid
        else:
            self.worker = wait_for(lambda: self._child(), 10, "the worker")

    def _child(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    def cpu(self):
        """user and system CPU seconds of the worker"""
        with open("/proc/%d/stat" % self.worker) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / TCK, int(fields[12]) / TCK	# utime, stime

    def _status(self, field):
        """an integer field of the worker's /proc/PID/status (0 if missing)"""
        with open("/proc/%d/status" % self.worker) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def sleeps(self):
        """times the worker waited for an event (voluntary context switches)"""
        return self._status("voluntary_ctxt_switches")

    def rss_kib(self):
        return self._status("VmRSS")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def source(port, n, sessions=10):
    subprocess.run(pinned("load", ["smtp-source", "-s", str(sessions), "-m", str(n), "-l", "200",
                                   "-f", "a@example.net", "-t", "b@example.org", "127.0.0.1:%d" % port]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_per_connection(args, tmp, knot):
    variants = [("plain", None, 0), ("dnsbl, 3 zones, cache miss", ZONES, 0),
                ("dnsbl, 3 zones, cached", ZONES, 1000)]
    binaries = [args.binary] + ([args.baseline] if args.baseline else [])
    runs = {(b, label): [] for b in binaries for label, _, _ in variants}
    for _ in range(args.rounds):		# interleaved, so that load changes hit each alike
        for binary in binaries:
            for label, zones, cache in variants:
                script = policy(tmp, "p", zones, knot.port, cache)
                for attempt in (1, 2):	# a lookup lost on a loaded machine is a 421: once more
                    srv = Server(binary, tmp, script)
                    try:
                        source(srv.port, 200, args.concurrency)	# warm up: pools, the resolver's socket, the cache
                        c0, t0, w0 = srv.cpu(), time.time(), srv.sleeps()
                        source(srv.port, args.n, args.concurrency)
                        c1, t1, w1 = srv.cpu(), time.time(), srv.sleeps()
                        break
                    except subprocess.CalledProcessError:
                        if attempt == 2:
                            raise
                        print("  (%s, %s: smtp-source failed, once more)" % (binary, label))
                    finally:
                        srv.stop()
                user, system = (c1[0] - c0[0]) / args.n * 1e6, (c1[1] - c0[1]) / args.n * 1e6
                runs[(binary, label)].append((user + system, user, system, args.n / (t1 - t0), (w1 - w0) / args.n))
    print("CPU of the worker per connection (one message each), %d connections, %d at once, "
          "median of %d runs:" % (args.n, args.concurrency, args.rounds))
    for binary in binaries:
        if len(binaries) > 1:
            print(" %s" % binary)
        base = None
        for label, _, _ in variants:
            us, user, system, rate, sleeps = sorted(runs[(binary, label)])[len(runs[(binary, label)]) // 2]
            base = us if base is None else base
            extra = ""
            if label != "plain":
                # the same round's plain run as the reference: what the host's
                # load did to both cancels out, which medians apart keep
                d = sorted(r[0] - p[0] for r, p in zip(runs[(binary, label)], runs[(binary, "plain")]))
                extra = "  (+%.1f us on the plain path; round by round +%.1f, quartiles %+.1f..%+.1f)" % (
                    us - base, d[len(d) // 2], d[len(d) // 4], d[(3 * len(d)) // 4])
            print("  %-28s %7.1f us (user %.1f, system %.1f)  %6.0f conn/s  %.2f sleeps/conn%s"
                  % (label, us, user, system, rate, sleeps, extra))


def callgrind(args, tmp, knot):
    def total(script, n, label):
        out = os.path.join(tmp, "cg.out")
        for attempt in (1, 2):	# a lookup lost on a loaded machine is a 421: once more
            srv = Server(args.binary, tmp, script, ["valgrind", "--tool=callgrind",
                                                     "--callgrind-out-file=" + out])
            try:
                source(srv.port, n, 4)
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
                print("  (callgrind %s: smtp-source failed, once more)" % label)
            finally:
                srv.stop()
        if args.keep:
            shutil.copy(out, os.path.join(args.keep, "%s.%d.out" % (label, n)))
        for line in open(out):
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
        raise SystemExit("no totals in " + out)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    n = args.callgrind_n
    res = {}
    # "wait": a connection listener that waits once (smtp.sleep(0)), what any
    # handler that waits costs on top of the plain path; "cached": the DNSBL
    # check answered by the cache (every connection but the first)
    for label, zones, check, cache in (("plain", None, None, 0), ("wait", None, "  smtp.sleep(0)\n", 0),
                                       ("dnsbl", ZONES, None, 0), ("cached", ZONES, None, 1000)):
        # valgrind is slow: a generous timeout, so that a late answer is not a 421
        script = policy(tmp, "cg", zones, knot.port, cache, check=check,
                        extra="server.dnsTimeout = 10\n" if zones else "")
        res[label] = (total(script, n, label) - total(script, 1, label)) / (n - 1)
    p = res["plain"]
    print("callgrind, instructions per connection (%d connections):" % n)
    print("  plain %.0f; a handler that waits once (smtp.sleep(0)) +%.0f; dnsbl 3 zones, cache miss +%.0f "
          "(x%.2f), cached +%.0f" % (p, res["wait"] - p, res["dnsbl"] - p, res["dnsbl"] / p, res["cached"] - p))


def strace_counts(args, tmp, knot):
    """system calls per connection of the worker (strace -c -f), plain and
    DNSBL cache miss, and the difference"""
    def counts(script, n):
        out = os.path.join(tmp, "strace.out")
        srv = Server(args.binary, tmp, script, ["strace", "-c", "-f", "-o", out])
        try:
            source(srv.port, n, 4)
        finally:
            # luasmtpd stopped, not strace: strace writes its table as its tracee exits
            child = srv._child()
            if child:
                os.kill(child, signal.SIGTERM)
                srv.proc.wait(60)
            srv.stop()
        calls = {}
        for line in open(out):
            f = line.split()
            if len(f) >= 5 and f[-1] != "total" and f[3].isdigit():
                calls[f[-1]] = int(f[3])
        return calls
    n = args.strace_n
    res = {}
    for label, zones in (("plain", None), ("dnsbl", ZONES)):
        script = policy(tmp, "st", zones, knot.port, 0, extra="server.dnsTimeout = 10\n" if zones else "")
        a, b = counts(script, n), counts(script, 1)
        res[label] = {k: (a.get(k, 0) - b.get(k, 0)) / (n - 1) for k in set(a) | set(b)}
    print("system calls per connection (strace -c -f, %d connections): DNSBL cache miss minus plain path:" % n)
    p, d = res["plain"], res["dnsbl"]
    for k in sorted(set(p) | set(d), key=lambda k: -(d.get(k, 0) - p.get(k, 0))):
        diff = d.get(k, 0) - p.get(k, 0)
        if abs(diff) >= 0.05:
            print("  %-16s %+6.2f  (plain %.2f)" % (k, diff, p.get(k, 0)))


def udp_floor(knot, n=20000):
    """CPU of a bare UDP round trip to knotd (one sendto, one recv of an
    NXDOMAIN answer): the kernel's part of each DNSBL lookup"""
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" +
         b"".join(bytes([len(l)]) + l.encode() for l in ("1.0.0.127." + ZONES[0]).split(".")) +
         b"\x00\x00\x01\x00\x01")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", knot.port))
    s.settimeout(5)
    for _ in range(100):
        s.send(q)
        s.recv(512)
    t0 = os.times()
    for _ in range(n):
        s.send(q)
        s.recv(512)
    t1 = os.times()
    s.close()
    print("a bare UDP round trip to knotd (send + recv, Python): user %.1f us, system %.1f us"
          % ((t1.user - t0.user) / n * 1e6, (t1.system - t0.system) / n * 1e6))


class SlowDNS(asyncio.DatagramProtocol):
    """answers every query NXDOMAIN, delay seconds after it came and not
    before `hold` queries are waiting (so that that many sessions wait at once)"""
    def __init__(self, delay, hold):
        self.delay, self.hold, self.pending, self.held = delay, hold, [], 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        reply = data[:2] + bytes([0x81, 0x83]) + data[4:6] + b"\0\0\0\0\0\0" + data[12:]
        self.pending.append((time.time() + self.delay, reply, addr))
        self.held = max(self.held, len(self.pending))
        if len(self.pending) >= self.hold:
            self.release()

    def release(self):
        self.hold = 0		# from now on, each after its delay
        loop = asyncio.get_running_loop()
        for due, reply, addr in self.pending:
            loop.call_at(loop.time() + max(0, due - time.time()), self.transport.sendto, reply, addr)
        self.pending = []


async def waiting_sessions(args, tmp):
    loop = asyncio.get_running_loop()
    dns = SlowDNS(1.0, args.sessions)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # room for every query at once (the default buffer holds ~256 datagrams)
    udp.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), 16 << 20)
    udp.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, sock=udp)
    port = transport.get_extra_info("sockname")[1]
    script = policy(tmp, "slow", ["slow.test"], port, 0, "server.dnsTimeout = 30\nserver.dnsRetries = 0\n")
    srv = await loop.run_in_executor(None, Server, args.binary, tmp, script)
    try:
        # a few sessions first, so that pools and the resolver exist before the baseline
        dns.hold = 0
        await asyncio.gather(*(session(srv.port) for _ in range(10)))
        dns.hold, dns.held = args.sessions, 0
        before = srv.rss_kib()
        t0 = time.time()
        tasks = [asyncio.ensure_future(session(srv.port)) for _ in range(args.sessions)]
        during = before
        while dns.hold and time.time() < t0 + 30:
            during = max(during, srv.rss_kib())
            await asyncio.sleep(0.02)
        during = max(during, srv.rss_kib())
        all_in = time.time() - t0
        if dns.hold:
            dns.release()		# not all came within 30 s: say how many did
        results = await asyncio.gather(*tasks)
        took = time.time() - t0
    finally:
        await loop.run_in_executor(None, srv.stop)
        transport.close()
    ok = sum(1 for r in results if r)
    print("%d sessions waiting at once on a 1 s DNS answer: %d lookups held together, worker RSS %d -> %d KiB: "
          "%.1f KiB per waiting session; %d/%d got 220 and quit, in %.1f s (all waiting after %.1f s)" % (
              args.sessions, dns.held, before, during, (during - before) / args.sessions, ok, args.sessions,
              took, all_in))


async def session(port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        line = await asyncio.wait_for(r.readline(), 60)
        ok = line.startswith(b"220")
        w.write(b"QUIT\r\n")
        await w.drain()
        await asyncio.wait_for(r.readline(), 30)
        w.close()
        return ok
    except (OSError, asyncio.TimeoutError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-b", "--binary", default=os.path.join(ROOT, "build", "luasmtpd"))
    ap.add_argument("--baseline", metavar="BINARY",
                    help="another luasmtpd (an older commit's build) measured in the same rounds")
    ap.add_argument("-n", type=int, default=5000, help="connections for the CPU figures")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each, the median reported")
    ap.add_argument("-p", "--pin", metavar="SERVER,LOAD", default="0,1",
                    help="cores for the server and for smtp-source and knotd (default 0,1; "
                         "'none': unpinned)")
    ap.add_argument("-c", "--concurrency", type=int, default=10,
                    help="smtp-source's sessions at once for the CPU figures (-s); enough of them "
                         "and the worker never waits idle for an answer, so the figure is its cost "
                         "at full load")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--callgrind-n", type=int, default=300)
    ap.add_argument("--callgrind-keep", dest="keep", metavar="DIR",
                    help="keep the callgrind outputs there (LABEL.N.out), for callgrind_annotate")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--strace", action="store_true",
                    help="system calls per connection (strace -c), and a bare UDP round trip's CPU")
    ap.add_argument("--strace-n", type=int, default=300)
    args = ap.parse_args()
    if args.pin != "none":
        PIN["server"], PIN["load"] = (int(c) for c in args.pin.split(","))
    for tool in ("knotd", "smtp-source", "dig"):
        if not shutil.which(tool):
            raise SystemExit("dnsbl.py: %s is missing" % tool)
    tmp = tempfile.mkdtemp(prefix="luasmtpd-dnsbl.")
    knot = Knot(tmp)
    try:
        if not args.skip_cpu:
            cpu_per_connection(args, tmp, knot)
        if args.callgrind:
            callgrind(args, tmp, knot)
        if args.strace:
            strace_counts(args, tmp, knot)
            udp_floor(knot)
        if args.sessions:
            asyncio.run(waiting_sessions(args, tmp))
    finally:
        knot.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
