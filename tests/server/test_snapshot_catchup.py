"""A member that fell further behind than the leader keeps its log catches up
through a raft snapshot: the leader streams a copy of its key space, the
member installs it and goes on from the log. Three real members, one killed
while 12,000 writes and a compaction go by; the first transfer is corrupted
on purpose (QUOIN_TESTING hook) and must be retried."""
import json
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


def start_members(tmp_path, extra, env):
    ports = [free_port() for _ in range(3)]
    initial = ",".join("s%d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(ports))
    members = []
    for i, port in enumerate(ports):
        m = Server(tmp_path, name="s%d" % i, env=env,
                   extra=["--initial-cluster-token", "snap-test"] + extra)
        m.peer_port = port
        for flag in ("--listen-peer-urls", "--initial-advertise-peer-urls"):
            m.args[m.args.index(flag) + 1] = "http://127.0.0.1:%d" % port
        m.args[m.args.index("--initial-cluster") + 1] = initial
        members.append(m.start(wait=False))
    for m in members:
        m.wait_ready()
    return members


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

        def load(w):
            cw = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
            for i in range(WRITES // 8):
                cw.put("/k/%d/%d" % (w, i % 700), "v%d" % i)
            cw.close()

        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rev = c.get("/before")[1].response_header.revision
        c.compact(rev - 100)
        c.put("/last", "x")
        rev = c.get("/last")[1].mod_revision

        lagging.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            hashes = [hashkv(m, rev) for m in members]
            if None not in hashes and len(set(hashes)) == 1:
                break
            time.sleep(0.3)
        assert None not in hashes and len(set(hashes)) == 1, hashes

        log = lagging.logs()
        assert "installed a raft snapshot" in log, log[-3000:]
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
        cancel()
        cl.close()
        c.close()
    finally:
        for m in members:
            m.stop(signal.SIGKILL)
