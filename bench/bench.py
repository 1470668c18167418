#!/usr/bin/python3
"""quoin against etcd 3.4, side by side (`make bench`).

Three parts, each with an etcd and a quoin started with the same flags, data
directories under one temporary directory (same disk), on loopback:
  1 member: every quoin-bench workload against each server in turn,
    alternating which goes first; then the data size and restart time after
    loading BENCH_KEYS keys.
  3 members: the same workloads against two 3-member clusters.
  leader stability under load (bench/elections.py, issue #6), unless
    BENCH_ELECTIONS=0.
Prints tables of quoin/etcd ratios and writes them, with the machine's
description, to bench/results/<date>-<time>.md (BENCH_OUT overrides the path).
Servers are stopped by PID.

Environment: BENCH_KEYS (keys loaded for the data-size and restart rows,
default 1000000, as issue #7 asks), BENCH_SCALE (multiplies request counts, default 1),
BENCH_ELECTIONS_SECS (length of the leader-stability run, default 60)."""
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "build", "quoin-bench")
BINS = {"etcd": shutil.which("etcd") or "/usr/bin/etcd", "quoin": os.path.join(ROOT, "build", "quoin")}
KEYS = int(os.environ.get("BENCH_KEYS", "1000000"))
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def n(x):
    return str(max(1, int(x * SCALE)))


# name, quoin-bench arguments
WORKLOADS = [
    ("put", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(30000), "put"]),
    ("range (linearizable)", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(30000),
                              "range"]),
    ("range (serializable)", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(30000),
                              "--consistency", "s", "range"]),
    ("txn-put (CAS)", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(20000), "txn-put"]),
    ("watch-latency (100 watchers)", ["--conns", "4", "--watchers", "100", "--rate", "200", "--total", n(2000),
                                      "--prefix", "w", "watch-latency"]),
    ("lease-keepalive", ["--conns", "4", "--clients", "64", "--total", n(30000), "lease-keepalive"]),
    ("mix (90% reads)", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(30000),
                         "--read-ratio", "0.9", "mix"]),
]
# the same against 3 members, with 6 connections: two to each member
WORKLOADS_3 = [(name, ["6" if a == "4" and args[i - 1] == "--conns" else a for i, a in enumerate(args)])
               for name, args in WORKLOADS]


def free_port(used):
    while True:
        p = random.randint(20000, 29999)
        if p in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        used.add(p)
        return p


