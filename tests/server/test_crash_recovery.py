"""SIGKILL during a write load, then restart on the same data directory: every
acknowledged write is there, and no transaction is half applied."""
import signal
import threading
import time

import etcd3
import pytest


def writer(port, wid, acked, stop):
    c = etcd3.client(host="127.0.0.1", port=port, timeout=5)
    i = 0
    while not stop.is_set():
        key, value = "/crash/w%d/%d" % (wid, i), "v%d-%d" % (wid, i)
        try:
            if i % 3 == 0:
                # Two keys in one txn: after the crash both exist or neither.
                ok, _ = c.transaction(compare=[], success=[
                    c.transactions.put(key + "/a", value), c.transactions.put(key + "/b", value)],
                    failure=[])
                if ok:
                    acked.append((key + "/a", value))
                    acked.append((key + "/b", value))
            else:
                c.put(key, value)
                acked.append((key, value))
        except Exception:
            return  # the server is gone
        i += 1


@pytest.mark.parametrize("extra", [[], ["--snapshot-count", "50"]], ids=["plain", "checkpoints"])
def test_sigkill_under_load_loses_no_acknowledged_write(servers, extra):
    s = servers(extra=extra).start()
    acked, stop = [], threading.Event()
    threads = [threading.Thread(target=writer, args=(s.client_port, w, acked, stop))
               for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) > 100, "the load did not get going: %d writes" % len(acked)

    s.start()  # same data directory
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    stored = {m.key.decode(): v.decode() for v, m in c.get_prefix("/crash/")}
    lost = [(k, v) for k, v in acked if stored.get(k) != v]
    assert not lost, "%d of %d acknowledged writes lost, e.g. %s" % (len(lost), len(acked), lost[:5])
    halves = [k for k in stored if k.endswith("/a") and k[:-2] + "/b" not in stored]
    halves += [k for k in stored if k.endswith("/b") and k[:-2] + "/a" not in stored]
    assert not halves, "half-applied transactions: %s" % halves[:5]
    c.close()
