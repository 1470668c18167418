#!/usr/bin/python3
"""Leader stability under load (issue #6), `make bench-elections`.

For a 3-member quoin and a 3-member etcd 3.4 cluster, both with the default
heartbeat (100 ms) and election (1000 ms) timeouts: 256 concurrent writers
(quoin-bench put, 8 connections, all to the leader) saturate the leader for
BENCH_ELECTIONS_SECS seconds (default 60). Leader changes are counted the same
way for both: the raft term of every member before and after (endpoint Status),
and the leader id every member reports, sampled every 100 ms meanwhile. Not a
pass/fail test: it writes a report to bench/results/elections-<date>.md (or
BENCH_OUT), and `make bench` includes the same table."""
import datetime
import os
import shutil
import sys
import tempfile
import threading
import time

import grpc
from etcd3 import etcdrpc

import bench

SECS = float(os.environ.get("BENCH_ELECTIONS_SECS", "60"))
WRITERS = 256


class Sampler:
    """Asks every member for its Status every 100 ms on a thread of its own;
    each answer (leader id, raft term) or failure is kept per member."""

    def __init__(self, cluster):
        self.channels = [grpc.insecure_channel(m.ep) for m in cluster.members]
        self.stubs = [etcdrpc.MaintenanceStub(ch) for ch in self.channels]
        self.samples = [[] for _ in self.stubs]  # per member: (leader, term, own id) or None
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.loop)

    def once(self):
        calls = [s.Status.future(etcdrpc.StatusRequest(), timeout=0.5) for s in self.stubs]
        out = []
        for c in calls:
            try:
                r = c.result()
                out.append((r.leader, r.raftTerm, r.header.member_id))
            except grpc.RpcError:
                out.append(None)
        return out

    def loop(self):
        while not self.stop_ev.is_set():
            t = time.monotonic()
            for i, s in enumerate(self.once()):
                self.samples[i].append(s)
            self.stop_ev.wait(max(0.0, 0.1 - (time.monotonic() - t)))

    def close(self):
        for ch in self.channels:
            ch.close()


def wait_leader(sampler, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = sampler.once()
        leaders = {a[0] for a in answers if a}
        if len(leaders) == 1 and 0 not in leaders and None not in answers:
            return leaders.pop(), max(a[1] for a in answers)
        time.sleep(0.1)
    raise RuntimeError("no leader agreed on within %ds" % timeout)


def changes(samples):
    """Leader changes one member saw: switches between two different non-zero
    leader ids in its successive answers."""
    n, last = 0, 0
    for s in samples:
        if s and s[0]:
            if last and s[0] != last:
                n += 1
            last = s[0]
    return n


def measure(cluster):
    sampler = Sampler(cluster)
    try:
        leader, term0 = wait_leader(sampler)
        leader_ep = next(m.ep for m, a in zip(cluster.members, sampler.once()) if a and a[2] == leader)
        cpu0 = cluster.cpu_seconds()
        sampler.thread.start()
        res = bench.run_bench(cluster, [
            "--conns", "8", "--clients", str(WRITERS), "--key-space", "100000", "--duration", str(SECS),
            "--deadline-ms", "10000", "put"], endpoints=leader_ep)
        sampler.stop_ev.set()
        sampler.thread.join()
        cpu = cluster.cpu_seconds() - cpu0
        time.sleep(0.5)
        after = sampler.once()
    finally:
        sampler.close()
    terms = [a[1] for a in after if a]
    return {
        "term_before": term0,
        "term_after": max(terms) if terms else -1,
        "changes": max(changes(s) for s in sampler.samples),
        "no_leader": sum(1 for s in sampler.samples for a in s if a and not a[0]),
        "unanswered": sum(1 for s in sampler.samples for a in s if a is None),
        "samples": sum(len(s) for s in sampler.samples),
        "cpu": cpu,
        "bench": res,
    }


def run(tmp, used):
    """Runs both clusters in turn; returns the report's lines (markdown)."""
    results = {}
    for kind in ("quoin", "etcd"):
        c = bench.Cluster(kind, 3, tmp, used)
        try:
            c.start()
            results[kind] = measure(c)
        finally:
            c.stop()
        r = results[kind]
        print("elections %-5s term %d -> %d, leader changes seen %d, no-leader answers %d, unanswered %d, "
              "%.0f puts/s, errors %d" % (kind, r["term_before"], r["term_after"], r["changes"], r["no_leader"],
                                          r["unanswered"], r["bench"]["ops_per_sec"], r["bench"]["errors"]),
              flush=True)
    out = ["3 members each, default timeouts (heartbeat 100 ms, election 1000 ms); %d writers "
           "(quoin-bench put, 8 connections to the leader, 256-byte values) for %.0f s. Every member's Status "
           "is asked every 100 ms (0.5 s deadline): 'leader changes' is the most any member saw its reported "
           "leader id switch; the term is the highest any member reports. etcd 3.4 runs without --pre-vote "
           "(its default), quoin always uses PreVote." % (WRITERS, SECS), "",
           "| server | raft term before → after | leader changes seen | answers without a leader | "
           "Status calls unanswered / made | puts/s | put errors | p99 ms | max ms | CPU s (3 members) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("etcd", "quoin"):
        r = results[kind]
        b = r["bench"]
        out.append("| %s | %d → %d | %d | %d | %d / %d | %.0f | %d | %.1f | %.1f | %.1f |" % (
            kind, r["term_before"], r["term_after"], r["changes"], r["no_leader"], r["unanswered"], r["samples"],
            b["ops_per_sec"], b["errors"], b["latency_ms"]["p99"], b["latency_ms"]["max"], r["cpu"]))
    return out


def main():
    tmp = tempfile.mkdtemp(prefix="quoin-elections-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        lines = run(tmp, set())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    now = datetime.datetime.now()
    head = ["# Leader stability under load: quoin vs etcd 3.4, " + now.strftime("%Y-%m-%d %H:%M"), "",
            "Machine: " + bench.machine(), ""]
    bench.write_result("\n".join(head + lines) + "\n", now.strftime("elections-%Y-%m-%d-%H%M.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