class Member:
    """One server process of a cluster (its own data directory and ports)."""

    def __init__(self, kind, name, used, cluster_dir):
        self.kind, self.name = kind, name
        self.cport, self.pport = free_port(used), free_port(used)
        self.dir = os.path.join(cluster_dir, name + ".data")
        self.ep = "127.0.0.1:%d" % self.cport
        self.curl, self.purl = "http://127.0.0.1:%d" % self.cport, "http://127.0.0.1:%d" % self.pport
        self.log = open(os.path.join(cluster_dir, name + ".log"), "ab")
        self.args = None  # set by the cluster, which knows every peer URL
        self.proc = None

    def spawn(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stat(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            return f.read().rsplit(")", 1)[1].split()

    def anon_mb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1e3
        return 0.0


class Cluster:
    """`size` members of one kind (etcd or quoin) on loopback, started with the
    same flags for both kinds; figures are summed over the members."""

    def __init__(self, kind, size, tmp, used):
        self.kind, self.size = kind, size
        where = tempfile.mkdtemp(prefix="%s%d-" % (kind, size), dir=tmp)  # fresh for every cluster
        self.members = [Member(kind, "n%d" % (i + 1), used, where) for i in range(size)]
        initial = ",".join("%s=%s" % (m.name, m.purl) for m in self.members)
        for m in self.members:
            m.args = [BINS[kind], "--name", m.name, "--data-dir", m.dir, "--listen-client-urls", m.curl,
                      "--advertise-client-urls", m.curl, "--listen-peer-urls", m.purl,
                      "--initial-advertise-peer-urls", m.purl, "--initial-cluster", initial]
        self.ep = ",".join(m.ep for m in self.members)

    def start(self):
        """Starts every member and returns the seconds until the first answer
        (a linearizable range, so the cluster has a leader)."""
        t0 = time.monotonic()
        for m in self.members:
            m.spawn()
        while time.monotonic() - t0 < 120:
            r = subprocess.run([BENCH, "--endpoints", self.ep, "--total", "1", "--clients", "1",
                                "--deadline-ms", "500", "-w", "json", "range"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return time.monotonic() - t0
            for m in self.members:
                if m.proc.poll() is not None:
                    raise RuntimeError("%s exited: see %s" % (self.kind, m.log.name))
            time.sleep(0.05)
        raise RuntimeError("%s did not answer" % self.kind)

    def stop(self):
        for m in self.members:
            m.stop()

    def cpu_seconds(self):
        return sum(int(f[11]) + int(f[12]) for f in (m.stat() for m in self.members)) / TICK  # utime, stime

    def rss_mb(self):
        return sum(int(m.stat()[21]) for m in self.members) * PAGE / 1e6  # rss in pages

    def anon_mb(self):
        """Anonymous memory only: LMDB's and bbolt's mapped files are left out."""
        return sum(m.anon_mb() for m in self.members)

    def disk_mb(self):
        total = 0
        for m in self.members:
            for d, _, files in os.walk(m.dir):
                for name in files:
                    try:
                        total += os.stat(os.path.join(d, name)).st_blocks * 512
                    except OSError:
                        pass
        return total / 1e6


def run_bench(srv, args, endpoints=None):
    """quoin-bench against a cluster (all its members, or `endpoints`); its JSON."""
    r = subprocess.run([BENCH, "--endpoints", endpoints or srv.ep, "-w", "json"] + args, capture_output=True,
                       text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError("quoin-bench failed against %s: %s %s" % (srv.kind, r.stdout, r.stderr))


def machine():
    model, mem = "?", "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = "%.1f GB" % (int(line.split()[1]) / 1e6)
    load = "%.1f %.1f %.1f" % os.getloadavg()
    return "nproc %d, %s, memory %s, kernel %s, load average at start %s (shared with other engineers' builds)" % (
        os.cpu_count(), model, mem, os.uname().release, load)


def ratio(q, e):
    return "%.2f" % (q / e) if e else "-"


def run_workloads(clusters, workloads):
    """Every workload against each cluster in turn, alternating which goes
    first. Returns [(name, {kind: quoin-bench JSON})]."""
    rows = []
    for i, (name, args) in enumerate(workloads):
        res = {}
        for k in (("etcd", "quoin") if i % 2 == 0 else ("quoin", "etcd")):
            res[k] = run_bench(clusters[k], args)
            print("%-30s %-6s %10.1f ops/s p50 %.3f p99 %.3f p99.9 %.3f max %.3f errors %d" % (
                name, k, res[k]["ops_per_sec"], res[k]["latency_ms"]["p50"], res[k]["latency_ms"]["p99"],
                res[k]["latency_ms"]["p999"], res[k]["latency_ms"]["max"], res[k]["errors"]), flush=True)
        rows.append((name, res))
    return rows


def workload_table(rows):
    out = ["| workload | etcd ops/s | quoin ops/s | ratio | p50 e/q | ratio | p99 e/q | ratio | "
           "p99.9 e/q | ratio | max e/q | ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in rows:
        e, q = res["etcd"], res["quoin"]
        cells = [name, "%.0f" % e["ops_per_sec"], "%.0f" % q["ops_per_sec"], ratio(q["ops_per_sec"], e["ops_per_sec"])]
        for p in ("p50", "p99", "p999", "max"):
            cells += ["%.2f / %.2f" % (e["latency_ms"][p], q["latency_ms"][p]),
                      ratio(q["latency_ms"][p], e["latency_ms"][p])]
        if e["errors"] or q["errors"]:
            cells[0] += " (errors e/q: %d/%d)" % (e["errors"], q["errors"])
        out.append("| " + " | ".join(cells) + " |")
    return out


def server_table(items):
    out = ["| server | etcd | quoin | ratio |", "|---|---|---|---|"]
    for label, d, fmt in items:
        out.append("| %s | %s | %s | %s |" % (label, fmt % d["etcd"], fmt % d["quoin"], ratio(d["quoin"], d["etcd"])))
    return out


def run_part(size, tmp, used, workloads, extra=None):
    """Starts an etcd and a quoin cluster of `size` members, runs the workloads
    against both, then extra(clusters), which returns more server rows.
    Returns the part's tables."""
    clusters = {k: Cluster(k, size, tmp, used) for k in ("etcd", "quoin")}
    try:
        first = {k: clusters[k].start() for k in ("etcd", "quoin")}
        cpu0 = {k: clusters[k].cpu_seconds() for k in clusters}
        rows = run_workloads(clusters, workloads)
        cpu = {k: clusters[k].cpu_seconds() - cpu0[k] for k in clusters}
        rss = {k: clusters[k].rss_mb() for k in clusters}
        anon = {k: clusters[k].anon_mb() for k in clusters}
        more = extra(clusters) if extra else []
    finally:
        for c in clusters.values():
            c.stop()
    summed = ", %d members summed" % size if size > 1 else ""
    return workload_table(rows) + [""] + server_table([
        ("CPU seconds over the workloads" + summed, cpu, "%.1f"),
        ("RSS after the workloads%s (MB)" % summed, rss, "%.1f"),
        ("of which anonymous (MB)", anon, "%.1f"),
        ("start to first answer, empty (s)", first, "%.2f")] + more)


def load_and_restart(servers):
    """Data size after KEYS keys of 256 bytes, then the time to first answer
    on that database after a restart: more rows of the 1-member table."""
    fill = {}
    for k in servers:
        fill[k] = run_bench(servers[k], ["--conns", "4", "--clients", "128", "--key-space", str(KEYS),
                                         "--sequential", "--total", str(KEYS), "--prefix", "f", "--key-size",
                                         "16", "put"])["ops_per_sec"]
    rss_full = {k: servers[k].rss_mb() for k in servers}
    anon_full = {k: servers[k].anon_mb() for k in servers}
    disk = {k: servers[k].disk_mb() for k in servers}
    restart = {}
    for k in servers:
        servers[k].stop()
        restart[k] = servers[k].start()
    rss_restart = {k: servers[k].rss_mb() for k in servers}
    # right after the load, the log behind the key space may not be released
    # yet (quoin: WAL segments wait for an LMDB checkpoint); after the restart
    # both have settled
    disk_settled = {k: servers[k].disk_mb() for k in servers}
    return [("loading %d keys, 128 clients (puts/s)" % KEYS, fill, "%.0f"),
            ("RSS after %d keys (MB)" % KEYS, rss_full, "%.1f"),
            ("of which anonymous (MB)", anon_full, "%.1f"),
            ("data on disk right after %d keys of 256 B (MB)" % KEYS, disk, "%.1f"),
            ("start to first answer, %d keys (s)" % KEYS, restart, "%.2f"),
            ("RSS after that restart (MB)", rss_restart, "%.1f"),
            ("data on disk after that restart (MB)", disk_settled, "%.1f")]


def write_result(text, name):
    """Prints the report and writes it to BENCH_OUT or bench/results/<name>."""
    print()
    print(text)
    path = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "bench", "results", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print("written to", path)


def main():
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="quoin-bench-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    used = set()
    out = ["# quoin vs etcd 3.4, %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "",
           "Machine: " + machine(), "",
           "Same flags for both servers, data directories on the same disk, loopback; both run during "
           "each part, workloads alternate between them. Latencies in ms; ratio = quoin / etcd (throughput: "
           "higher is better for quoin; latency, memory, CPU, disk, start time: lower is better). "
           "watch-latency: ops/s is puts/s at a fixed rate; latencies are put-to-event delays over every "
           "watcher.", "", "## 1 member", ""]
    try:
        out += run_part(1, tmp, used, WORKLOADS, load_and_restart)
        out += ["", "## 3 members", "",
                "Three members of each on loopback, started together with the same --initial-cluster flags "
                "(default heartbeat 100 ms, election 1000 ms); quoin-bench's 6 connections spread over the "
                "three members (connection i starts at member i mod 3). Server figures are summed over the "
                "members.", ""]
        out += run_part(3, tmp, used, WORKLOADS_3)
        if os.environ.get("BENCH_ELECTIONS", "1") != "0":
            import elections
            out += ["", "## Leader stability under load (issue #6)", ""]
            out += elections.run(tmp, used)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out += ["", "make bench took %.1f minutes." % ((time.monotonic() - t0) / 60)]
    write_result("\n".join(out) + "\n", datetime.datetime.now().strftime("%Y-%m-%d-%H%M") + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
