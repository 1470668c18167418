"""Snapshots and membership together. A member killed while the cluster
changes its membership and goes through 12,000 writes and a compaction
catches up by snapshot: the leader sends the index its copy holds, with the
configuration as of that index (here past a promotion the leader's raft
snapshot does not include), and the member reloads its member set from the
copy, and its transport the peer URLs the copy has (here a member's, updated
while it was down). It must then list the same members as the leader, lead
(its writes reach the member at its new URL), apply the next membership
changes (its raft thread checks them against the reloaded set), and serve
writes and linearizable reads."""
import json
import re
import signal
import time

import etcd3

from qtest import free_port
from test_membership import joiner, published, wait_for
from test_snapshot_catchup import (WRITES, etcdctl, leader_of, make_members, start_all,
                                   wait_equal_hashes, write_many)


def member_rows(m):
    r = etcdctl([m], "member", "list", "-w", "json")
    assert r.returncode == 0, r.stderr
    return sorted((x["ID"], x.get("name", ""), tuple(x["peerURLs"]),
                   tuple(x.get("clientURLs", ())), x.get("isLearner", False))
                  for x in json.loads(r.stdout)["members"])


def log_events(member, msg, after=None):
    """The JSON log lines of member with that message (after the first line
    with the message `after`)."""
    lines = member.logs().splitlines()
    if after:
        lines = lines[next(i for i, ln in enumerate(lines) if '"msg":"%s"' % after in ln):]
    return [json.loads(ln) for ln in lines if ln.startswith("{") and '"msg":"%s"' % msg in ln]


def member_id(m):
    r = etcdctl([m], "endpoint", "status", "-w", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]["Status"]["header"]["member_id"]


def add_learner(via, name):
    port = free_port()
    r = etcdctl([via], "member", "add", name, "--learner",
                "--peer-urls=http://127.0.0.1:%d" % port)
    if r.returncode != 0:
        return None
    mid = int(re.search(r"Member\s+([0-9a-f]+) added", r.stdout).group(1), 16)
    return mid, port, dict(re.findall(r'^(ETCD_[A-Z_]+)="(.*)"$', r.stdout, re.M))


def promote(via, mid):
    """Promotes the learner once it is in sync (refused until then)."""
    return wait_for("the promotion of %x" % mid, lambda: etcdctl(
        [via], "member", "promote", "%x" % mid).returncode == 0, timeout=30)


def test_membership_changes_across_a_snapshot(tmp_path):
    voters = start_all(make_members(tmp_path, ["--snapshot-count", "1000"]))
    learners = []
    try:
        leader = leader_of(voters)
        f, g = [m for m in voters if m is not leader]
        f_id = member_id(f)
        wait_for("every member published", lambda: published(leader, 3))
        l1_id, port, env = add_learner(leader, "l1")
        l1 = joiner(tmp_path, "l1", port, env)
        learners.append(l1)
        l1.start()
        wait_for("the learner published", lambda: published(leader, 4))

        f.stop(signal.SIGKILL)
        write_many(leader, WRITES, "/k/")
        c = etcd3.client(host="127.0.0.1", port=leader.client_port, timeout=10)
        c.compact(c.put("/compact", "x").header.revision - 100)
        # The learner moves to another peer port: f knows only the old one.
        l1.stop(signal.SIGKILL)
        new_url = "http://127.0.0.1:%d" % free_port()
        r = etcdctl([leader], "member", "update", "%x" % l1_id, "--peer-urls=" + new_url)
        assert r.returncode == 0, r.stderr
        l1.args[l1.args.index("--listen-peer-urls") + 1] = new_url
        l1.start()
        # A conf change past the leader's last checkpoint: the raft snapshot
        # has l1 as a learner, the copy sent has it as a voter.
        promote(leader, l1_id)
        rev = c.put("/last", "x").header.revision

        f.start()
        everyone = voters + [l1]
        wait_equal_hashes(everyone, rev)
        assert f.logs().count("installed a raft snapshot") == 1
        assert "the snapshot's configuration and its member set differ" not in f.logs()
        promoted = [e["index"] for e in log_events(leader, "applied a membership change")
                    if e["member"] == l1_id and e["type"] == 0]  # RAFT_CC_ADD_NODE
        sends = log_events(leader, "sending a snapshot to a lagging member")
        sent = [e["index"] for e in sends if e["to"] == f_id]
        installed = log_events(f, "installed a raft snapshot")[0]
        assert len(promoted) == 1 and sent, (promoted, sent)
        # The leader sent the index its copy held, past the promotion, and
        # the member installed exactly that.
        assert sent[-1] >= promoted[0]
        assert all(e["index"] >= e["raft-index"] for e in sends), sends
        assert installed["snapshot-index"] == installed["applied-index"] == sent[-1]
        assert member_rows(f) == member_rows(leader)
        assert not any(m[4] for m in member_rows(f))  # l1 is a voter everywhere
        assert (new_url,) in [m[2] for m in member_rows(f)]

        # f leads: its raft has l1 as a voter and its transport l1's new
        # URL, both from the copy, so its writes reach l1.
        r = etcdctl(everyone, "move-leader", "%x" % f_id)
        assert r.returncode == 0, r.stdout + r.stderr
        assert leader_of(everyone) is f
        cf = etcd3.client(host="127.0.0.1", port=f.client_port, timeout=10)
        last = cf.put("/via-f/leader", "x").header.revision
        wait_equal_hashes(everyone, last)

        # More changes on f: a learner is allowed again (etcd 3.4 allows
        # one), which f's raft thread accepts only if it reloaded l1 as a
        # voter; the new learner promoted (checked on f's raft loop); l1
        # removed through a follower (it stops by itself).
        l2_id, port, env = wait_for("a learner added through f", lambda: add_learner(f, "l2"))
        l2 = joiner(tmp_path, "l2", port, env)
        learners.append(l2)
        l2.start()
        wait_for("f lists the new learner", lambda: published(f, 5))
        promote(f, l2_id)
        r = etcdctl([g], "member", "remove", "%x" % l1_id)
        assert r.returncode == 0, r.stderr
        assert l1.proc.wait(20) is not None
        want = member_rows(g)
        assert len(want) == 4 and not any(m[4] for m in want)
        wait_for("f lists the members after the changes", lambda: member_rows(f) == want)
        changes = "applied a membership change"
        assert [e["member"] for e in log_events(f, changes, "installed a raft snapshot")] == [
            l2_id, l2_id, l1_id]

        # f keeps serving: writes through it, linearizable reads on it.
        for i in range(20):
            last = cf.put("/via-f/%d" % i, "v%d" % i).header.revision
            assert cf.get("/via-f/%d" % i)[0] == b"v%d" % i
        r = etcdctl([f], "get", "/via-f/", "--prefix", "--keys-only", "--consistency=l")
        assert r.returncode == 0 and len(r.stdout.split()) == 21, r.stdout + r.stderr
        wait_equal_hashes(voters + [l2], last)
        cf.close()
        c.close()
    finally:
        for m in voters + learners:
            m.stop(signal.SIGKILL)
