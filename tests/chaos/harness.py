#!/usr/bin/python3
"""The chaos harness: a real 3- or 5-member quoin (or etcd 3.4) cluster, ten or
more recording clients, faults at random times, then the checks.

    /usr/bin/python3 tests/chaos/harness.py --duration 600 --members 5 --faults all
    /usr/bin/python3 tests/chaos/harness.py --target etcd --faults net,process

A run: make the network (namespaces, or proxies where namespaces cannot be
made), start the members, start the workload (workload.py) and the fault
scheduler (faults.py) for --duration seconds, heal everything, let the
cluster settle, read every key through every member (final reads), compare
the members' key-space hashes, stop the watchers, and run the checker
(lincheck) on the history. The report (report.md, report.json) goes to --out
with the history, the checker's output, the fault log and the member logs.
Exit code: 0 no anomaly, 1 anomalies, 2 the checker could not decide, 3 the
harness itself failed. docs/testing.md says how to read the report.

Everything the run makes is named after its PID (namespaces qch-<pid>-n1...)
and removed by that name on every exit (Ctrl-C included); members are killed
by PID only.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

import grpc
from etcd3 import etcdrpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import faults as F  # noqa: E402
import report  # noqa: E402
from cluster import Cluster  # noqa: E402
from history import History, lincheck_binary  # noqa: E402
from net import NetnsNet, ProxyNet  # noqa: E402
from qtest import ROOT  # noqa: E402
from workload import Workload  # noqa: E402

BUGS = ["follower-local-read", "ack-before-fsync"]


def parser():
    p = argparse.ArgumentParser(description="quoin's fault-injection harness")
    p.add_argument("--target", choices=["quoin", "etcd"], default="quoin")
    p.add_argument("--members", type=int, choices=[3, 5], default=3)
    p.add_argument("--duration", type=int, default=60, help="seconds of workload under faults")
    p.add_argument("--faults", default="all",
                   help="comma-separated kinds or groups (net, process, disk, power, membership), "
                        "'all' or 'none'; kinds: " + ", ".join(F.FAULTS))
    p.add_argument("--clients", type=int, default=10, help="key-value clients")
    p.add_argument("--lease-clients", type=int, default=2)
    p.add_argument("--watchers", type=int, default=3)
    p.add_argument("--keys", type=int, default=6, help="keys the key-value clients share")
    p.add_argument("--op-timeout", type=float, default=2.0,
                   help="seconds before a call is given up (recorded indeterminate)")
    p.add_argument("--net", choices=["auto", "netns", "proxy"],
                   default=os.environ.get("CHAOS_NET", "auto"),
                   help="auto: namespaces where they can be made, else proxies "
                        "(default: $CHAOS_NET, else auto)")
    p.add_argument("--interval", type=float, nargs=2, default=[1.0, 3.0], metavar=("MIN", "MAX"),
                   help="seconds between faults")
    p.add_argument("--hold", type=float, nargs=2, default=[1.5, 5.0], metavar=("MIN", "MAX"),
                   help="seconds a fault lasts")
    p.add_argument("--combine", type=float, default=0.3,
                   help="probability that a second fault of another group joins the first")
    p.add_argument("--snapshot-count", type=int, default=10000,
                   help="members' --snapshot-count: a checkpoint (and raft log compaction, "
                        "so lagging members catch up by snapshot) every N entries; 0 = default")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--bug", choices=BUGS, default=None,
                   help="run quoin's test build with this deliberate bug switched on")
    p.add_argument("--san", action="store_true",
                   help="run quoin's test build (ASan, fault hooks) for every member")
    p.add_argument("--out", default=None, help="report directory (default tests/chaos/out/<time>)")
    p.add_argument("--settle", type=int, default=60,
                   help="seconds the healed cluster gets to answer reads again")
    p.add_argument("--check-ms", type=int, default=60000, help="checker time budget per group")
    p.add_argument("--quiet", action="store_true")
    return p


def _checker():
    fast = os.path.join(ROOT, "build", "tests", "chaos", "lincheck")
    return fast if os.access(fast, os.X_OK) else lincheck_binary()


class Run:
    def __init__(self, opts):
        self.o = opts
        self.tag = "qch-%d" % os.getpid()
        self.seed = opts.seed if opts.seed is not None else random.randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.notes = []
        self.anomalies = []
        self.out = opts.out or os.path.join(HERE, "out", time.strftime("%Y%m%d-%H%M%S"))
        self.workdir = os.path.join(self.out, "work")
        shutil.rmtree(self.workdir, ignore_errors=True)  # a fresh cluster every run
        os.makedirs(self.workdir)
        for name in ("run.log", "report.md", "report.json", "lincheck.txt"):
            if os.path.exists(os.path.join(self.out, name)):
                os.unlink(os.path.join(self.out, name))
        self.history_path = os.path.join(self.out, "history.jsonl")
        self.fault_kinds = F.parse_faults(opts.faults)
        self.net = self.cluster = self.workload = self.sched = None
        self.mu = threading.Lock()

    def log(self, msg):
        if not self.o.quiet:
            print(msg, flush=True)
        with open(os.path.join(self.out, "run.log"), "a") as f:
            f.write(msg + "\n")

    # ---- set-up ----

    def _choose(self):
        o = self.o
        if o.target == "etcd":
            dropped = [k for k in self.fault_kinds if F.GROUPS[k] in ("disk", "power")]
            if dropped:
                self.notes.append("etcd has no disk or power hooks: skipped %s" % ", ".join(dropped))
            self.fault_kinds = [k for k in self.fault_kinds if k not in dropped]
        if any(F.GROUPS[k] == "power" for k in self.fault_kinds) or o.bug:
            o.san = True
        kind = o.net
        if kind == "auto":
            kind = "netns" if NetnsNet.available(self.tag) else "proxy"
            if kind == "proxy":
                self.notes.append("no network namespaces here (needs CAP_NET_ADMIN): "
                                  "members behind loopback proxies")
        if kind == "netns":
            for name in NetnsNet.remove_stale():
                self.notes.append("removed %s, left by a run that was killed" % name)
            self.net = NetnsNet(o.members, self.tag)
            try:
                self.net.setup()
            except RuntimeError as e:
                self.net.close()
                if o.net == "netns":
                    raise
                self.notes.append("cannot make the namespaces (%s): members behind loopback "
                                  "proxies" % e)
                kind = "proxy"
        if kind == "proxy":
            self.net = ProxyNet(o.members, self.tag)
            self.net.setup()
        unsupported = [k for k in self.fault_kinds
                       if F.GROUPS[k] == "net" and (not self.net.supports(k) or (
                           kind == "proxy" and o.target == "etcd"))]
        if unsupported:
            self.notes.append("%s network cannot inject %s here: skipped" % (
                kind, ", ".join(unsupported)))
        self.fault_kinds = [k for k in self.fault_kinds if k not in unsupported]

    def config(self):
        o = self.o
        return {"target": o.target, "members": o.members, "duration": o.duration,
                "faults": ",".join(self.fault_kinds) or "none", "clients": o.clients,
                "lease_clients": o.lease_clients, "watchers": o.watchers, "keys": o.keys,
                "snapshot_count": o.snapshot_count,
                "op_timeout": o.op_timeout, "net": self.net.kind if self.net else o.net,
                "seed": self.seed, "bug": o.bug or "none",
                "binary": os.path.basename(os.path.dirname(self.cluster.binary)) + "/" +
                os.path.basename(self.cluster.binary) if self.cluster else "?"}

    # ---- the run ----

    def _monitor(self):
        """A member that died when no fault stopped it is a finding (its log
        says why); it is restarted so the run goes on."""
        with self.mu:
            for m in self.cluster.members:
                if m.proc is not None and not m.alive() and not m.expect_exit:
                    self.anomalies.append({
                        "kind": "MEMBER-CRASHED",
                        "text": "%s exited with %s at %.1fs, no fault stopping it" % (
                            m.name, m.proc.returncode, time.monotonic() - self.t0),
                        "excerpt": m.log_tail(25)})
                    self.log("  %s exited by itself (%s): restarted" % (m.name, m.proc.returncode))
                    m.kill()
                    m.start()

    def _heal_all(self):
        with self.mu:
            self.net.clear()
            self.ctx.blocked.clear()
            for m in self.cluster.live():
                if m.paused:
                    m.resume()
                if not m.alive() or m.binary != self.cluster.binary:
                    m.kill()
                    m.start()

    def _settled(self, timeout=60):
        """Waits until every member answers a linearizable read."""
        deadline = time.monotonic() + timeout
        pending = self.cluster.live()
        while pending and time.monotonic() < deadline:
            for m in list(pending):
                host, port = m.endpoint
                with grpc.insecure_channel("%s:%d" % (host, port)) as ch:
                    try:
                        etcdrpc.KVStub(ch).Range(etcdrpc.RangeRequest(key=b"chaos/"), timeout=2)
                        pending.remove(m)
                    except grpc.RpcError:
                        pass
            if pending:
                time.sleep(0.5)
        return pending

    def _compare_members(self, timeout=30):
        """Every member must reach the same revision with the same key-space hash."""
        deadline = time.monotonic() + timeout
        revs = {}
        while time.monotonic() < deadline:
            revs = {m.name: self.cluster.revision(m) for m in self.cluster.live()}
            if None not in revs.values() and len(set(revs.values())) == 1:
                break
            time.sleep(0.5)
        if None in revs.values() or len(set(revs.values())) != 1:
            self.anomalies.append({"kind": "MEMBERS-DIVERGED",
                                   "text": "the members never reached one revision",
                                   "excerpt": ["%s: %s" % kv for kv in sorted(revs.items())]})
            return
        rev = next(iter(revs.values()))
        hashes = {m.name: self.cluster.hash_kv(m, rev) for m in self.cluster.live()}
        self.log("  every member at revision %d; hashes %s" % (rev, sorted(set(hashes.values()),
                                                                           key=str)))
        if len(set(hashes.values())) != 1:
            self.anomalies.append({"kind": "MEMBERS-DIVERGED",
                                   "text": "key-space hashes differ at revision %d" % rev,
                                   "excerpt": ["%s: %s" % kv for kv in sorted(hashes.items())]})

    def run(self):
        o = self.o
        self._choose()
        self.log("chaos: %s, %d members, %ds, faults: %s, seed %d, out %s" % (
            o.target, o.members, o.duration, ",".join(self.fault_kinds) or "none", self.seed,
            self.out))
        for n in self.notes:
            self.log("  note: " + n)
        self.cluster = Cluster(o, self.net, self.workdir)
        self.log("  network %s; binary %s" % (self.net.kind, self.cluster.binary))
        self.cluster.start()
        ids = self.cluster.member_ids()
        h = History(self.history_path)
        self.t0 = time.monotonic()
        self.ctx = F.Context(self.cluster, self.net, ids, self.anomalies, self.log)
        self.workload = Workload(h, self.cluster, o, self.rng)
        self.workload.start()
        self.sched = F.Scheduler(self.ctx, self.fault_kinds, self.rng, self.t0, o.combine,
                                 tuple(o.interval), tuple(o.hold))
        self.sched.lock = self.mu
        self.sched.start()
        end = self.t0 + o.duration
        while time.monotonic() < end:
            time.sleep(0.5)
            self._monitor()
            if self.sched.error:
                raise self.sched.error
        self.sched.stop()
        self.log("%7.1fs  workload stops; healing everything" % (time.monotonic() - self.t0))
        self._heal_all()
        self.workload.finish()
        stuck = self._settled(o.settle)
        if stuck:
            self.anomalies.append({"kind": "CLUSTER-UNAVAILABLE",
                                   "text": "after healing, %s answered no read in %ds" % (
                                       [m.name for m in stuck], o.settle),
                                   "excerpt": sum((m.log_tail(8) for m in stuck), [])})
        self.workload.lease_pass()
        self.workload.final_reads()
        self._compare_members(min(30, o.settle))
        self.workload.stop_watchers()
        self._monitor()
        h.close()
        return self.check()

    def check(self):
        checker_out = os.path.join(self.out, "lincheck.txt")
        self.log("  checking %s" % self.history_path)
        r = subprocess.run([_checker(), "--max-ms", str(self.o.check_ms), "--max-steps",
                            "4000000000", self.history_path],
                           capture_output=True, text=True, timeout=3600)
        text = r.stdout + r.stderr
        with open(checker_out, "w") as f:
            f.write(text)
        verdicts = {0: "linearizable", 1: "VIOLATION", 2: "unknown"}
        found = report.checker_findings(text)
        anomalies = found + self.anomalies
        if anomalies:
            verdict = "ANOMALIES"
        elif r.returncode == 0:
            verdict = "clean"
        elif r.returncode == 2:
            verdict = "UNKNOWN"
        else:
            verdict = "HARNESS-ERROR"
        watchers = {}
        summary = {
            "verdict": verdict,
            "config": self.config(),
            "notes": self.notes,
            "operations": report.op_counts(self.history_path, watchers),
            "watchers": watchers,
            "faults": self.sched.counts(),
            "fault_log": self.sched.events,
            "checker": {"exit": r.returncode, "verdict": verdicts.get(r.returncode, "error"),
                        "first_line": text.splitlines()[0] if text else ""},
            "anomalies": anomalies,
            "files": {"history": self.history_path, "checker": checker_out,
                      "workdir": self.workdir},
        }
        jpath, mpath = report.write(self.out, summary)
        tot = summary["operations"]["total"]
        self.log("  %d operations (%d ok, %d failed, %d indeterminate); faults %s" % (
            tot["invoked"], tot["ok"], tot["fail"], tot["indeterminate"], summary["faults"]))
        self.log("verdict: %s (%d anomalies) — report %s" % (verdict, len(anomalies), mpath))
        return summary

    def cleanup(self):
        if self.sched:
            self.sched.stop_ev.set()
        if self.workload:
            self.workload.stop.set()
        if self.cluster:
            self.cluster.stop()
        if self.net:
            self.net.close()


def run(opts):
    """Runs one chaos run; returns the summary (see report.py)."""
    r = Run(opts)
    try:
        return r.run()
    finally:
        r.cleanup()


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    opts = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        s = run(opts)
    except KeyboardInterrupt:
        print("chaos: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except Exception:  # the harness failed, not the server
        traceback.print_exc()
        print("chaos: harness error", file=sys.stderr)
        return 3
    return {"clean": 0, "ANOMALIES": 1, "UNKNOWN": 2}.get(s["verdict"], 3)


if __name__ == "__main__":
    sys.exit(main())
