"""Three and five real quoin members on loopback: writes on any member, linearizable
reads on any member, the leader killed with SIGKILL under writes (a new leader,
no acknowledged write lost), the killed member restarted and caught up, equal
HashKV everywhere. Membership changes and snapshots are not served yet."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import etcd3
import grpc
import pytest

from qtest import Server, clean_env, free_port


def ctl(endpoints, *args):
    env = clean_env()
    env["ETCDCTL_API"] = "3"
    return subprocess.run(["etcdctl", "--endpoints", ",".join(endpoints), "--command-timeout=5s"]
                          + list(args), capture_output=True, text=True, env=env, timeout=30)


class Writers:
    """Four clients putting /w/<writer>/<n> through the given members (in
    turn) while a test breaks the cluster; a failed put is retried."""

    def __init__(self, members):
        self.acked, self._stop = [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(members[w % len(members)], w))
                         for w in range(4)]
        for t in self._threads:
            t.start()

    def _run(self, s, w):
        c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=3)
        i = 0
        while not self._stop.is_set():
            try:
                c.put("/w/%d/%d" % (w, i), str(i))
                self.acked.append("/w/%d/%d" % (w, i))
                i += 1
            except Exception:
                time.sleep(0.05)

    def stop(self):
        """Stops them; returns the keys whose put was acknowledged."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.acked


def make_cluster(tmp_path, n=3, extra=()):
    peers = [free_port() for _ in range(n)]
    cluster = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(peers))
    members = []
    for i in range(n):
        s = Server(tmp_path, name="m%d" % i, extra=extra)
        s.peer_port = peers[i]
        a = s.args
        a[a.index("--listen-peer-urls") + 1] = "http://127.0.0.1:%d" % peers[i]
        a[a.index("--initial-advertise-peer-urls") + 1] = "http://127.0.0.1:%d" % peers[i]
        a[a.index("--initial-cluster") + 1] = cluster
        members.append(s)
    for s in members:
        s.start(wait=False)
    for s in members:
        s.wait_ready()
    return members


def status(s):
    r = ctl(["127.0.0.1:%d" % s.client_port], "endpoint", "status", "-w", "json")
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)[0]["Status"]


