"""etcd's v3 JSON gateway: Python's etcd3gw client (Debian python3-etcd3gw)
against quoin, and the same gateway requests sent to the real etcd 3.4 and to
quoin with their JSON answers compared (ids normalised)."""
import json
import os
import re
import sys
import urllib.error
import urllib.request

from etcd3gw.client import Etcd3Client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from etcdctl_diff import start_etcd, stop_process  # noqa: E402
from qtest import Server  # noqa: E402

# (path, body) in order; "{lease}" is the id of the last granted lease.
REQUESTS = [
    ("/v3/kv/put", {"key": "Zm9v", "value": "YmFy"}),
    ("/v3/kv/put", {"key": "Zm9v", "value": "YmF6", "prev_kv": True}),
    ("/v3/kv/range", {"key": "Zm9v"}),
    ("/v3/kv/range", {"key": "Zg==", "range_end": "Zw==", "count_only": True}),
    ("/v3/kv/range", {"key": "Zm9v", "revision": "2"}),
    ("/v3/kv/range", {"key": "Zm9v", "revision": "99"}),
    ("/v3/kv/txn", {"compare": [{"key": "Zm9v", "result": "EQUAL", "target": "VALUE",
                                 "value": "YmF6"}],
                    "success": [{"request_put": {"key": "Zm9v", "value": "cXV4"}}],
                    "failure": [{"request_range": {"key": "Zm9v"}}]}),
    ("/v3/kv/deleterange", {"key": "Zm9v", "prev_kv": True}),
    ("/v3/kv/put", {"key": ""}),
    ("/v3/kv/compaction", {"revision": "3"}),
    ("/v3/kv/range", {"key": "Zm9v", "revision": "2"}),
    ("/v3/lease/grant", {"TTL": "60"}),
    ("/v3/kv/put", {"key": "bGVhc2Vk", "value": "eA==", "lease": "{lease}"}),
    ("/v3/kv/lease/timetolive", {"ID": "{lease}", "keys": True}),
    ("/v3/kv/lease/revoke", {"ID": "{lease}"}),
    ("/v3/kv/lease/revoke", {"ID": "{lease}"}),
    ("/v3/kv/range", {"key": "bGVhc2Vk"}),
    ("/v3/maintenance/alarm", {}),
    ("/v3/cluster/member/list", {}),
    ("/v3/kv/nosuch", {}),
]


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run(base):
    out, lease, names = [], "0", {}

    def name(v):
        names.setdefault(v, "<id-%d>" % (len(names) + 1))
        return names[v]

    for path, body in REQUESTS:
        text = json.dumps(body).replace("{lease}", lease)
        status, answer = post(base, path, json.loads(text))
        granted = re.search(r'"ID":"(\d+)"', answer) if path == "/v3/lease/grant" else None
        if granted:
            lease = granted.group(1)
        answer = re.sub(r'"(cluster_id|member_id|ID|id)":"(\d+)"',
                        lambda m: '"%s":"%s"' % (m.group(1), name(m.group(2))), answer)
        answer = re.sub(r'"(peerURLs|clientURLs)":\[[^]]*\]', r'"\1":[<urls>]', answer)
        answer = re.sub(r'"name":"[^"]*"', '"name":"<name>"', answer)
        answer = re.sub(r'"TTL":"(59|60)"', '"TTL":"<ttl>"', answer)
        out.append("%s -> %d %s" % (path, status, answer))
    return out


def test_gateway_answers_match_etcd(tmp_path):
    proc, ref = start_etcd(str(tmp_path))
    try:
        want = run("http://" + ref)
    finally:
        stop_process(proc)
    q = Server(tmp_path, name="ref").start()
    try:
        got = run(q.client_url)
    finally:
        assert q.stop() == 0, q.logs()
    diffs = [(w, g) for w, g in zip(want, got) if w != g]
    assert not diffs, "\n\n".join("etcd:  %s\nquoin: %s" % d for d in diffs)


def test_etcd3gw_client(servers):
    s = servers().start()
    c = Etcd3Client(host="127.0.0.1", port=s.client_port, api_path="/v3/")
    assert c.put("a", "b")
    assert c.get("a") == [b"b"]
    lease = c.lease(30)
    c.put("svc", "up", lease=lease)
    assert lease.keys() == [b"svc"]
    assert 0 < lease.ttl() <= 30
    assert c.transaction({"compare": [{"key": "YQ==", "result": "EQUAL", "target": "VALUE",
                                       "value": "Yg=="}],
                          "success": [{"request_put": {"key": "YQ==", "value": "Yw=="}}],
                          "failure": []})["succeeded"]
    assert c.get("a") == [b"c"]
    lease.revoke()
    assert c.get("svc") == []
    assert c.delete("a") and c.get("a") == []
    assert c.status()["version"] == "3.4.23"
