"""quoin-bench against quoin members: every workload runs, answers without
errors, and reports a consistent latency distribution in its JSON line; its
connections spread over the endpoints given. (No timing is asserted: speed is
what `make bench` is for.)"""
import json
import os
import subprocess

import etcd3

from qtest import quoin_bin

WORKLOADS = [
    ["--total", "300", "put"],
    ["--total", "300", "range"],
    ["--total", "300", "--consistency", "s", "range"],
    ["--total", "300", "txn-put"],
    ["--total", "300", "lease-keepalive"],
    ["--total", "300", "--read-ratio", "0.5", "mix"],
    ["--total", "40", "--watchers", "5", "--rate", "200", "--prefix", "w", "watch-latency"],
    ["--duration", "0.5", "put"],
]


def bench(*args):
    path = os.path.join(os.path.dirname(quoin_bin()), "quoin-bench")
    return subprocess.run([path] + list(args), capture_output=True, text=True, timeout=60)


def test_workloads_report_json(servers):
    s = servers().start()
    ep = "127.0.0.1:%d" % s.client_port
    for w in WORKLOADS:
        r = bench("--endpoints", ep, "--conns", "2", "--clients", "8", "-w", "json", *w)
        assert r.returncode == 0, (w, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["errors"] == 0
        lat = out["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"], (w, out)
        if "watch-latency" in w:
            assert out["ops"] == 40 * 5  # every watcher saw every put once
        elif "--total" in w:
            assert out["ops"] == 300


def test_bad_usage_exits_2():
    assert bench("nosuchworkload").returncode == 2
    assert bench("--clients", "0", "put").returncode == 2
    assert bench("-w", "xml", "put").returncode == 2


def test_unreachable_server_reports_errors():
    # nothing listens on port 1: every request ends at its deadline
    r = bench("--endpoints", "127.0.0.1:1", "--total", "2", "--clients", "2", "--deadline-ms", "300",
              "-w", "json", "put")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["errors"] == 2
    assert out["last_error"]["code"] == 4


def test_connections_spread_over_the_endpoints(servers):
    # two independent members: connection i starts at endpoint i mod 2, so
    # both get writes (a cluster's members would share them)
    a, b = servers(name="a").start(), servers(name="b").start()
    eps = "127.0.0.1:%d,127.0.0.1:%d" % (a.client_port, b.client_port)
    r = bench("--endpoints", eps, "--conns", "2", "--clients", "8", "--total", "400", "--key-space", "1000000",
              "-w", "json", "put")
    assert r.returncode == 0, r.stderr
    counts = []
    for s in (a, b):
        c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=5)
        counts.append(sum(1 for _ in c.get_prefix("k", keys_only=True)))
        c.close()
    assert all(n > 0 for n in counts), counts
    assert sum(counts) <= 400
