"""Python's etcd3 client (Debian python3-etcd3), written by nobody here, does
what applications do with it against quoin: put / get / delete / txn, watch,
leases with keep-alive."""
import threading
import time

import etcd3
import pytest


@pytest.fixture
def client(servers):
    s = servers().start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    yield c
    c.close()


def test_put_get_delete(client):
    client.put("/app/a", "1")
    client.put("/app/b", "2")
    value, meta = client.get("/app/a")
    assert value == b"1"
    assert meta.version == 1 and meta.create_revision == meta.mod_revision
    assert sorted(v for v, _ in client.get_prefix("/app/")) == [b"1", b"2"]
    assert client.delete("/app/a") is True
    assert client.delete("/app/a") is False
    assert client.get("/app/a") == (None, None)


def test_compare_and_swap(client):
    client.put("/lock", "free")
    ok, _ = client.transaction(
        compare=[client.transactions.value("/lock") == "free"],
        success=[client.transactions.put("/lock", "mine")],
        failure=[client.transactions.get("/lock")])
    assert ok
    ok, responses = client.transaction(
        compare=[client.transactions.value("/lock") == "free"],
        success=[client.transactions.put("/lock", "theirs")],
        failure=[client.transactions.get("/lock")])
    assert not ok
    assert responses[0][0][0] == b"mine"


def test_watch_sees_puts_and_deletes_in_order(client):
    events, done = [], threading.Event()

    def collect(resp):
        events.extend(resp.events)
        if len(events) >= 3:
            done.set()

    watch_id = client.add_watch_prefix_callback("/w/", collect)
    time.sleep(0.2)
    client.put("/w/x", "1")
    client.put("/w/y", "2")
    client.delete("/w/x")
    assert done.wait(10), "watch events did not arrive: %r" % events
    client.cancel_watch(watch_id)
    kinds = [(type(e).__name__, e.key) for e in events[:3]]
    assert kinds == [("PutEvent", b"/w/x"), ("PutEvent", b"/w/y"), ("DeleteEvent", b"/w/x")]
    revs = [e.mod_revision for e in events[:3]]
    assert revs == sorted(revs) and len(set(revs)) == 3


def test_lease_keep_alive_and_revoke(client):
    lease = client.lease(5)
    client.put("/svc/node1", "up", lease=lease)
    assert lease.remaining_ttl > 0
    lease.refresh()
    assert client.get("/svc/node1")[0] == b"up"
    assert [m.key for _, m in client.get_prefix("/svc/")] == [b"/svc/node1"]
    assert lease.keys == [b"/svc/node1"]
    lease.revoke()
    assert client.get("/svc/node1") == (None, None)


def test_expired_lease_deletes_its_keys(client):
    lease = client.lease(2)  # etcd's minimum TTL with the default election timeout
    client.put("/ephemeral", "x", lease=lease)
    deadline = time.time() + 10
    while time.time() < deadline and client.get("/ephemeral")[0] is not None:
        time.sleep(0.2)
    assert client.get("/ephemeral") == (None, None)


def test_maintenance_hash_follows_the_key_space(client):
    from etcd3 import etcdrpc
    hash1 = client.maintenancestub.Hash(etcdrpc.HashRequest(), timeout=10).hash
    assert client.maintenancestub.Hash(etcdrpc.HashRequest(), timeout=10).hash == hash1
    client.put("/hash/a", "1")
    hash2 = client.maintenancestub.Hash(etcdrpc.HashRequest(), timeout=10).hash
    assert hash2 != hash1
    kv = client.maintenancestub.HashKV(etcdrpc.HashKVRequest(), timeout=10)
    assert kv.hash == hash2
