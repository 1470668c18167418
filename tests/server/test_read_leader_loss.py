"""Linearizable reads on a follower when the leader dies under them: a read
forwarded to the dead leader is sent again to the leader elected next and
answered, none is lost; with no leader at all it fails after etcd's request
timeout (5 s + 2 election timeouts) rather than hanging."""
import signal
import threading
import time

import etcd3
import grpc

from qtest import Cluster


def read_all(port, key, n, before, during=None):
    """n linearizable reads of key on one member at once, each on its own
    connection made first; before() runs once they are connected, during()
    while the reads run. Returns (value or (code, details), seconds) per
    read, and the clients."""
    clients = [etcd3.client(host="127.0.0.1", port=port) for _ in range(n)]
    for c in clients:
        c.status()
    outcomes = [None] * n

    def read(i):
        started = time.time()
        try:
            r = clients[i].kvstub.Range(etcd3.etcdrpc.RangeRequest(key=key.encode()), 15)
            outcomes[i] = (r.kvs[0].value if r.kvs else None, time.time() - started)
        except grpc.RpcError as e:
            outcomes[i] = ((e.code(), e.details()), time.time() - started)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    before()
    for t in threads:
        t.start()
    if during:
        during(outcomes)
    for t in threads:
        t.join(30)
    assert all(o is not None for o in outcomes), outcomes
    return outcomes, clients


def kill(member):
    member.proc.send_signal(signal.SIGKILL)
    member.proc.wait(10)


def test_reads_on_a_follower_survive_the_leader_being_killed(tmp_path):
    c = Cluster(tmp_path, 3).start()
    try:
        leader = c.leader()
        f1, f2 = [i for i in range(3) if i != leader]
        writer = etcd3.client(host="127.0.0.1", port=c.members[f2].client_port, timeout=10)
        writer.put("/rl/k", "v1")
        # The follower learns of the loss only after an election timeout, so
        # the reads made at once are all forwarded to the dead leader.
        outcomes, clients = read_all(c.members[f1].client_port, "/rl/k", 20,
                                     lambda: kill(c.members[leader]))
        assert [o[0] for o in outcomes] == [b"v1"] * 20, outcomes
        assert max(o[1] for o in outcomes) < 5, outcomes
        new_leader = c.leader()
        assert new_leader != leader

        # Reads see writes made through the new leader at once.
        writer.put("/rl/k", "v2")
        assert clients[0].get("/rl/k")[0] == b"v2"

        # The new leader killed too: the last member never gets a leader, and
        # its reads fail with etcd's "no leader" after the request timeout.
        last = c.members[f1 if new_leader == f2 else f2]
        outcomes, _ = read_all(last.client_port, "/rl/k", 5, lambda: kill(c.members[new_leader]))
        for what, took in outcomes:
            assert what == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"), outcomes
            assert 6 <= took <= 10, outcomes
    finally:
        c.stop()


def test_reads_on_a_leader_that_steps_down(tmp_path):
    """Both followers frozen: the leader's reads wait for a heartbeat round
    that never completes, and it steps down (CheckQuorum), which drops them
    in raft. Once the followers are back, the reads go to the leader elected
    next and are answered."""
    c = Cluster(tmp_path, 3).start()
    try:
        leader = c.leader()
        followers = [c.members[i] for i in range(3) if i != leader]
        etcd3.client(host="127.0.0.1", port=c.members[leader].client_port).put("/sd/k", "v")

        def freeze():
            for f in followers:
                f.proc.send_signal(signal.SIGSTOP)

        def step_down_then_thaw(outcomes):
            try:
                time.sleep(2.5)  # more than an election timeout: the leader stepped down
                assert all(o is None for o in outcomes), outcomes
            finally:
                for f in followers:
                    f.proc.send_signal(signal.SIGCONT)

        outcomes, _ = read_all(c.members[leader].client_port, "/sd/k", 10, freeze,
                               step_down_then_thaw)
        assert [o[0] for o in outcomes] == [b"v"] * 10, outcomes
        assert max(o[1] for o in outcomes) < 8, outcomes
    finally:
        c.stop()
