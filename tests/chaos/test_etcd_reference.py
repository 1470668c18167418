"""The checker against the real etcd 3.4: ten clients doing random puts, gets,
CAS (on value and on mod_revision), deletes and two-key txns on five keys for
about ten seconds (one of them with a timeout so short that many of its
operations end indeterminate), a lease client (one lease left to expire, one
revoked), and two watchers (one reconnecting midway) with progress
notifications. etcd is the
reference: its history must come out linearizable with no anomaly, which keeps
the checker honest about what a correct server does."""
import json
import os
import random
import sys
import tempfile
import threading
import time

import etcd3
import pytest
from etcd3 import etcdrpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from history import History, Recorder, WatchRecorder, prefix_end, run_lincheck  # noqa: E402
from compat.etcdctl_diff import ETCD, start_etcd, stop_process  # noqa: E402
from workload import random_kv_op  # noqa: E402

PREFIX = "ref/"
KEYS = [PREFIX + "k%d" % i for i in range(5)]
SECONDS = 10


def kv_client(rec, name, deadline, seed):
    """Random operations; CAS expectations come from this client's own reads,
    so some match and some are stale."""
    rng = random.Random(seed)
    seen = {}
    n = 0
    while time.monotonic() < deadline:
        n += 1
        random_kv_op(rec, rng, KEYS, seen, "%s-%d" % (name, n))


def lease_client(rec, deadline):
    """Leases on keys of their own: one expires on its own, one is revoked."""
    while time.monotonic() + 4 < deadline:
        expiring = rec.lease_grant(2)
        revoked = rec.lease_grant(30)
        if expiring is None or revoked is None:
            continue
        rec.put(PREFIX + "lease-expires", "e%d" % expiring, lease=expiring)
        rec.put(PREFIX + "lease-revoked", "r%d" % revoked, lease=revoked)
        time.sleep(0.5)
        rec.lease_revoke(revoked)
        rec.get(PREFIX + "lease-revoked")
        until = time.monotonic() + 6
        while time.monotonic() < until and not rec.lease_expired(expiring):
            time.sleep(0.2)
        rec.get(PREFIX + "lease-expires")


@pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="etcd 3.4 not installed")
def test_real_etcd_history_is_linearizable(tmp_path):
    workdir = tempfile.mkdtemp(dir=str(tmp_path))
    proc, endpoint = start_etcd(workdir, ["--experimental-watch-progress-notify-interval",
                                          "500ms"])
    host, port = endpoint.split(":")
    port = int(port)
    path = str(tmp_path / "etcd-history.jsonl")
    h = History(path)
    try:
        first = etcd3.client(host, port, timeout=5)
        start_rev = first.kvstub.Range(etcdrpc.RangeRequest(key=b"x"), 5).header.revision + 1
        watchers = [WatchRecorder(h, "w-all", host, port, PREFIX, prefix_end(PREFIX), start_rev),
                    WatchRecorder(h, "w-k0", host, port, KEYS[0], None, start_rev)]
        for w in watchers:
            w.start()
        deadline = time.monotonic() + SECONDS
        threads = []
        for i in range(10):
            # A hasty client gives up after a few milliseconds: its timed-out
            # operations (about 5% of all) may or may not have happened, as
            # under faults.
            rec = Recorder(h, "c%d" % i, etcd3.client(host, port), timeout=0.004 if i == 0 else 5)
            threads.append(threading.Thread(target=kv_client,
                                            args=(rec, "c%d" % i, deadline, i)))
        threads.append(threading.Thread(
            target=lease_client, args=(Recorder(h, "lease", etcd3.client(host, port)), deadline)))
        for t in threads:
            t.start()
        time.sleep(SECONDS / 2)
        watchers[0].reconnect()
        for t in threads:
            t.join(SECONDS + 30)
        final = Recorder(h, "final", first)
        final.range(PREFIX, prefix_end(PREFIX), final=True)
        time.sleep(1.0)  # let the watchers catch up and see a progress notification
        for w in watchers:
            w.stop()
        h.close()
    finally:
        stop_process(proc)

    lines = open(path).read().splitlines()
    assert len(lines) > 500, "too little traffic recorded: %d operations" % len(lines)
    assert any('"cas"' in x and '"succeeded":true' in x for x in lines)
    assert any('"cas"' in x and '"succeeded":false' in x for x in lines)
    assert any('"type":"reconnect"' in x for x in lines)
    assert any('"type":"progress"' in x for x in lines)
    assert any('"op":"lease_revoke"' in x and '"status":"ok"' in x for x in lines)
    assert any('"status":"indeterminate"' in x for x in lines)
    code, report = run_lincheck(path)
    assert code == 0, report

    # The same history with one read turned stale must be rejected: the first
    # read that followed two acknowledged puts of its key now reports the
    # first of them. (Early in the history, so that proving the violation does
    # not have to rule out every placement of hundreds of timed-out writes.)
    ops = [json.loads(x) for x in lines]
    puts = {}
    victim = None
    for i in sorted(range(len(ops)), key=lambda i: ops[i]["call"]):
        op = ops[i]
        done = [p for p in puts.get(op.get("key"), []) if p["return"] < op["call"]]
        if op["op"] == "get" and op["status"] == "ok" and len(done) >= 2:
            victim = i
            break
        if op["op"] == "put" and op["status"] == "ok":
            puts.setdefault(op["key"], []).append(op)
    old = min(puts[ops[victim]["key"]], key=lambda p: p["rev"])
    ops[victim].update(found=True, value=old["value"], mod_rev=old["rev"], create_rev=old["rev"],
                       version=1)
    stale = str(tmp_path / "stale-history.jsonl")
    with open(stale, "w") as f:
        f.write("".join(json.dumps(op) + "\n" for op in ops))
    code, report = run_lincheck(stale)
    assert code == 1 and "NONLINEARIZABLE" in report, report