def wait_leader(members, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in members:
            st = status(s)
            if st and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return s, st["raftTerm"]
        time.sleep(0.1)
    raise AssertionError("no leader within %ds" % timeout)


@pytest.mark.parametrize("n", [3, 5])
def test_members_survive_the_leader_being_killed(tmp_path, n):
    members = make_cluster(tmp_path, n)
    try:
        leader, term = wait_leader(members)
        eps = ["127.0.0.1:%d" % s.client_port for s in members]
        assert ctl(eps[:1], "put", "a", "1").returncode == 0
        for ep in eps:  # linearizable reads on every member
            assert ctl([ep], "get", "a", "--print-value-only").stdout == "1\n"
        follower = next(s for s in members if s is not leader)
        assert ctl(["127.0.0.1:%d" % follower.client_port], "put", "b", "2").returncode == 0
        listed = json.loads(ctl(eps[:1], "member", "list", "-w", "json").stdout)["members"]
        assert sorted(m["name"] for m in listed) == ["m%d" % i for i in range(n)]

        survivors = [s for s in members if s is not leader]
        writers = Writers(survivors[:2])
        time.sleep(1)
        killed_at = time.time()
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        new_leader, new_term = wait_leader(survivors)
        took = time.time() - killed_at
        assert new_term > term
        assert took < 2 * 1.0 + 1.5, "new leader after %.1fs" % took  # 2 election timeouts + polling
        time.sleep(1)
        acked = writers.stop()
        assert len(acked) > 20

        leader.start()  # the killed member comes back and catches up
        c = etcd3.client(host="127.0.0.1", port=survivors[0].client_port, timeout=10)
        stored = {m.key.decode() for _, m in c.get_prefix("/w/")}
        assert not [k for k in acked if k not in stored], "acknowledged writes lost"
        c.put("/after", "x")
        deadline = time.time() + 10
        hashes = set()
        while time.time() < deadline:
            r = ctl(eps, "endpoint", "hashkv", "-w", "json")
            # One (revision, hash) pair: every member at the same revision.
            hashes = {(h["HashKV"]["header"]["revision"], h["HashKV"]["hash"])
                      for h in json.loads(r.stdout)} if r.returncode == 0 else set()
            if len(hashes) == 1:
                break
            time.sleep(0.3)
        assert len(hashes) == 1, hashes
        back = ["127.0.0.1:%d" % leader.client_port]
        assert ctl(back, "get", "/after", "--consistency=s", "--print-value-only").stdout == "x\n"
    finally:
        for s in members:
            s.stop(signal.SIGKILL)


def test_sigterm_on_the_leader_hands_leadership_over(tmp_path):
    members = make_cluster(tmp_path)
    try:
        leader, term = wait_leader(members)
        assert ctl(["127.0.0.1:%d" % leader.client_port], "put", "k", "v").returncode == 0
        assert leader.stop(signal.SIGTERM) == 0
        assert "leadership handed over" in leader.logs()
        survivors = [s for s in members if s is not leader]
        new_leader, new_term = wait_leader(survivors, timeout=5)
        assert new_term > term
        eps = ["127.0.0.1:%d" % s.client_port for s in survivors]
        assert ctl(eps, "get", "k", "--print-value-only").stdout == "v\n"
    finally:
        for s in members:
            s.stop(signal.SIGKILL)


def test_move_leader(tmp_path):
    members = make_cluster(tmp_path)
    try:
        leader, term = wait_leader(members)
        eps = ["127.0.0.1:%d" % s.client_port for s in members]
        ids = {s: status(s)["header"]["member_id"] for s in members}
        target = next(s for s in members if s is not leader)
        r = ctl(eps, "move-leader", "%x" % ids[target])
        assert r.returncode == 0, r.stderr
        assert r.stdout == "Leadership transferred from %x to %x\n" % (ids[leader], ids[target])
        st = status(target)
        assert st["leader"] == ids[target] and st["raftTerm"] > term
        # Every member follows the new leader, and writes go on.
        assert all(status(s)["leader"] == ids[target] for s in members)
        assert ctl(eps[:1], "put", "after-move", "1").returncode == 0
        # etcd's refusals: a member that is not the leader, a target that is
        # not a member.
        stub = etcd3.client(host="127.0.0.1", port=leader.client_port).maintenancestub
        try:
            stub.MoveLeader(etcd3.etcdrpc.MoveLeaderRequest(targetID=ids[leader]), 5)
            raise AssertionError("a follower moved the leader")
        except grpc.RpcError as e:
            assert (e.code(), e.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                               "etcdserver: not leader")
        r = ctl(eps, "move-leader", "1234")
        assert r.returncode != 0 and "etcdserver: bad leader transferee" in r.stderr, r
        # Moving to the leader itself is done at once.
        r = ctl(eps, "move-leader", "%x" % ids[target])
        assert r.returncode == 0, r.stderr
        assert status(target)["raftTerm"] == st["raftTerm"]
    finally:
        for s in members:
            s.stop(signal.SIGKILL)


def test_status_of_every_member(tmp_path):
    """Maintenance.Status as etcd 3.4 reports it, member by member: the same
    fields as a real 3-member etcd for the leader and a follower, raft's
    view, raised alarms and "no leader" as errors."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "compat"))
    from etcdctl_diff import start_etcd_cluster, stop_process
    etcd_dir = tmp_path / "etcd"
    etcd_dir.mkdir()
    procs, endpoints = start_etcd_cluster(str(etcd_dir))
    try:
        ref = json.loads(ctl(endpoints, "endpoint", "status", "-w", "json").stdout)
    finally:
        for p in procs:
            stop_process(p)

    def fields(statuses):
        return sorted((st["Status"]["leader"] == st["Status"]["header"]["member_id"],
                       tuple(sorted(st["Status"]))) for st in statuses)

    members = make_cluster(tmp_path, extra=["--quota-backend-bytes", "2000000"])
    try:
        leader, term = wait_leader(members)
        eps = ["127.0.0.1:%d" % s.client_port for s in members]
        assert ctl(eps[:1], "put", "k", "v").returncode == 0
        got = json.loads(ctl(eps, "endpoint", "status", "-w", "json").stdout)
        assert fields(got) == fields(ref)
        ids = {st["Status"]["header"]["member_id"] for st in got}
        for st in got:
            s = st["Status"]
            assert s["leader"] == status(leader)["header"]["member_id"]
            assert s["raftTerm"] == term and s["raftIndex"] >= s["raftAppliedIndex"] > 0
            assert "isLearner" not in s and "errors" not in s

        # Past the quota: NOSPACE is raised and every member reports it.
        for i in range(30):
            ctl(eps[:1], "put", "big%d" % i, "x" * 100000)
        got = json.loads(ctl(eps, "endpoint", "status", "-w", "json").stdout)
        errors = {tuple(st["Status"].get("errors", ())) for st in got}
        assert len(errors) == 1, errors
        (alarm,) = errors.pop()
        raised = re.fullmatch(r"memberID:(\d+) alarm:NOSPACE ", alarm)
        assert raised and int(raised.group(1)) in ids, alarm
        assert ctl(eps[:1], "alarm", "list").stdout == alarm + "\n"

        # Alone, a member has no leader and says so.
        alone = next(s for s in members if s is not leader)
        for s in members:
            if s is not alone:
                s.stop(signal.SIGKILL)
        time.sleep(2.5)
        s = status(alone)
        assert "leader" not in s
        assert s["errors"][0] == "etcdserver: no leader" and s["errors"][1] == alarm
    finally:
        for s in members:
            s.stop(signal.SIGKILL)
