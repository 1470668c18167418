"""Membership changes on real quoin members, driven by the real etcdctl:
a member removed and a new one added (`member add`, then started with the
printed ETCD_* variables and --initial-cluster-state existing) while writers
go on; a learner whose promotion is refused while it lags and accepted once
it caught up; peer URLs updated; members that do not belong refused; etcd's
error strings."""
import json
import os
import re
import signal
import time

import etcd3
import grpc
import pytest

from qtest import Server, free_port
from test_cluster import Writers, ctl, make_cluster, wait_leader


def ep(s):
    return "127.0.0.1:%d" % s.client_port


def members(s):
    r = ctl([ep(s)], "member", "list", "-w", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["members"]


def wait_for(what, cond, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def put(c, key, value):
    """The revision of a put, or None while the cluster has no leader."""
    try:
        return c.put(key, value).header.revision
    except Exception:
        return None


def published(s, n):
    """Every one of n members listed with a name and client URLs."""
    ms = members(s)
    return len(ms) == n and all(m.get("name") and m.get("clientURLs") for m in ms) and ms


def add_member(leader, name, learner=False):
    """`etcdctl member add`; returns the member id and the ETCD_* it printed."""
    port = free_port()
    args = ["member", "add", name, "--peer-urls=http://127.0.0.1:%d" % port]
    if learner:
        args.append("--learner")
    r = ctl([ep(leader)], *args)
    assert r.returncode == 0, r.stderr
    mid = re.search(r"Member\s+([0-9a-f]+) added to cluster", r.stdout).group(1)
    env = dict(re.findall(r'^(ETCD_[A-Z_]+)="(.*)"$', r.stdout, re.M))
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    return mid, port, env


def joiner(tmp_path, name, port, env):
    """A new member started the way `member add` says: the ETCD_* variables
    it printed, no cluster flags."""
    s = Server(tmp_path, name=name)
    a = s.args
    for flag in ("--initial-cluster", "--initial-advertise-peer-urls", "--name"):
        i = a.index(flag)
        del a[i:i + 2]
    a[a.index("--listen-peer-urls") + 1] = "http://127.0.0.1:%d" % port
    s.peer_port = port
    s.env.update(env)
    return s


def test_replace_a_member_under_writes(tmp_path):
    ms = make_cluster(tmp_path)
    extra = []
    try:
        leader, _ = wait_leader(ms)
        listed = wait_for("every member published", lambda: published(leader, 3))
        ids = {m["name"]: "%x" % m["ID"] for m in listed}
        gone = next(s for s in ms if s is not leader)
        stay = [s for s in ms if s is not gone]

        writers = Writers(stay[:2])
        time.sleep(0.5)
        # Replacing: the new member is added first (it has not started yet),
        # then the old one removed; it stops by itself.
        mid, port, env = add_member(leader, "n3")
        assert env["ETCD_NAME"] == "n3"
        assert "n3=http://127.0.0.1:%d" % port in env["ETCD_INITIAL_CLUSTER"]
        name = gone.args[gone.args.index("--name") + 1]
        r = ctl([ep(leader)], "member", "remove", ids[name])
        assert r.returncode == 0, r.stderr
        assert re.search(r"Member\s+%s removed from cluster" % ids[name], r.stdout)
        gone.proc.wait(10)
        assert "the member has been permanently removed from the cluster" in gone.logs()
        # --strict-reconfig-check: of the voters left, only two have started;
        # a fourth voter would need three.
        r = ctl([ep(leader)], "member", "add", "n4", "--peer-urls=http://127.0.0.1:%d" % free_port())
        assert r.returncode != 0
        assert "re-configuration failed due to not enough started members" in r.stderr

        # As an operator would: the printed list, less the member removed since.
        env["ETCD_INITIAL_CLUSTER"] = ",".join(
            m for m in env["ETCD_INITIAL_CLUSTER"].split(",") if not m.startswith(name + "="))
        n3 = joiner(tmp_path, "n3", port, env)
        extra.append(n3)
        n3.start()
        time.sleep(1)
        acked = writers.stop()
        assert len(acked) > 20

        now = stay + [n3]
        listed = wait_for("n3 published", lambda: published(leader, 3))
        assert sorted(m["name"] for m in listed) == sorted(
            [s.args[s.args.index("--name") + 1] for s in stay] + ["n3"])
        assert "%x" % next(m["ID"] for m in listed if m["name"] == "n3") == mid

        c = etcd3.client(host="127.0.0.1", port=n3.client_port, timeout=10)
        rev = wait_for("a write through n3", lambda: put(c, "/last", "x"))
        stored = {m.key.decode() for _, m in c.get_prefix("/w/")}
        assert not [k for k in acked if k not in stored], "acknowledged writes lost"

        def same_hash():
            r = ctl([ep(s) for s in now], "endpoint", "hashkv", "--rev=%d" % rev, "-w", "json")
            if r.returncode != 0:
                return False
            got = json.loads(r.stdout)
            return len(got) == 3 and len({h["HashKV"]["hash"] for h in got}) == 1
        wait_for("equal HashKV on every member", same_hash)

        # Every member answers the cluster-wide commands.
        r = ctl([ep(n3)], "endpoint", "health", "--cluster")
        assert r.returncode == 0 and r.stdout.count("is healthy") + r.stderr.count(
            "is healthy") == 3, r.stdout + r.stderr
        r = ctl([ep(n3)], "endpoint", "status", "--cluster", "-w", "json")
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 3

        # With n3 down, an added member could break the active quorum.
        n3.stop(signal.SIGKILL)
        time.sleep(0.5)
        r = ctl([ep(leader)], "member", "add", "n4", "--peer-urls=http://127.0.0.1:%d" % free_port())
        assert r.returncode != 0
        assert "etcdserver: unhealthy cluster" in r.stderr

        # n3 restarts from its data directory (its identity and the store,
        # not the flags) and catches up.
        n3.start()
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        rev = wait_for("a write after n3's restart", lambda: put(c, "/after-restart", "y"))
        wait_for("equal HashKV after n3's restart", same_hash)

        # An original member restarts with its old flags (they still name the
        # removed member): the store, not --initial-cluster, says who is in.
        other = next(s for s in stay if s is not leader)
        assert other.stop(signal.SIGTERM) == 0
        other.start()
        assert len(members(other)) == 3
        c = etcd3.client(host="127.0.0.1", port=other.client_port, timeout=10)
        rev = wait_for("a write through the restarted member", lambda: put(c, "/after-2", "z"))
        wait_for("equal HashKV after the restart of an original member", same_hash)
    finally:
        stop_all(ms + extra)


def stop_all(servers):
    for s in servers:
        if s.proc is not None:
            s.stop(signal.SIGKILL)


def single(tmp_path, name="m0"):
    s = Server(tmp_path, name=name)
    s.start()
    wait_for("published", lambda: published(s, 1))
    return s


def check_learner_refuses_rpcs(leader, learner):
    """A started learner answers as etcd 3.4's: serializable ranges and
    endpoint status only; every other call, a watch included, fails with
    etcd's "rpc not supported for learner" (Unavailable)."""
    assert ctl([ep(leader)], "put", "/learner/k", "v").returncode == 0
    wait_for("the learner has the key", lambda: ctl(
        [ep(learner)], "get", "/learner/k", "--consistency=s", "--print-value-only").stdout == "v\n")
    st = ctl([ep(learner)], "endpoint", "status", "-w", "json")
    assert st.returncode == 0 and json.loads(st.stdout)[0]["Status"]["isLearner"] is True, st
    for args in (["put", "/learner/k", "w"], ["get", "/learner/k"], ["member", "list"],
                 ["del", "/learner/k"], ["lease", "grant", "10"]):
        r = ctl([ep(learner)], *args)
        assert r.returncode != 0, (args, r.stdout)
        assert "etcdserver: rpc not supported for learner" in r.stderr, (args, r.stderr)
    with grpc.insecure_channel(ep(learner)) as ch:
        try:
            list(etcd3.etcdrpc.WatchStub(ch).Watch(iter([etcd3.etcdrpc.WatchRequest(
                create_request=etcd3.etcdrpc.WatchCreateRequest(key=b"/learner/k"))]), 5))
            raise AssertionError("a learner served a watch")
        except grpc.RpcError as e:
            assert (e.code(), e.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "etcdserver: rpc not supported for learner")
    assert ctl([ep(leader)], "get", "/learner/k", "--print-value-only").stdout == "v\n"


def test_learner_promotion_waits_for_it_to_catch_up(tmp_path):
    m0 = single(tmp_path)
    extra = []
    try:
        mid, port, env = add_member(m0, "n1", learner=True)
        listed = members(m0)
        assert next(m for m in listed if "%x" % m["ID"] == mid).get("isLearner") is True
        r = ctl([ep(m0)], "member", "add", "n2", "--learner",
                "--peer-urls=http://127.0.0.1:%d" % free_port())
        assert "etcdserver: too many learner members in cluster" in r.stderr

        n1 = joiner(tmp_path, "n1", port, env)
        extra.append(n1)
        n1.start()
        wait_for("n1 published", lambda: published(m0, 2))
        check_learner_refuses_rpcs(m0, n1)
        assert n1.stop(signal.SIGTERM) == 0
        c = etcd3.client(host="127.0.0.1", port=m0.client_port, timeout=10)
        for i in range(300):
            c.put("/fill/%d" % i, "v")
        r = ctl([ep(m0)], "member", "promote", mid)
        assert r.returncode != 0
        assert ("etcdserver: can only promote a learner member which is in sync with leader"
                in r.stderr)

        n1.start()
        def promoted():
            r = ctl([ep(m0)], "member", "promote", mid)
            return r.returncode == 0 and r
        r = wait_for("promotion accepted", promoted)
        assert re.search(r"Member\s+%s promoted in cluster" % mid, r.stdout)
        assert not any(m.get("isLearner") for m in members(m0))
        r = ctl([ep(m0)], "member", "promote", mid)
        assert "etcdserver: can only promote a learner member" in r.stderr
        # Writes on n1 once it applied its promotion.
        wait_for("n1 takes writes",
                 lambda: ctl([ep(n1)], "put", "/learner/k", "by-n1").returncode == 0)
        assert ctl([ep(n1)], "get", "/learner/k", "--print-value-only").stdout == "by-n1\n"
        # n1 is a voter with the whole key space.
        n1c = etcd3.client(host="127.0.0.1", port=n1.client_port, timeout=10)
        assert len(list(n1c.get_prefix("/fill/"))) == 300

        # A promotion asked of a follower: it asks the leader how far the
        # learner is, as etcd forwards it.
        mid2, port2, env2 = add_member(m0, "n2", learner=True)
        n2 = joiner(tmp_path, "n2", port2, env2)
        extra.append(n2)
        n2.start()
        wait_for("n2 published", lambda: published(m0, 3))
        leader, _ = wait_leader([m0, n1])
        follower = n1 if leader is m0 else m0
        def promoted_via_follower():
            r = ctl([ep(follower)], "member", "promote", mid2)
            return r.returncode == 0 and r
        wait_for("promotion through a follower", promoted_via_follower)
        assert not any(m.get("isLearner") for m in members(leader))
    finally:
        stop_all([m0] + extra)


def test_update_and_etcd_errors(tmp_path):
    m0 = single(tmp_path)
    try:
        me = members(m0)[0]
        r = ctl([ep(m0)], "member", "remove", "1234")
        assert r.returncode != 0 and "etcdserver: member not found" in r.stderr
        # etcdctl checks URLs itself; another client's reach the server.
        c = etcd3.client(host="127.0.0.1", port=m0.client_port, timeout=5)
        with pytest.raises(Exception) as e:
            c.add_member(["foo"])
        assert "etcdserver: given member URLs are invalid" in str(e.value)
        assert isinstance(e.value, grpc.RpcError)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        r = ctl([ep(m0)], "member", "add", "x", "--peer-urls=" + me["peerURLs"][0])
        assert "etcdserver: Peer URLs already exists" in r.stderr
        r = ctl([ep(m0)], "member", "update", "1234", "--peer-urls=http://127.0.0.1:1")
        assert "etcdserver: member not found" in r.stderr
        r = ctl([ep(m0)], "member", "promote", "%x" % me["ID"])
        assert "etcdserver: can only promote a learner member" in r.stderr

        mid, port, env = add_member(m0, "n1", learner=True)
        new_url = "http://127.0.0.1:%d" % free_port()
        r = ctl([ep(m0)], "member", "update", mid, "--peer-urls=" + new_url)
        assert r.returncode == 0, r.stderr
        assert re.search(r"Member\s+%s updated in cluster" % mid, r.stdout)
        got = next(m for m in members(m0) if "%x" % m["ID"] == mid)
        assert got["peerURLs"] == [new_url]
        r = ctl([ep(m0)], "member", "update", mid, "--peer-urls=" + me["peerURLs"][0])
        assert "etcdserver: Peer URLs already exists" in r.stderr

        # After a restart the store, not the flags, says who the members are.
        assert m0.stop(signal.SIGTERM) == 0
        m0.start()
        got = wait_for("members after restart", lambda: len(members(m0)) == 2 and members(m0))
        assert sorted("%x" % m["ID"] for m in got) == sorted(["%x" % me["ID"], mid])
    finally:
        stop_all([m0])


def test_members_that_do_not_belong_are_refused(tmp_path):
    m0 = single(tmp_path)
    try:
        peer = members(m0)[0]["peerURLs"][0]
        # Joining with an --initial-cluster that does not match the cluster.
        x = Server(tmp_path, name="x", extra=("--initial-cluster-state", "existing"))
        a = x.args
        a[a.index("--initial-cluster") + 1] = "m0=%s,x=http://127.0.0.1:%d,y=http://127.0.0.1:%d" % (
            peer, x.peer_port, free_port())
        x.start(wait=False)
        assert x.proc.wait(20) != 0
        assert "error validating peerURLs" in x.logs() and "member count is unequal" in x.logs()
        # Joining a cluster that never added this member.
        y = Server(tmp_path, name="y", extra=("--initial-cluster-state", "existing"))
        a = y.args
        a[a.index("--initial-cluster") + 1] = "m0=%s,y=http://127.0.0.1:%d" % (peer, y.peer_port)
        y.start(wait=False)
        assert y.proc.wait(20) != 0
        assert "error validating peerURLs" in y.logs()
        # A new member of another cluster (another token): its connections are
        # refused; it cannot disturb m0.
        z = Server(tmp_path, name="z", extra=("--initial-cluster-token", "other"))
        a = z.args
        a[a.index("--initial-cluster") + 1] = "m0=%s,z=http://127.0.0.1:%d" % (peer, z.peer_port)
        z.start()
        try:
            wait_for("refusal", lambda: "request cluster ID mismatch" in m0.logs())
            c = etcd3.client(host="127.0.0.1", port=m0.client_port, timeout=5)
            c.put("k", "v")
            assert len(members(m0)) == 1
        finally:
            z.stop(signal.SIGKILL)
    finally:
        stop_all([m0])


def test_removing_the_leader(tmp_path):
    ms = make_cluster(tmp_path)
    try:
        leader, term = wait_leader(ms)
        listed = wait_for("every member published", lambda: published(leader, 3))
        lid = "%x" % next(m["ID"] for m in listed
                          if m["name"] == leader.args[leader.args.index("--name") + 1])
        r = ctl([ep(leader)], "member", "remove", lid)
        assert r.returncode == 0, r.stderr
        leader.proc.wait(10)
        assert "the member has been permanently removed from the cluster" in leader.logs()
        rest = [s for s in ms if s is not leader]
        wait_leader(rest)
        c = etcd3.client(host="127.0.0.1", port=rest[0].client_port, timeout=10)
        wait_for("a write after the leader left", lambda: put(c, "k", "v"))
        assert sorted("%x" % m["ID"] for m in members(rest[1])) == sorted(
            "%x" % m["ID"] for m in listed if "%x" % m["ID"] != lid)
        # It cannot come back: its own removal is in its store.
        leader.start(wait=False)
        assert leader.proc.wait(20) != 0
        assert "permanently removed" in leader.logs().splitlines()[-1]
    finally:
        stop_all(ms)


def test_a_joined_member_rebuilds_a_lost_store_alone(tmp_path):
    """A power cut can take a member's key space (LMDB is written without its
    own sync) and leave its fsynced WAL. A member that joined after the
    cluster's bootstrap rebuilds the store by replaying its log on top of the
    bootstrap member set its identity file keeps, while every other member is
    still down and none can tell it that set."""
    m0 = single(tmp_path)
    ms = [m0]
    try:
        c = etcd3.client(host="127.0.0.1", port=m0.client_port, timeout=10)
        for i in range(20):
            c.put("/before/%d" % i, "v%d" % i)
        _, port, env = add_member(m0, "m1")
        m1 = joiner(tmp_path, "m1", port, env)
        ms.append(m1)
        m1.start()
        wait_for("both members published", lambda: published(m0, 2))
        for i in range(20):
            rev = c.put("/after/%d" % i, "w%d" % i).header.revision
        wait_for("the joined member has every write", lambda: ctl(
            [ep(m1)], "get", "/after/19", "--consistency=s", "--print-value-only").stdout == "w19\n")

        stop_all(ms)
        for name in ("db", "db-lock"):
            os.unlink(os.path.join(m1.data_dir, name))
        m1.start()  # alone: m0 is down
        time.sleep(2)
        assert m1.proc.poll() is None, m1.logs()
        assert "rebuilt it from the bootstrap members" in m1.logs()

        m0.start()
        wait_leader(ms)
        r = ctl([ep(m1)], "get", "/", "--prefix", "--consistency=s", "-w", "json")
        assert r.returncode == 0 and json.loads(r.stdout)["count"] == 40, r.stdout + r.stderr
        assert sorted(m["name"] for m in members(m1)) == ["m0", "m1"]

        def same_hash():
            r = ctl([ep(s) for s in ms], "endpoint", "hashkv", "--rev=%d" % rev, "-w", "json")
            got = json.loads(r.stdout) if r.returncode == 0 else []
            return len(got) == 2 and len({h["HashKV"]["hash"] for h in got}) == 1
        wait_for("equal HashKV on both members", same_hash)
        c1 = etcd3.client(host="127.0.0.1", port=m1.client_port, timeout=10)
        wait_for("a write through the rebuilt member", lambda: put(c1, "/later", "x"))
    finally:
        stop_all(ms)
