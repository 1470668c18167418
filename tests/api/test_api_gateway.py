"""The v3 JSON gateway (POST /v3/kv/put, ...) against the test-double server,
checked against what etcd 3.4's grpc-gateway answers."""
import base64
import json
import urllib.error
import urllib.request

import grpc


def b64(s):
    return base64.b64encode(s.encode()).decode()


def post(srv, path, body, headers=None):
    """Returns (HTTP status, parsed JSON or raw text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{srv.endpoint}{path}", data=data, method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def test_put_range_delete(fake):
    status, out = post(fake, "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    assert status == 200
    assert out == {"header": {"cluster_id": "4096", "member_id": "8192", "revision": "1",
                              "raft_term": "2"}}
    status, out = post(fake, "/v3/kv/range", {"key": b64("foo")})
    assert status == 200
    assert out["kvs"] == [{"key": b64("foo"), "create_revision": "1", "mod_revision": "1",
                           "version": "1", "value": b64("bar")}]
    assert out["count"] == "1"
    # lowerCamelCase names, enums by name, numbers as strings, unknown fields.
    status, out = post(fake, "/v3beta/kv/range", {"key": b64("foo"), "keysOnly": True,
                                                  "limit": "1", "sort_order": "DESCEND",
                                                  "unknown": [1, {"x": None}]})
    assert status == 200 and "value" not in out["kvs"][0]
    status, out = post(fake, "/v3/kv/range", {"key": b64("foo"), "count_only": True})
    assert "kvs" not in out and out["count"] == "1"
    status, out = post(fake, "/v3/kv/deleterange", {"key": b64("foo")})
    assert status == 200 and out["deleted"] == "1"
    # What the gateway wrote, gRPC clients read.
    status, out = post(fake, "/v3/kv/put", {"key": b64("k"), "value": b64("v\u00e9\n")})
    with grpc.insecure_channel(fake.endpoint) as ch:
        raw = ch.unary_unary("/etcdserverpb.KV/Range")(b"\x0a\x01k", timeout=10)
    assert "vé\n".encode() in raw


def test_errors_as_etcd(fake):
    status, out = post(fake, "/v3/kv/range", {"key": "@@@"})
    assert (status, out["code"]) == (400, 3)
    assert out["error"] == "illegal base64 data at input byte 0" == out["message"]
    status, out = post(fake, "/v3/kv/range", b'{"key":')
    assert (status, out["code"]) == (400, 3)
    status, out = post(fake, "/v3/kv/range", b'{"limit": 1.5}')
    assert (status, out["code"]) == (400, 3)
    status, out = post(fake, "/v3/kv/txn", {})
    assert (status, out["code"]) == (501, 12)
    status, out = post(fake, "/v3/kv/nope", {})
    assert status == 404
    req = urllib.request.Request(f"http://{fake.endpoint}/v3/kv/range", method="GET")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("GET served")
    except urllib.error.HTTPError as e:
        assert e.code == 405


def test_empty_body_and_authorization(fake):
    status, out = post(fake, "/v3/maintenance/status", b"",
                       headers={"Authorization": "token-123"})
    assert status == 200
    assert out["version"] == "3.4.23" and out["errors"] == ["token-123"]
    assert "errors" not in post(fake, "/v3/maintenance/status", {})[1]


def test_watch_streams_json_lines(fake):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("POST", "/v3/watch", json.dumps({"create_request": {"key": b64("w"),
                                                                     "range_end": b64("x")}}))
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    first = json.loads(resp.readline())
    assert first["result"]["created"] is True
    assert post(fake, "/v3/kv/put", {"key": b64("w1"), "value": b64("v")})[0] == 200
    assert post(fake, "/v3/kv/put", {"key": b64("z"), "value": b64("v")})[0] == 200
    event = json.loads(resp.readline())["result"]["events"][0]
    assert event["kv"]["key"] == b64("w1") and event["kv"]["value"] == b64("v")
    conn.close()  # the server cancels the watch; later writes find no watcher
    assert post(fake, "/v3/kv/put", {"key": b64("w2"), "value": b64("v")})[0] == 200


def test_mutated_json_never_hurts_the_server(fake):
    """Mutated JSON bodies: each gets an answer (an error or not); the server
    stays up and exits clean under the sanitizers."""
    import random
    from test_api_grpc import mutate
    rng = random.Random(99)
    bodies = [json.dumps({"key": b64("foo"), "range_end": b64("fop"), "limit": "10",
                          "sort_order": "DESCEND", "keysOnly": True}).encode(),
              json.dumps({"key": b64("k"), "value": b64("\u00e9\"\\"), "lease": 0}).encode(),
              b'{"create_request":{"key":"dw==","filters":["NOPUT"],"prev_kv":true}}']
    paths = ["/v3/kv/range", "/v3/kv/put", "/v3/kv/range"]
    for i in range(300):
        k = i % 3
        status, _ = post(fake, paths[k], mutate(rng, bodies[k]))
        assert status in (200, 400), status
    assert post(fake, "/v3/kv/range", {"key": b64("k")})[0] == 200
