#!/usr/bin/python3
"""quoin against etcd 3.4, side by side (`make bench`).

Starts one etcd and one quoin member with the same flags, data directories
under one temporary directory (same disk), then runs every quoin-bench workload
against each server in turn, alternating which goes first. Prints a table of
quoin/etcd ratios and writes it, with the machine's description, to
bench/results/<date>.md (BENCH_OUT overrides the path). Servers are stopped by PID.

Environment: BENCH_KEYS (keys loaded for the data-size and restart rows,
default 300000), BENCH_SCALE (multiplies request counts, default 1)."""
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
KEYS = int(os.environ.get("BENCH_KEYS", "300000"))
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
    ("watch-latency (100 watchers)", ["--conns", "4", "--watchers", "100", "--rate", "200", "--total", n(600),
                                      "--prefix", "w", "watch-latency"]),
    ("lease-keepalive", ["--conns", "4", "--clients", "64", "--total", n(30000), "lease-keepalive"]),
    ("mix (90% reads)", ["--conns", "4", "--clients", "64", "--key-space", "100000", "--total", n(30000),
                         "--read-ratio", "0.9", "mix"]),
]


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


class Server:
    def __init__(self, kind, tmp, used):
        self.kind = kind
        self.cport, self.pport = free_port(used), free_port(used)
        self.dir = os.path.join(tmp, kind + ".data")
        self.ep = "127.0.0.1:%d" % self.cport
        c, p = "http://127.0.0.1:%d" % self.cport, "http://127.0.0.1:%d" % self.pport
        self.args = [BINS[kind], "--name", "n1", "--data-dir", self.dir, "--listen-client-urls", c,
                     "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                     "--initial-cluster", "n1=" + p]
        self.log = open(os.path.join(tmp, kind + ".log"), "ab")
        self.proc = None

    def start(self):
        """Starts and returns the seconds until the first answer (a range)."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        while time.monotonic() - t0 < 120:
            r = subprocess.run([BENCH, "--endpoints", self.ep, "--total", "1", "--clients", "1",
                                "--deadline-ms", "500", "-w", "json", "range"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited: see %s" % (self.kind, self.log.name))
            time.sleep(0.05)
        raise RuntimeError("%s did not answer" % self.kind)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def rss_mb(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[21]) * PAGE / 1e6  # rss in pages

    def anon_mb(self):
        """Anonymous memory only: LMDB's and bbolt's mapped files are left out."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1e3
        return 0.0

    def disk_mb(self):
        total = 0
        for d, _, files in os.walk(self.dir):
            for name in files:
                try:
                    total += os.stat(os.path.join(d, name)).st_blocks * 512
                except OSError:
                    pass
        return total / 1e6


def run_bench(srv, args):
    r = subprocess.run([BENCH, "--endpoints", srv.ep, "-w", "json"] + args, capture_output=True, text=True)
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
    return "nproc %d, %s, memory %s, kernel %s" % (os.cpu_count(), model, mem, os.uname().release)


def ratio(q, e):
    return "%.2f" % (q / e) if e else "-"


def main():
    tmp = tempfile.mkdtemp(prefix="quoin-bench-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    used = set()
    servers = {k: Server(k, tmp, used) for k in ("etcd", "quoin")}
    rows = []
    out = ["# quoin vs etcd 3.4, %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "",
           "Machine: " + machine(), "",
           "One member each, same flags, data directories on the same disk; both run during the whole "
           "benchmark, workloads alternate between them. make bench has no 3-member run yet. Latencies in ms; ratio = quoin / etcd (throughput: higher is better for quoin; "
           "latency, memory, CPU, disk, start time: lower is better). watch-latency: ops/s is puts/s at a fixed "
           "rate; latencies are put-to-event delays over every watcher.", ""]
    try:
        first = {}
        for k in ("etcd", "quoin"):
            first[k] = servers[k].start()
        cpu0 = {k: servers[k].cpu_seconds() for k in servers}
        for i, (name, args) in enumerate(WORKLOADS):
            res = {}
            order = ("etcd", "quoin") if i % 2 == 0 else ("quoin", "etcd")
            for k in order:
                res[k] = run_bench(servers[k], args)
                print("%-30s %-6s %10.1f ops/s p50 %.3f p99 %.3f p99.9 %.3f max %.3f errors %d" % (
                    name, k, res[k]["ops_per_sec"], res[k]["latency_ms"]["p50"], res[k]["latency_ms"]["p99"],
                    res[k]["latency_ms"]["p999"], res[k]["latency_ms"]["max"], res[k]["errors"]), flush=True)
            rows.append((name, res))
        cpu = {k: servers[k].cpu_seconds() - cpu0[k] for k in servers}
        rss = {k: servers[k].rss_mb() for k in servers}
        # data size after KEYS keys of 256 bytes, then time to first answer on that database
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
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out.append("| workload | etcd ops/s | quoin ops/s | ratio | p50 e/q | ratio | p99 e/q | ratio | "
               "p99.9 e/q | ratio | max e/q | ratio |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, res in rows:
        e, q = res["etcd"], res["quoin"]
        cells = [name, "%.0f" % e["ops_per_sec"], "%.0f" % q["ops_per_sec"], ratio(q["ops_per_sec"], e["ops_per_sec"])]
        for p in ("p50", "p99", "p999", "max"):
            cells += ["%.2f / %.2f" % (e["latency_ms"][p], q["latency_ms"][p]),
                      ratio(q["latency_ms"][p], e["latency_ms"][p])]
        if e["errors"] or q["errors"]:
            cells[0] += " (errors e/q: %d/%d)" % (e["errors"], q["errors"])
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| server | etcd | quoin | ratio |", "|---|---|---|---|"]
    for label, d, fmt in (("CPU seconds over the workloads", cpu, "%.1f"),
                          ("RSS after the workloads (MB)", rss, "%.1f"),
                          ("loading %d keys, 128 clients (puts/s)" % KEYS, fill, "%.0f"),
                          ("RSS after %d keys (MB)" % KEYS, rss_full, "%.1f"),
                          ("of which anonymous (MB)", anon_full, "%.1f"),
                          ("data on disk after %d keys of 256 B (MB)" % KEYS, disk, "%.1f"),
                          ("start to first answer, empty (s)", first, "%.2f"),
                          ("start to first answer, %d keys (s)" % KEYS, restart, "%.2f"),
                          ("RSS after that restart (MB)", rss_restart, "%.1f")):
        out.append("| %s | %s | %s | %s |" % (label, fmt % d["etcd"], fmt % d["quoin"], ratio(d["quoin"], d["etcd"])))
    text = "\n".join(out) + "\n"
    print()
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "bench", "results",
                                                       datetime.date.today().isoformat() + ".md")
    with open(path, "w") as f:
        f.write(text)
    print("written to", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
