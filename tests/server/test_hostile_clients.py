"""Bad input against the real server: garbage and cut frames on the client
port, malformed requests, unknown methods, oversized requests, and clients
that connect and vanish or abandon watch streams. Throughout, another client
keeps being served, and descriptors and memory come back to where they were."""
import socket
import subprocess
import sys
import time

import etcd3
import grpc
import pytest

from qtest import quoin_release_bin

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def member(servers):
    s = servers(binary=quoin_release_bin()).start()
    s.endpoint = "127.0.0.1:%d" % s.client_port
    s.client = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    s.client.put("/probe", "0")
    yield s
    s.client.close()


def fds(s):
    import os
    return len(os.listdir("/proc/%d/fd" % s.proc.pid))


def rss_kib(s):
    with open("/proc/%d/status" % s.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def settles(s, fd0, rss0, slack_kib=4096, within=15):
    """Whether descriptors come back to fd0 and RSS to rss0 + slack within
    `within` seconds (the server gives freed heap back every 5 s)."""
    deadline = time.time() + within
    while time.time() < deadline:
        if fds(s) == fd0 and rss_kib(s) <= rss0 + slack_kib:
            return True
        time.sleep(0.5)
    return False


def still_serving(s, n):
    s.client.put("/probe", str(n))
    assert s.client.get("/probe")[0] == str(n).encode()


def raw(s, data, read=True):
    with socket.create_connection(("127.0.0.1", s.client_port), timeout=5) as c:
        c.sendall(data)
        if read:
            try:
                c.recv(65536)
            except (socket.timeout, ConnectionResetError):
                pass


def unary_error(s, path, data):
    with grpc.insecure_channel(s.endpoint, options=[("grpc.max_send_message_length", -1)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(path)(data, timeout=10)
    return e.value.code(), e.value.details()


def test_garbage_and_cut_frames(member):
    raw(member, b"\x00\xff garbage \r\n\r\n" * 100)
    raw(member, PREFACE + b"\x00\x00\x12\x04\x00")  # a SETTINGS frame cut short
    raw(member, PREFACE + b"\x00\x40\x00\x01\x05\x00\x00\x00\x01" + b"\x00" * 10, read=False)
    raw(member, b"GET /version HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    still_serving(member, 1)


def test_malformed_request_unknown_method_and_too_large(member):
    # A PutRequest whose key field claims more bytes than there are.
    code, details = unary_error(member, "/etcdserverpb.KV/Put", b"\x0a\x7f\x01\x02")
    assert code == grpc.StatusCode.INTERNAL  # what grpc-go (so etcd) answers
    assert "error unmarshalling request" in details
    code, details = unary_error(member, "/etcdserverpb.KV/Nope", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "unknown method Nope for service etcdserverpb.KV" in details
    code, details = unary_error(member, "/nosuch.Service/X", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    # A 10 MiB put: over the gRPC limit etcd sets (max request bytes + 512 KiB).
    big = b"\x0a\x01k\x12\x80\x80\x80\x05" + b"x" * (10 << 20)
    code, details = unary_error(member, "/etcdserverpb.KV/Put", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "received message larger than max" in details
    # 1.6 MiB: read, then refused by the server's own check, in etcd's words.
    mid = b"\x0a\x01k\x12\x80\x80\x64" + b"x" * (1600 * 1024)
    code, details = unary_error(member, "/etcdserverpb.KV/Put", mid)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "etcdserver: request is too large"
    still_serving(member, 2)


def test_connect_and_drop_leaks_nothing(member):
    for _ in range(200):  # warm up allocator and kernel buffers
        socket.create_connection(("127.0.0.1", member.client_port)).close()
    time.sleep(6)
    fd0, rss0 = fds(member), rss_kib(member)
    for i in range(10000):
        c = socket.create_connection(("127.0.0.1", member.client_port))
        if i % 2:
            c.sendall(PREFACE)
        c.close()
    still_serving(member, 3)
    assert settles(member, fd0, rss0), (fd0, fds(member), rss0, rss_kib(member))


ABANDON = """
import sys, time, etcd3
for _ in range(int(sys.argv[2])):
    c = etcd3.client(host="127.0.0.1", port=int(sys.argv[1]), timeout=10)
    it, cancel = c.watch_prefix("/w/")
    time.sleep(0.002)
    c.close()  # the stream is dropped without a cancel
"""


def test_abandoned_watch_streams_leak_nothing(member):
    def abandon(n):
        # In a process of its own: grpc shares connections between the
        # channels of one process, and the test's own client must not be one.
        subprocess.run([sys.executable, "-c", ABANDON, str(member.client_port), str(n)],
                       capture_output=True, timeout=300, check=True)

    abandon(50)
    time.sleep(6)
    fd0, rss0 = fds(member), rss_kib(member)
    abandon(1000)
    for i in range(100):
        member.client.put("/w/%d" % i, "x")  # events for watchers that are gone
    still_serving(member, 4)
    assert settles(member, fd0, rss0), (fd0, fds(member), rss0, rss_kib(member))
