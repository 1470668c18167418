"""`quoin snapshot restore`: a file `etcdctl snapshot save` took from a quoin
member becomes the data directories of a new cluster with every key, the
revision and the leases; the restored directories hold the new member set and
cluster id, so the members start without cluster flags (or with wrong ones,
ignored as for any existing data directory); a corrupt, cut or foreign file
(random bytes, a real etcd's snapshot) is refused with a message saying what
to do, and leaves no data directory behind."""
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import etcd3

from qtest import Server, clean_env, free_port, run_quoin
from test_membership import add_member, joiner, wait_for
from test_snapshot_catchup import etcdctl, leader_of, make_members, start_all


def restore(snapshot, member, *more):
    return run_quoin(["snapshot", "restore", str(snapshot)] + member.flags + list(more), timeout=60)


def test_restore_a_cluster_from_a_snapshot(tmp_path):
    old = start_all(make_members(tmp_path, prefix="old", token="old-cluster"))
    try:
        c = etcd3.client(host="127.0.0.1", port=leader_of(old).client_port, timeout=10)
        for i in range(300):
            c.put("/data/%03d" % i, "v%d" % i)
        c.delete("/data/000")
        lease = c.lease(900)
        c.put("/leased/a", "1", lease=lease)
        rev = c.put("/leased/b", "2", lease=lease).header.revision
        c.close()
        backup = tmp_path / "backup.db"
        r = etcdctl(old[1:2], "snapshot", "save", str(backup))
        assert r.returncode == 0, r.stderr
    finally:
        for m in old:
            m.stop(signal.SIGKILL)
    for m in old:  # the old cluster is gone for good
        shutil.rmtree(m.data_dir)

    new = make_members(tmp_path, prefix="new", token="new-cluster")
    for m in new:
        r = restore(backup, m)
        assert r.returncode == 0, r.stderr
    start_all(new)
    try:
        leader = leader_of(new)
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        got = {m.key.decode(): v.decode() for v, m in c.get_prefix("/data/")}
        assert len(got) == 299 and "/data/000" not in got and got["/data/299"] == "v299"
        value, meta = c.get("/leased/b")
        assert value == b"2" and meta.mod_revision == rev and meta.lease_id == lease.id
        assert c.get("/data/001")[1].response_header.revision == rev  # the revision is kept
        ttl = etcdctl([leader], "lease", "timetolive", "%x" % lease.id, "--keys")
        assert "granted with TTL(900s)" in ttl.stdout, ttl.stdout
        assert "attached keys([/leased/a /leased/b])" in ttl.stdout, ttl.stdout
        assert c.put("/after", "x").header.revision == rev + 1
        names = etcdctl(new, "member", "list").stdout
        assert all(m.name in names for m in new) and "old0" not in names
        for m in new:  # every member has everything (and soon the new write)
            for _ in range(50):
                r = etcdctl([m], "get", "/", "--prefix", "--keys-only", "--consistency=s")
                if len(r.stdout.split()) == 302:
                    break
                time.sleep(0.1)
            assert len(r.stdout.split()) == 302, (m.name, r.stdout[-300:], r.stderr)
        c.close()
    finally:
        for m in new:
            m.stop(signal.SIGKILL)


def etcd_member_id(peer_url, token):
    """etcd's member id: SHA-1 of the sorted peer URLs and the token."""
    return int.from_bytes(hashlib.sha1((peer_url + token).encode()).digest()[:8], "big")


def etcd_cluster_id(ids):
    """etcd's cluster id: SHA-1 of the sorted member ids, 8 bytes each."""
    b = b"".join(i.to_bytes(8, "big") for i in sorted(ids))
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def drop_flags(member, *flags):
    for flag in flags:
        i = member.args.index(flag)
        del member.args[i:i + 2]


