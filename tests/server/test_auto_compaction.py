"""--auto-compaction-mode revision|periodic with --auto-compaction-retention:
the leader compacts on its own, keeping the retention, as etcd does."""
import time

import etcd3
import grpc
import pytest

from qtest import run_quoin


def compacted(c, rev):
    req = c._build_get_range_request(b"/ac/0")
    req.revision = rev  # the etcd3 module drops its own revision argument
    try:
        c.kvstub.Range(req, timeout=10)
        return False
    except grpc.RpcError as e:
        assert e.details() == "etcdserver: mvcc: required revision has been compacted"
        return True


def wait_until(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_revision_mode_keeps_the_last_n_revisions(servers):
    s = servers(extra=["--auto-compaction-mode", "revision",
                       "--auto-compaction-retention", "5"]).start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    for i in range(20):
        c.put("/ac/%d" % i, "x")  # revisions 2..21
    assert wait_until(lambda: compacted(c, 15), 15), "no compaction at 21 - 5 = 16"
    assert not compacted(c, 16)
    c.close()


def test_periodic_mode_compacts_what_is_older_than_the_retention(servers):
    s = servers(extra=["--auto-compaction-retention", "2s"]).start()  # periodic is the default
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    for i in range(10):
        c.put("/ac/%d" % i, "x")
    assert not compacted(c, 2)
    assert wait_until(lambda: compacted(c, 2), 15)
    c.close()


@pytest.mark.parametrize("args,want", [
    (["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
     'invalid auto-compaction-retention "1h"'),
    (["--auto-compaction-retention", "soon"], 'invalid auto-compaction-retention "soon"'),
    (["--auto-compaction-mode", "daily"], 'invalid value "daily" for flag -auto-compaction-mode'),
])
def test_bad_retention_is_refused(args, want):
    r = run_quoin(args)
    assert r.returncode == 2 and want in r.stderr, r.stderr
