"""The libquoin examples against one quoin member: the reboot coordinator never
lets more than N machines hold a reboot slot, and the service watcher's list
follows registrations, deregistrations and lease expiry."""
import os
import signal
import subprocess
import time

from qtest import quoin_bin


def example(name):
    return os.path.join(os.path.dirname(quoin_bin()), "examples", name)


def endpoint(server):
    return "127.0.0.1:%d" % server.client_port


def test_reboot_coordinator_holds_at_most_n_slots(servers):
    s = servers().start()
    procs = [subprocess.Popen([example("reboot-coordinator"), "--endpoints", endpoint(s), "--slots", "2",
                               "--id", "m%d" % i, "--hold", "0.4"], stdout=subprocess.PIPE, text=True)
             for i in range(6)]
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        times = dict(line.split() for line in out.split("\n") if line)
        spans.append((int(times["acquired"]), int(times["released"])))
    # every machine rebooted, and at no instant were more than two holding
    edges = sorted([(a, 1) for a, _ in spans] + [(r, -1) for _, r in spans])
    holding = peak = 0
    for _, d in edges:
        holding += d
        peak = max(peak, holding)
    assert peak <= 2, spans
    assert len(spans) == 6


def read_lists(proc, n):
    lists = []
    for _ in range(n):
        line = proc.stdout.readline()
        assert line.startswith("list:"), line
        lists.append(line.split()[1:])
    return lists


def test_service_watch_follows_the_prefix(servers):
    s = servers().start()
    ep = endpoint(s)
    reg = lambda key, value, ttl="2": subprocess.Popen(
        [example("service-watch"), "register", "--endpoints", ep, "--ttl", ttl, key, value],
        stdout=subprocess.PIPE, text=True)
    a = reg("/svc/web/a", "10.0.0.1:80")
    assert a.stdout.readline().startswith("registered")
    watch = subprocess.Popen([example("service-watch"), "watch", "--endpoints", ep, "--updates", "4", "/svc/web/"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert read_lists(watch, 1) == [["10.0.0.1:80"]]
        b = reg("/svc/web/b", "10.0.0.2:80")
        assert b.stdout.readline().startswith("registered")
        assert read_lists(watch, 1) == [["10.0.0.1:80", "10.0.0.2:80"]]
        b.send_signal(signal.SIGTERM)  # clean exit: revoked at once
        assert b.wait(10) == 0
        assert read_lists(watch, 1) == [["10.0.0.1:80"]]
        t0 = time.monotonic()
        a.kill()  # dies without deregistering: gone when its 2 s lease expires
        a.wait()
        assert read_lists(watch, 1) == [[]]
        assert time.monotonic() - t0 < 6
        assert watch.wait(10) == 0
    finally:
        for p in (a, watch):
            if p.poll() is None:
                p.kill()
                p.wait()
