"""--snapshot-count: after that many applied entries the key space is synced
and the raft log before it is dropped from memory and the WAL; a restart then
starts from the snapshot marker and loses nothing."""
import threading

import etcd3


def test_restart_after_checkpoints_keeps_everything(servers):
    s = servers(extra=["--snapshot-count", "100", "--log-level", "debug"]).start()

    def load(w):
        c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
        for i in range(80):
            c.put("/cp/%d/%d" % (w, i), "v%d" % i)
        c.close()

    threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "checkpointed the raft log" in s.logs()
    assert s.stop() == 0
    s.start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    got = {m.key.decode(): v.decode() for v, m in c.get_prefix("/cp/")}
    assert len(got) == 480
    assert got["/cp/5/79"] == "v79"
    c.put("/cp/after", "restart")
    assert c.get("/cp/after")[0] == b"restart"
    c.close()
