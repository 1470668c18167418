"""A range over many keys comes back whole and in order (it is encoded key by
key from the LMDB snapshot into the response), with limit and count right."""
import etcd3


def test_range_over_fifty_thousand_keys(servers):
    s = servers().start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=60)
    n = 50000
    for base in range(0, n, 128):
        c.transaction(compare=[], success=[c.transactions.put("/big/%06d" % i, "v%d" % i)
                                           for i in range(base, min(n, base + 128))], failure=[])
    got = list(c.get_prefix("/big/"))
    assert len(got) == n
    assert [m.key for _, m in got[:3]] == [b"/big/000000", b"/big/000001", b"/big/000002"]
    assert got[-1][0] == b"v%d" % (n - 1)
    req = c._build_get_range_request(b"/big/", range_end=b"/big0")
    req.limit = 10  # the etcd3 module drops its own limit argument
    resp = c.kvstub.Range(req, timeout=60)
    assert len(resp.kvs) == 10 and resp.more and resp.count == n
    c.close()
