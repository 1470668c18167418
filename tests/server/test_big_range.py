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


def test_big_answers_free_their_slot(servers):
    """Ten answers over the big-range threshold (8 MiB) one after another all
    succeed: each slot comes back when its answer has left."""
    import grpc
    from etcd3 import etcdrpc

    s = servers().start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=60)
    value = "x" * 200
    for base in range(0, 50000, 128):
        c.transaction(compare=[], success=[c.transactions.put("/huge/%06d" % i, value)
                                           for i in range(base, min(50000, base + 128))],
                      failure=[])
    c.close()
    opts = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel("127.0.0.1:%d" % s.client_port, options=opts) as ch:
        rng = ch.unary_unary("/etcdserverpb.KV/Range",
                             request_serializer=etcdrpc.RangeRequest.SerializeToString,
                             response_deserializer=etcdrpc.RangeResponse.FromString)
        for _ in range(10):
            resp = rng(etcdrpc.RangeRequest(key=b"/huge/", range_end=b"/huge0"), timeout=60)
            assert resp.count == 50000 and len(resp.kvs) == 50000
            assert resp.ByteSize() > 8 << 20
