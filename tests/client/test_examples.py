"""The libquoin examples against one quoin member and against a 3-member
quoin cluster: the reboot coordinator never lets more than N machines hold a
reboot slot, and the service watcher's list follows registrations,
deregistrations and lease expiry, also when the member they talk to is killed
(libquoin fails over to the next endpoint)."""
import os
import signal
import subprocess
import time

import pytest

from qtest import Cluster, quoin_bin


def example(name):
    return os.path.join(os.path.dirname(quoin_bin()), "examples", name)


def endpoint(server):
    return "127.0.0.1:%d" % server.client_port


def run_coordinators(endpoints, n=6, slots=2, hold="0.4", during=None):
    """Runs n coordinators at once; `during` is called once they have started.
    Checks that every one rebooted and that at no revision of the cluster's
    history more than `slots` held a slot (each prints the revisions at which
    its holder key was created and deleted)."""
    procs = [subprocess.Popen([example("reboot-coordinator"), "--endpoints", endpoints, "--slots", str(slots),
                               "--id", "m%d" % i, "--hold", hold], stdout=subprocess.PIPE, text=True)
             for i in range(n)]
    if during:
        during()
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        times = dict(line.split() for line in out.split("\n") if line)
        spans.append((int(times["acquired"]), int(times["released"])))
    assert all(a < r for a, r in spans), spans
    edges = sorted([(a, 1) for a, _ in spans] + [(r, -1) for _, r in spans])  # a release first at a tie
    holding = peak = 0
    for _, d in edges:
        holding += d
        peak = max(peak, holding)
    assert peak <= slots, spans
    assert len(spans) == n


def test_reboot_coordinator_holds_at_most_n_slots(servers):
    run_coordinators(endpoint(servers().start()))


@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_reboot_coordinator_on_three_members_survives_losing_its_member(tmp_path, victim):
    c = Cluster(tmp_path).start()
    try:
        lead = c.leader()
        others = [i for i in range(3) if i != lead]
        # the member every coordinator talks to first, then the rest
        order = [others[0], lead, others[1]] if victim == "follower" else [lead] + others
        eps = ",".join(c.endpoint(i) for i in order)

        def kill():
            time.sleep(0.5)  # some hold a slot, others wait for one
            c.members[order[0]].stop(signal.SIGKILL)

        run_coordinators(eps, hold="0.6", during=kill)
        assert c.members[order[0]].proc.returncode == -signal.SIGKILL
    finally:
        c.stop()


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


def test_service_watch_on_three_members_follows_after_its_member_dies(tmp_path):
    c = Cluster(tmp_path).start()
    procs = []
    try:
        lead = c.leader()
        f1, f2 = [i for i in range(3) if i != lead]
        # registrations go to the leader; the watcher talks to a follower first
        reg_eps = ",".join(c.endpoint(i) for i in (lead, f1, f2))
        watch_eps = ",".join(c.endpoint(i) for i in (f1, lead, f2))

        def reg(key, value):
            p = subprocess.Popen([example("service-watch"), "register", "--endpoints", reg_eps, "--ttl", "2", key,
                                  value], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().startswith("registered")
            return p

        a = reg("/svc/db/a", "10.0.1.1:5432")
        watch = subprocess.Popen([example("service-watch"), "watch", "--endpoints", watch_eps, "--updates", "5",
                                  "/svc/db/"], stdout=subprocess.PIPE, text=True)
        procs.append(watch)
        assert read_lists(watch, 1) == [["10.0.1.1:5432"]]
        b = reg("/svc/db/b", "10.0.1.2:5432")
        assert read_lists(watch, 1) == [["10.0.1.1:5432", "10.0.1.2:5432"]]
        c.members[f1].stop(signal.SIGKILL)  # the watcher's member: its watch resumes elsewhere
        d = reg("/svc/db/d", "10.0.1.4:5432")  # while the watcher fails over
        assert read_lists(watch, 1) == [["10.0.1.1:5432", "10.0.1.2:5432", "10.0.1.4:5432"]]
        b.send_signal(signal.SIGTERM)
        assert b.wait(10) == 0
        assert read_lists(watch, 1) == [["10.0.1.1:5432", "10.0.1.4:5432"]]
        a.kill()  # gone when its lease expires
        a.wait()
        assert read_lists(watch, 1) == [["10.0.1.4:5432"]]
        assert watch.wait(10) == 0
        d.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        c.stop()
