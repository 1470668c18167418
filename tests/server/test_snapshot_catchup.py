"""A member that fell further behind than the leader keeps its log catches up
through a raft snapshot: the leader streams a copy of its key space, the
member installs it and goes on from the log. Three real members, one killed
while 12,000 writes and a compaction go by; the first transfer is corrupted
on purpose and must be retried, and the member dies between recording the
snapshot and installing it, so its next start must finish the job
(QUOIN_TESTING hooks). Then watchers of a member paused while it fell behind
carry on across the snapshot, or are told their revision was compacted."""
import json
import os
import signal
import subprocess
import threading
import time

import etcd3

from qtest import Server, clean_env, free_port

WRITES = 12000  # > the 5000 entries kept behind a checkpoint, + --snapshot-count


def etcdctl(members, *args):
    env = clean_env()
    env["ETCDCTL_API"] = "3"
    eps = ",".join("127.0.0.1:%d" % m.client_port for m in members)
    return subprocess.run(["etcdctl", "--endpoints", eps, "--command-timeout=5s"] + list(args),
                          capture_output=True, text=True, env=env, timeout=30)


def make_members(tmp_path, extra=(), env=None, prefix="s", token="snap-test", ports=None):
    """Three members of one new cluster (at the given peer ports, else free
    ones), not started. Each has .name, and .flags: the member flags `quoin
    snapshot restore` takes too."""
    ports = ports or [free_port() for _ in range(3)]
    initial = ",".join("%s%d=http://127.0.0.1:%d" % (prefix, i, p) for i, p in enumerate(ports))
    members = []
    for i, port in enumerate(ports):
        m = Server(tmp_path, name="%s%d" % (prefix, i), env=env,
                   extra=["--initial-cluster-token", token] + list(extra))
        m.name, m.peer_port = "%s%d" % (prefix, i), port
        for flag in ("--listen-peer-urls", "--initial-advertise-peer-urls"):
            m.args[m.args.index(flag) + 1] = "http://127.0.0.1:%d" % port
        m.args[m.args.index("--initial-cluster") + 1] = initial
        m.flags = ["--name", m.name, "--data-dir", m.data_dir, "--initial-cluster", initial,
                   "--initial-cluster-token", token,
                   "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % port]
        members.append(m)
    return members


def start_all(members):
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_ready()
    return members


def start_members(tmp_path, extra, env):
    return start_all(make_members(tmp_path, extra, env))


def leader_of(members, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for m in members:
            r = etcdctl([m], "endpoint", "status", "-w", "json")
            if r.returncode == 0:
                st = json.loads(r.stdout)[0]["Status"]
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return m
        time.sleep(0.1)
    raise AssertionError("no leader within %ds" % timeout)


def hashkv(member, rev):
    r = etcdctl([member], "endpoint", "hashkv", "--rev=%d" % rev, "-w", "json")
    return json.loads(r.stdout)[0]["HashKV"]["hash"] if r.returncode == 0 else None


def write_many(member, n, prefix, threads=8):
    def load(w):
        c = etcd3.client(host="127.0.0.1", port=member.client_port, timeout=10)
        for i in range(n // threads):
            c.put("%s%d/%d" % (prefix, w, i % 700), "v%d" % i)
        c.close()

    ts = [threading.Thread(target=load, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pause(member):
    """SIGSTOP, and wait until every thread of the process has stopped."""
    member.proc.send_signal(signal.SIGSTOP)
    deadline = time.time() + 5
    task = "/proc/%d/task" % member.proc.pid
    while time.time() < deadline:
        states = []
        for t in os.listdir(task):
            with open("%s/%s/stat" % (task, t)) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(st in "tT" for st in states):
            return
        time.sleep(0.01)
    raise AssertionError("the member did not stop")


def wait_equal_hashes(members, rev, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hashes = [hashkv(m, rev) for m in members]
        if None not in hashes and len(set(hashes)) == 1:
            return
        time.sleep(0.3)
    raise AssertionError("HashKV at %d differs: %s" % (rev, hashes))


def test_lagging_member_catches_up_by_snapshot(tmp_path):
    env = clean_env()
    env["QUOIN_TEST_CORRUPT_SNAPSHOT_AT"] = "4096"
    members = start_members(tmp_path, ["--snapshot-count", "1000"], env)
    try:
        leader = leader_of(members)
        lagging = next(m for m in members if m is not leader)
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        lease = c.lease(600)
        c.put("/leased", "v", lease=lease)
        c.put("/before", "b")

        lagging.stop(signal.SIGKILL)

        write_many(leader, WRITES, "/k/")
        rev = c.get("/before")[1].response_header.revision
        c.compact(rev - 100)
        c.put("/last", "x")
        rev = c.get("/last")[1].mod_revision

        # First life: the snapshot arrives, its WAL marker is written, and
        # the member dies before installing it.
        lagging.env = dict(env, QUOIN_TEST_EXIT_BEFORE_INSTALL="1")
        lagging.start(wait=False)
        assert lagging.proc.wait(30) == 3, lagging.logs()[-3000:]
        lagging.log.close()
        assert "installed a raft snapshot" not in lagging.logs()
        # Second life: it catches up while writes go on (the entries the copy
        # already holds are skipped, the later ones applied).
        stop, live = threading.Event(), []

        def writer():
            cw = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
            while not stop.is_set():
                live.append(cw.put("/live/%d" % (len(live) % 50), "x").header.revision)
            cw.close()

        t = threading.Thread(target=writer)
        t.start()
        lagging.env = env
        lagging.start()
        wait_equal_hashes(members, rev)
        time.sleep(1)  # and goes on with the live writes
        stop.set()
        t.join()
        assert live
        wait_equal_hashes(members, live[-1])

        log = lagging.logs()
        assert "installed a raft snapshot" in log, log[-3000:]
        assert log.count("received a snapshot") == 1  # the second start needed none
        # The first copy was corrupted in flight: refused, then sent again.
        assert "sending a snapshot failed" in leader.logs()
        assert leader.logs().count("a snapshot was sent") >= 1

        ls = etcdctl([lagging], "lease", "list")
        assert "%x" % lease.id in ls.stdout, ls.stdout + ls.stderr
        got = etcdctl([lagging], "get", "/leased", "--consistency=s", "-w", "json")
        kv = json.loads(got.stdout)["kvs"][0]
        assert kv["lease"] == lease.id
        assert kv["value"] == "dg=="  # base64 of "v"
        ttl = etcdctl([leader], "lease", "timetolive", "%x" % lease.id, "--keys")
        assert "/leased" in ttl.stdout and "granted with TTL(600s)" in ttl.stdout

        # A watch on the member that caught up sees what comes after.
        cl = etcd3.client(host="127.0.0.1", port=lagging.client_port, timeout=10)
        events, cancel = cl.watch("/after")
        c.put("/after", "seen")
        ev = next(events)
        assert ev.value == b"seen"
        cancel()  # (the client is not closed: its watch thread would complain)
        c.close()
    finally:
        for m in members:
            m.stop(signal.SIGKILL)


def test_watchers_of_a_paused_member_carry_on_across_a_snapshot(tmp_path):
    members = start_members(tmp_path, ["--snapshot-count", "1000"], clean_env())
    try:
        leader = leader_of(members)
        paused = next(m for m in members if m is not leader)
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        cp = etcd3.client(host="127.0.0.1", port=paused.client_port, timeout=10)
        got1, got2 = [], []
        cp.add_watch_callback("/w/one", got1.append)
        c.put("/w/one", "0")
        deadline = time.time() + 5
        while not got1 and time.time() < deadline:
            time.sleep(0.05)
        assert got1, "the watcher is not live"

        # Phase 1: no compaction. The events the member missed come from the
        # installed copy's history, in order, none twice.
        pause(paused)
        revs = [c.put("/w/one", "1").header.revision]
        write_many(leader, 3500, "/x/")
        revs.append(c.put("/w/one", "2").header.revision)
        write_many(leader, 3500, "/y/")
        revs.append(c.put("/w/one", "3").header.revision)
        paused.proc.send_signal(signal.SIGCONT)
        wait_equal_hashes(members, revs[-1])
        assert paused.logs().count("installed a raft snapshot") == 1
        deadline = time.time() + 10
        while len(got1) < 4 and time.time() < deadline:
            time.sleep(0.05)
        seen = [(e.value, e.mod_revision) for r in got1[1:] for e in r.events]
        assert seen == [(b"1", revs[0]), (b"2", revs[1]), (b"3", revs[2])]

        # Phase 2: the history the watcher needs is compacted away on the
        # leader: after the snapshot the watcher is cancelled as etcd does.
        cp.add_watch_callback("/w/two", got2.append)
        time.sleep(0.3)
        pause(paused)
        c.put("/w/two", "lost")
        write_many(leader, 7000, "/z/")
        compact = c.put("/z/last", "x").header.revision
        c.compact(compact)
        after = c.put("/z/after", "y").header.revision  # HashKV refuses the compacted revision
        paused.proc.send_signal(signal.SIGCONT)
        wait_equal_hashes(members, after)
        deadline = time.time() + 10
        while not got2 and time.time() < deadline:
            time.sleep(0.05)
        assert paused.logs().count("installed a raft snapshot") == 2
        # Appends the kernel buffered while the member was stopped may be
        # applied before the snapshot arrives: their events come first.
        early = [e.value for r in got2[:-1] for e in r.events]
        assert early in ([], [b"lost"]), early
        assert isinstance(got2[-1], etcd3.exceptions.RevisionCompactedError), got2
        assert got2[-1].compacted_revision == compact + 1  # quoin's rule (watch.h)
        c.close()
    finally:
        for m in members:
            if m.proc and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGCONT)
            m.stop(signal.SIGKILL)