def member_list(member):
    r = etcdctl([member], "member", "list", "-w", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_restored_members_start_without_cluster_flags(tmp_path):
    """The old cluster removed a member; the new one is restored at peer URLs
    that include the removed member's (so the same id, with the same token).
    Each restored member is then started with other cluster flags, or none:
    the data directory says which cluster it belongs to."""
    token = "restore-test"
    old = start_all(make_members(tmp_path, prefix="old", token=token))
    try:
        leader = leader_of(old)
        gone = next(m for m in old if m is not leader)
        gone_url = "http://127.0.0.1:%d" % gone.peer_port
        r = etcdctl([leader], "member", "remove", "%x" % etcd_member_id(gone_url, token))
        assert r.returncode == 0, r.stderr
        gone.proc.wait(20)  # it stops by itself
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        for i in range(100):
            rev = c.put("/r/%d" % i, "v%d" % i).header.revision
        old_cluster = member_list(leader)["header"]["cluster_id"]
        c.close()
        backup = tmp_path / "backup.db"
        r = etcdctl([leader], "snapshot", "save", str(backup))
        assert r.returncode == 0, r.stderr
    finally:
        for m in old:
            m.stop(signal.SIGKILL)
    for m in old:
        shutil.rmtree(m.data_dir)

    new = make_members(tmp_path, prefix="new", token=token,
                       ports=[leader.peer_port, gone.peer_port, free_port()])
    for m in new:
        r = restore(backup, m)
        assert r.returncode == 0, r.stderr
    drop_flags(new[0], "--initial-cluster", "--initial-cluster-token",
               "--initial-advertise-peer-urls")
    new[1].args[new[1].args.index("--initial-cluster-token") + 1] = "another-token"
    new[2].args[new[2].args.index("--initial-cluster") + 1] = "new2=" + new[2].args[
        new[2].args.index("--initial-advertise-peer-urls") + 1]
    urls = {etcd_member_id("http://127.0.0.1:%d" % m.peer_port, token): m for m in new}
    cluster = etcd_cluster_id(urls)
    assert cluster != old_cluster
    start_all(new)
    try:
        leader_of(new)
        c = etcd3.client(host="127.0.0.1", port=new[0].client_port, timeout=10)
        assert len(list(c.get_prefix("/r/"))) == 100
        assert c.put("/after", "x").header.revision == rev + 1
        c.close()
        deadline = time.time() + 20
        while True:  # every member lists the new members, once they all published
            lists = [member_list(m) for m in new]
            got = [{mm["ID"]: (mm.get("name"), mm["peerURLs"], mm.get("clientURLs"))
                    for mm in ml["members"]} for ml in lists]
            want = {i: (m.name, ["http://127.0.0.1:%d" % m.peer_port], [m.client_url])
                    for i, m in urls.items()}
            if all(g == want for g in got) or time.time() > deadline:
                break
            time.sleep(0.2)
        assert all(g == want for g in got), (got, want)
        assert all(ml["header"]["cluster_id"] == cluster for ml in lists)
        # The removed member's id is a member again: the old removed list is gone.
        assert "permanently removed" not in new[1].logs()
        for m in new:
            for _ in range(50):
                r = etcdctl([m], "get", "/after", "--consistency=s", "--print-value-only")
                if r.stdout.strip() == "x":
                    break
                time.sleep(0.1)
            assert r.stdout.strip() == "x", (m.name, r.stdout, r.stderr)
        # A member added to the restored cluster joins: the log before the
        # restore marker does not exist, so it is sent a snapshot.
        mid, port, env = add_member(new[0], "joined", learner=True)
        j = joiner(tmp_path, "joined", port, env)
        j.name = "joined"
        new.append(j)
        j.start()
        wait_for("the joined member has the data", lambda: etcdctl(
            [j], "get", "/after", "--consistency=s", "--print-value-only").stdout.strip() == "x")
        assert "installed a raft snapshot" in j.logs()
        # A learner serves no MemberList (etcd 3.4): promoted, it lists them.
        wait_for("the joined member promoted", lambda: etcdctl(
            [new[0]], "member", "promote", mid).returncode == 0)
        wait_for("the joined member lists the members", lambda: etcdctl(
            [j], "member", "list").returncode == 0)
        assert {mm["name"] for mm in member_list(j)["members"]} == {m.name for m in new}
    finally:
        for m in new:
            m.stop(signal.SIGKILL)


def etcd_snapshot(tmp_path):
    """A snapshot taken from a real etcd 3.4 (bbolt inside)."""
    cport, pport = free_port(), free_port()
    peer = "http://127.0.0.1:%d" % pport
    client = "http://127.0.0.1:%d" % cport
    proc = subprocess.Popen(
        ["etcd", "--name", "e", "--data-dir", str(tmp_path / "e.etcd"),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", "e=" + peer],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        env = dict(clean_env(), ETCDCTL_API="3")
        path = str(tmp_path / "etcd.db")
        for _ in range(100):
            r = subprocess.run(["etcdctl", "--endpoints", client, "snapshot", "save", path],
                               capture_output=True, env=env, timeout=30)
            if r.returncode == 0:
                return path
            time.sleep(0.1)
        raise AssertionError("etcd did not give a snapshot: %s" % r.stderr)
    finally:
        proc.kill()
        proc.wait()


def test_restore_refuses_bad_files(tmp_path):
    one = Server(tmp_path, name="one").start()
    try:
        c = etcd3.client(host="127.0.0.1", port=one.client_port, timeout=10)
        for i in range(50):
            c.put("/k/%d" % i, "v" * 100)
        c.close()
        good = str(tmp_path / "good.db")
        assert etcdctl([one], "snapshot", "save", good).returncode == 0
    finally:
        one.stop()
    data = open(good, "rb").read()

    def write(name, content):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    noise = os.urandom(8192)
    cases = [
        (write("flipped.db", data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]), "is corrupt"),
        (write("cut.db", data[:-100]), "does not end with the SHA-256"),
        (write("noise.db", os.urandom(10000)), "does not end with the SHA-256"),
        (write("noise-hashed.db", noise + hashlib.sha256(noise).digest()), "is not a quoin snapshot"),
        (etcd_snapshot(tmp_path), "is an etcd snapshot (a bbolt database)"),
    ]
    target = make_members(tmp_path, prefix="r")[0]
    for path, why in cases:
        r = restore(path, target)
        assert r.returncode == 1 and why in r.stderr, (path, r.returncode, r.stderr)
        assert "Sanitizer" not in r.stderr, r.stderr
        assert not os.path.exists(target.data_dir), path
        assert not glob.glob(target.data_dir + ".restoring-*"), path
    r = restore(good, target, "--bogus")
    assert r.returncode == 2 and "unknown flag --bogus" in r.stderr
    # A database file copied by hand has no trailer: only --skip-hash-check takes it.
    bare = write("bare.db", data[:-32])
    assert "does not end with the SHA-256" in restore(bare, target).stderr
    r = restore(bare, target, "--skip-hash-check")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(target.data_dir)
    assert restore(good, target).returncode == 0
    r = restore(good, target)  # never over an existing directory
    assert r.returncode == 1 and "exists" in r.stderr
