"""The differential test of the single-node API: the real etcdctl runs one
script against the real etcd 3.4 and against quoin, and the normalised outputs
must be equal (see etcdctl_diff.py for what is normalised).

SERVED lists the script's sections quoin answers today; the README's feature
table lists the rest as not yet served."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qtest import Server  # noqa: E402
from etcdctl_diff import diff, run_script, start_etcd, stop_process, wait_healthy  # noqa: E402
from etcdctl_script import script  # noqa: E402

SERVED = ["kv", "txn", "compaction", "lease", "maintenance", "snapshot", "errors"]


def test_etcdctl_outputs_match_etcd(tmp_path):
    steps = script(SERVED)
    proc, ref = start_etcd(str(tmp_path))
    try:
        want = run_script(ref, steps, str(tmp_path))
    finally:
        stop_process(proc)
    q = Server(tmp_path, name="ref")
    q.start()
    try:
        endpoint = "127.0.0.1:%d" % q.client_port
        wait_healthy(q.proc, endpoint)
        got = run_script(endpoint, steps, str(tmp_path))
    finally:
        assert q.stop() == 0, q.logs()
    d = diff(want, got)
    assert not d, "etcdctl output differs from etcd's:\n" + "\n".join(d)
