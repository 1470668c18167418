"""Leases on a 3-member cluster, used through followers: a follower forwards
renewals and TimeToLive to the leader and answers with the leader's answer,
word for word what the leader itself answers; leases live through a leader
change (neither revoked before the time a renewal promised nor kept long
after), and a member without a leader answers etcd's "no leader"."""
import re
import signal
import threading
import time

import etcd3
import grpc

from test_cluster import ctl, make_cluster, wait_leader

TTL = 5


def ep(s):
    return ["127.0.0.1:%d" % s.client_port]


def same(out):
    """Seconds left tick between two calls."""
    return re.sub(r"remaining\(\d+s\)", "remaining(<n>s)", out)


def renew(c, lease_id):
    """One keep-alive through c's member; the TTL it answered."""
    return list(c.refresh_lease(lease_id))[0].TTL


def client(s):
    return etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)


def roles(members):
    """The leader, its term, and each follower with a client of it."""
    leader, term = wait_leader(members)
    return (leader, term) + tuple((s, client(s)) for s in members if s is not leader)


def test_lease_calls_on_followers_answer_as_the_leader(tmp_path):
    members = make_cluster(tmp_path)
    try:
        leader, term, (f1, c1), (f2, c2) = roles(members)
        lease = c1.lease(30)
        c1.put("/leased", "v", lease=lease)
        # TimeToLive and keep-alive through the other follower.
        info = c2.get_lease_info(lease.id)
        assert info.grantedTTL == 30 and 25 <= info.TTL <= 30
        assert [k for k in info.keys] == [b"/leased"]
        assert renew(c2, lease.id) == 30
        hex_id = "%x" % lease.id
        for s in (f1, f2):
            r = ctl(ep(s), "lease", "list")
            assert r.returncode == 0 and hex_id in r.stdout, r.stdout + r.stderr
        # The same commands through a follower and through the leader print
        # the same: found, not found, bad id.
        for args in (["lease", "timetolive", hex_id, "--keys"],
                     ["lease", "keep-alive", "--once", hex_id],
                     ["lease", "timetolive", "1234"],
                     ["lease", "keep-alive", "--once", "1234"]):
            want, got = ctl(ep(leader), *args), ctl(ep(f2), *args)
            assert (got.returncode, same(got.stdout), got.stderr) == \
                (want.returncode, same(want.stdout), want.stderr), (args, want, got)
        assert "already expired" in ctl(ep(f1), "lease", "timetolive", "1234").stdout
        assert "requested lease not found" in ctl(ep(f1), "lease", "keep-alive", "--once", "1234").stderr
        # Revoked through a follower: the keys go, every member forgets it.
        assert ctl(ep(f2), "lease", "revoke", hex_id).returncode == 0
        assert ctl(ep(f1), "get", "/leased", "--print-value-only").stdout == ""
        assert "already expired" in ctl(ep(f1), "lease", "timetolive", hex_id).stdout

        # The leader frozen (its connections stay open, nothing answers): a
        # renewal through a follower gives up on it after its 1 s try and is
        # answered by the leader the other two elect.
        other = c1.lease(30)
        leader.proc.send_signal(signal.SIGSTOP)
        started = time.time()
        assert renew(c2, other.id) == 30
        assert time.time() - started < 6
        assert wait_leader([f1, f2])[1] > term

        # Two members gone: the last one has no leader, and says so (after
        # etcd's request timeout, 5 s + 2 election timeouts).
        for s in (leader, f1):
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(10)
        time.sleep(2.5)
        # etcdctl would retry "no leader" by itself: the stub is called once.
        stub = client(f2).leasestub
        calls = {
            "timetolive": lambda: stub.LeaseTimeToLive(
                etcd3.etcdrpc.LeaseTimeToLiveRequest(ID=other.id), 15),
            "keepalive": lambda: list(stub.LeaseKeepAlive(
                iter([etcd3.etcdrpc.LeaseKeepAliveRequest(ID=other.id)]), 15)),
        }
        outcomes = {}

        def run(name, call):
            started = time.time()
            try:
                call()
                outcomes[name] = ("answered without a leader", 0)
            except grpc.RpcError as e:
                outcomes[name] = ((e.code(), e.details()), time.time() - started)

        threads = [threading.Thread(target=run, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for name, (what, took) in outcomes.items():
            assert what == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"), (name, what)
            assert 6 <= took <= 10, (name, took)
        assert len(outcomes) == 2
    finally:
        for s in members:
            s.stop(signal.SIGKILL)


def gone_at(c, key, deadline):
    """Polls until key is gone; returns when (or None at the deadline)."""
    while time.time() < deadline:
        if c.get(key)[0] is None:
            return time.time()
        time.sleep(0.1)
    return None


def test_leases_across_a_leader_change(tmp_path):
    members = make_cluster(tmp_path)
    try:
        leader, term, (f1, c1), (f2, c2) = roles(members)
        kept, left = c1.lease(TTL), c1.lease(TTL)
        c1.put("/kept", "v", lease=kept)
        c1.put("/left", "v", lease=left)

        # `kept` is renewed through f1 all along; every answer is the TTL.
        answers, stop = [], threading.Event()
        last_ok = [0.0]

        def keep():
            c = client(f1)
            while not stop.is_set():
                try:
                    answers.append(renew(c, kept.id))
                    last_ok[0] = time.time()
                except Exception:
                    pass
                time.sleep(TTL / 5)

        t = threading.Thread(target=keep)
        t.start()
        time.sleep(2)
        # `left` is renewed once, then the leader dies: its successor takes
        # the lease over from the deadline the renewal persisted.
        sent = time.time()
        assert renew(c2, left.id) == TTL
        received = time.time()
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        new_leader, new_term = wait_leader([f1, f2])
        assert new_term > term
        gone = gone_at(c2, "/left", received + 3 * TTL)
        assert gone is not None, "a lease nobody renews outlived the leader change"
        assert gone >= sent + TTL, "revoked %.2fs before the renewal's promise" % (sent + TTL - gone)
        # Deadline on disk (renewal + TTL + look-ahead of TTL/2) + grace
        # (1 election timeout) + the 500 ms revoke tick, plus polling.
        assert gone <= received + TTL * 1.5 + 1.0 + 0.5 + 1.0, "revoked %.2fs late" % (gone - received - TTL)

        assert c2.get("/kept")[0] == b"v"
        assert last_ok[0] > gone - TTL / 2, "renewals through the follower stopped"
        stop.set()
        t.join(15)
        assert answers and set(answers) == {TTL}, answers
        # Nobody renews `kept` any more: it goes TTL after the last renewal
        # (the new leader's own clock; no further leader change).
        gone = gone_at(c2, "/kept", last_ok[0] + 3 * TTL)
        assert gone is not None and last_ok[0] + TTL - 1.0 <= gone <= last_ok[0] + TTL + 2.0, \
            (gone, last_ok[0])
    finally:
        for s in members:
            s.stop(signal.SIGKILL)
