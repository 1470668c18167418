"""The differential test on a cluster: the same etcdctl script as the
single-node test runs against a 3-member real etcd 3.4 and a 3-member quoin
cluster, with etcdctl pointed at a FOLLOWER (the first member is made leader
with move-leader on both, so the roles match), and the normalised outputs
must be equal. Beyond the single-node normalising, member ids are named in
member-name order, member lists are compared in name order, and the raft
term (which split votes change) is left out. The member list steps are
compared on their own, so a difference there is reported apart."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))

from etcdctl_diff import diff, lead_with_first, run_script, start_etcd_cluster, stop_process  # noqa: E402
from etcdctl_script import script  # noqa: E402
from test_cluster import make_cluster  # noqa: E402

SERVED = ["kv", "txn", "compaction", "watch", "maintenance", "snapshot", "lease", "errors"]


def split(steps):
    """The member list steps apart from the rest."""
    is_list = [s[0] == "ctl" and s[1][:2] == ["member", "list"] for s in steps]
    return ([s for s, m in zip(steps, is_list) if not m], [s for s, m in zip(steps, is_list) if m])


def run_both(endpoints, steps, member_steps, workdir):
    members = lead_with_first(endpoints)
    follower = endpoints[1]
    return (run_script(follower, steps, workdir, members),
            run_script(follower, member_steps, workdir, members))


def test_etcdctl_outputs_match_etcd_on_a_follower(tmp_path):
    steps, member_steps = split(script(SERVED))
    procs, endpoints = start_etcd_cluster(str(tmp_path))
    try:
        want, want_members = run_both(endpoints, steps, member_steps, str(tmp_path))
    finally:
        for p in procs:
            stop_process(p)
    qdir = tmp_path / "quoin"
    qdir.mkdir()
    members = make_cluster(qdir)
    try:
        endpoints = ["127.0.0.1:%d" % s.client_port for s in members]
        got, got_members = run_both(endpoints, steps, member_steps, str(tmp_path))
    finally:
        for s in members:
            assert s.stop() == 0, s.logs()
    d = diff(want, got)
    assert not d, "etcdctl output on a follower differs from etcd's:\n" + "\n".join(d)
    d = diff(want_members, got_members)
    assert not d, "etcdctl member list on a follower differs from etcd's:\n" + "\n".join(d)
