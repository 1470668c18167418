"""The gRPC transport driven by real clients — etcdctl, Python's etcd3 and
grpc — against the test-double server, plus hostile input on raw sockets."""
import os
import socket
import struct
import subprocess
import threading
import time

import etcd3
import grpc
import pytest

from api_fake import FAKE, start_fake

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def etcdctl(srv, *args, stdin=None):
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(["etcdctl", "--endpoints", srv.endpoint, "--command-timeout", "10s",
                           *args], input=stdin, capture_output=True, env=env, timeout=60)


def channel(srv):
    return grpc.insecure_channel(srv.endpoint, options=[("grpc.max_send_message_length", -1),
                                                        ("grpc.max_receive_message_length", -1)])


def unary(srv, path, data, timeout=10):
    with channel(srv) as ch:
        return ch.unary_unary(path)(data, timeout=timeout)


def unary_error(srv, path, data, timeout=10):
    with pytest.raises(grpc.RpcError) as e:
        unary(srv, path, data, timeout)
    return e.value.code(), e.value.details()


def test_etcdctl_put_get_del(fake):
    assert etcdctl(fake, "put", "foo", "bar").stdout == b"OK\n"
    assert etcdctl(fake, "put", "foo2", "baz").stdout == b"OK\n"
    assert etcdctl(fake, "get", "foo").stdout == b"foo\nbar\n"
    assert etcdctl(fake, "get", "--prefix", "foo").stdout == b"foo\nbar\nfoo2\nbaz\n"
    assert etcdctl(fake, "del", "foo").stdout == b"1\n"
    assert etcdctl(fake, "get", "foo").stdout == b""
    r = etcdctl(fake, "get", "--prefix", "f", "-w", "json")
    assert b'"count":1' in r.stdout


def test_etcdctl_endpoint_status(fake):
    r = etcdctl(fake, "endpoint", "status")
    assert r.returncode == 0, r.stderr
    fields = [f.strip() for f in r.stdout.decode().split(",")]
    assert fields[0] == fake.endpoint
    assert fields[2] == "3.4.23"
    assert fields[4] == "true"  # is leader


def test_etcdctl_too_large_put(fake):
    r = etcdctl(fake, "put", "big", stdin=b"a" * 1600000)
    assert r.returncode != 0
    assert b"Error: etcdserver: request is too large" in r.stderr
    assert etcdctl(fake, "put", "ok", stdin=b"a" * 1000000).stdout == b"OK\n"
    assert etcdctl(fake, "get", "ok", "--print-value-only").stdout == b"a" * 1000000 + b"\n"


def test_python_etcd3(fake):
    host, port = fake.endpoint.split(":")
    c = etcd3.client(host=host, port=int(port))
    c.put("/a/1", "one")
    c.put("/a/2", "two")
    value, meta = c.get("/a/1")
    assert value == b"one" and meta.version == 1
    assert sorted(v for v, _ in c.get_prefix("/a/")) == [b"one", b"two"]
    assert c.delete("/a/1") is True
    assert c.get("/a/1") == (None, None)
    c.close()


def wait_for(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def readline(f, timeout=10):
    """A line from a pipe, or b"" after timeout seconds."""
    import select
    line = b""
    end = time.time() + timeout
    while not line.endswith(b"\n") and time.time() < end:
        if select.select([f], [], [], max(0, end - time.time()))[0]:
            c = os.read(f.fileno(), 1)
            if not c:
                break
            line += c
    return line


def test_etcdctl_watch(fake):
    env = dict(os.environ, ETCDCTL_API="3")
    w = subprocess.Popen(["etcdctl", "--endpoints", fake.endpoint, "watch", "--prefix", "w/"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert wait_for(lambda: unary(fake, "/quointest.Test/Watchers", b"") == b"watchers=1")
        assert etcdctl(fake, "put", "w/1", "one").returncode == 0
        assert etcdctl(fake, "put", "other", "x").returncode == 0
        assert etcdctl(fake, "del", "w/1").returncode == 0
        lines = [readline(w.stdout) for _ in range(5)]
        assert lines == [b"PUT\n", b"w/1\n", b"one\n", b"DELETE\n", b"w/1\n"]
    finally:
        w.terminate()
        w.wait(timeout=10)
    # etcdctl's exit resets its stream: the server drops the watch.
    assert wait_for(lambda: unary(fake, "/quointest.Test/Watchers", b"") == b"watchers=0")


def test_python_etcd3_watch_and_cancel(fake):
    c = etcd3.client(host="127.0.0.1", port=fake.port)
    events, cancel = c.watch_prefix("/w/")
    c.put("/w/a", "1")
    c.put("/x", "2")
    c.put("/w/b", "3")
    got = [next(events), next(events)]
    assert [(e.key, e.value) for e in got] == [(b"/w/a", b"1"), (b"/w/b", b"3")]
    cancel()
    # Not c.close(): etcd3's watch thread would then retry on the closed
    # channel (a library quirk, with etcd too); the server's stop ends it.


def test_unknown_method_and_service(fake):
    assert unary_error(fake, "/etcdserverpb.KV/Nope", b"") == (
        grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope for service etcdserverpb.KV")
    assert unary_error(fake, "/etcdserverpb.Nope/Range", b"") == (
        grpc.StatusCode.UNIMPLEMENTED, "unknown service etcdserverpb.Nope")
    assert unary_error(fake, "/bad", b"") == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, 'malformed method name: "/bad"')


def test_malformed_protobuf(fake):
    for data in (b"\xff\xff\xff", b"\x0a\x05a"):
        code, details = unary_error(fake, "/etcdserverpb.KV/Range", data)
        assert code == grpc.StatusCode.INTERNAL
        assert details.startswith("grpc: error unmarshalling request")
    # The connection and server are fine afterwards.
    assert unary(fake, "/quointest.Test/Stats", b"").startswith(b"cancels=")


def test_ten_mib_request(fake):
    big = b"\x0a\x01k\x12\x80\x80\x80\x05" + b"a" * (10 << 20)
    code, details = unary_error(fake, "/etcdserverpb.KV/Put", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == f"grpc: received message larger than max ({len(big)} vs. 2097152)"
    # Just below the transport's limit the handler's own check answers.
    mid = b"\x0a\x01k\x12\x80\x80\x78" + b"a" * (15 << 17)
    assert unary_error(fake, "/etcdserverpb.KV/Put", mid) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")


def test_deadline_cancels_handler(fake):
    code, _ = unary_error(fake, "/quointest.Test/Hang", b"", timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if unary(fake, "/quointest.Test/Stats", b"") == b"cancels=1":
            break
        time.sleep(0.05)
    assert unary(fake, "/quointest.Test/Stats", b"") == b"cancels=1"


def test_bidi_echo(fake):
    msgs = [bytes([i % 256]) * (i * 37 % 5000) for i in range(300)]
    with channel(fake) as ch:
        out = list(ch.stream_stream("/quointest.Test/Echo")(iter(msgs), timeout=30))
    assert out == msgs


def test_slow_reader_memory_is_bounded(fake):
    """The client stops reading a 192 MiB answer for 1.5 s: the server holds
    only its bounded buffers, not the answer."""
    total, size = 192 << 20, 16 << 10
    req = struct.pack(">QI", total, size)
    with channel(fake) as ch:
        it = ch.unary_stream("/quointest.Test/Flood")(req, timeout=120)
        got = len(next(it))
        before = fake.rss_kib()
        time.sleep(1.5)  # the client does not read; the server must stop queueing
        grown = fake.rss_kib() - before
        for m in it:
            got += len(m)
    assert got == total
    assert grown < 48 << 10, f"server grew {grown} KiB while the client was not reading"


def test_cancelled_stream_calls_cancel(fake):
    req = struct.pack(">QI", 1 << 40, 1024)
    with channel(fake) as ch:
        it = ch.unary_stream("/quointest.Test/Flood")(req, timeout=60)
        next(it)
        it.cancel()
    for _ in range(100):
        if unary(fake, "/quointest.Test/Stats", b"") == b"cancels=1":
            break
        time.sleep(0.05)
    assert unary(fake, "/quointest.Test/Stats", b"") == b"cancels=1"


# ---- raw sockets ----

def raw(srv, data, close_write=True, timeout=5):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(timeout)
    s.sendall(data)
    if close_write:
        s.shutdown(socket.SHUT_WR)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def frames(data):
    """Splits server output into (type, flags, stream, payload) tuples."""
    out = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + n]))
        data = data[9 + n:]
    return out


def hpack_literal(name, value):
    """A header as HPACK 'literal without indexing, new name', no Huffman."""
    def s(b):
        assert len(b) < 127
        return bytes([len(b)]) + b
    return b"\x00" + s(name) + s(value)


def grpc_headers(path, extra=()):
    hs = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
          (b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra]
    return b"".join(hpack_literal(n, v) for n, v in hs)


def test_random_bytes_are_refused(fake):
    rnd = os.urandom(4096)
    out = raw(fake, rnd if rnd[:3] != b"PRI" else b"X" + rnd)
    assert out.startswith(b"HTTP/1.1 400 Bad Request")
    out = raw(fake, PREFACE + os.urandom(4096))
    fs = frames(out)
    assert any(t == 7 for t, _, _, _ in fs), "expected a GOAWAY"
    assert unary(fake, "/quointest.Test/Stats", b"").startswith(b"cancels=")


def test_truncated_frames(fake):
    settings = frame(4, 0, 0, b"")
    # A frame header announcing more than is sent, then the client hangs up.
    raw(fake, PREFACE + settings + frame(1, 4, 1, grpc_headers(b"/etcdserverpb.KV/Range"))[:20])
    # A gRPC message shorter than its prefix says, then END_STREAM: an error
    # status (trailers-only: a HEADERS frame ending the stream), not a crash.
    body = b"\x00" + struct.pack(">I", 100) + b"0123456789"
    out = raw(fake, PREFACE + settings + frame(1, 4, 1, grpc_headers(b"/etcdserverpb.KV/Range")) +
              frame(0, 1, 1, body), close_write=False, timeout=2)
    fs = frames(out)
    assert any(t == 1 and s == 1 and f & 1 for t, f, s, _ in fs), fs
    # A compressed message without grpc-encoding.
    out = raw(fake, PREFACE + settings + frame(1, 4, 1, grpc_headers(b"/quointest.Test/Stats")) +
              frame(0, 1, 1, b"\x01\x00\x00\x00\x00"), close_write=False, timeout=2)
    assert any(t == 1 and s == 1 and f & 1 for t, f, s, _ in frames(out))
    assert unary(fake, "/quointest.Test/Stats", b"").startswith(b"cancels=")


def test_connect_and_drop_cycles_keep_fd_count(fake):
    assert unary(fake, "/quointest.Test/Stats", b"").startswith(b"cancels=")
    time.sleep(0.2)
    before = fake.fd_count()
    payloads = [b"", b"GET /ver", PREFACE[:10], PREFACE, PREFACE + frame(4, 0, 0, b"")]
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", fake.port))
        if payloads[i % len(payloads)]:
            s.sendall(payloads[i % len(payloads)])
        s.close()
    after = None
    for _ in range(100):
        after = fake.fd_count()
        if after == before:
            break
        time.sleep(0.05)
    assert after == before


def test_many_concurrent_clients(fake):
    errors = []

    def worker(i):
        try:
            for j in range(20):
                r = etcd3.client(host="127.0.0.1", port=fake.port)
                r.put(f"k{i}-{j}", f"v{j}")
                assert r.get(f"k{i}-{j}")[0] == f"v{j}".encode()
                r.close()
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_port_in_use_message():
    srv = start_fake()
    try:
        r = subprocess.run([FAKE, "--listen", f"http://127.0.0.1:{srv.port}"],
                           capture_output=True, timeout=30)
        assert r.returncode == 3
        assert r.stderr.decode().strip() == (
            f"listen tcp 127.0.0.1:{srv.port}: bind: address already in use")
    finally:
        code, err = srv.stop()
        assert code == 0, err


def mutate(rng, data):
    """Flips, inserts, deletes or truncates a few bytes of data."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[i % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)]) * rng.randint(1, 4)
        elif op == 2 and b:
            del b[i % len(b)]
        else:
            del b[i:]
    return bytes(b)


def test_mutated_input_never_hurts_the_server(fake):
    """Mutated HTTP/1.1 requests and HTTP/2 exchanges: whatever the server
    answers, it stays up, and it exits clean under the sanitizers."""
    import random
    rng = random.Random(1234)
    settings = frame(4, 0, 0, b"")
    msg = b"\x00" + struct.pack(">I", 3) + b"\x0a\x01a"
    h2 = (PREFACE + settings + frame(1, 4, 1, grpc_headers(b"/etcdserverpb.KV/Range")) +
          frame(0, 1, 1, msg) + frame(1, 4, 3, grpc_headers(b"/quointest.Test/Echo")) +
          frame(0, 0, 3, msg) + frame(8, 0, 3, b"\x00\x00\x10\x00") + frame(3, 0, 3, b"\x00\x00\x00\x08"))
    h1 = (b"POST /version?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"3\r\nabc\r\n0\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
    for i in range(400):
        base = h2 if i % 2 else h1
        data = mutate(rng, base)
        if i % 2 and rng.random() < 0.5:
            data = PREFACE + mutate(rng, base[len(PREFACE):])
        raw(fake, data, close_write=rng.random() < 0.5, timeout=0.03)
    assert unary(fake, "/quointest.Test/Stats", b"").startswith(b"cancels=")
    host, port = fake.endpoint.split(":")
    c = etcd3.client(host=host, port=int(port))
    c.put("after", "fuzz")
    assert c.get("after")[0] == b"fuzz"
    c.close()


def test_reset_of_an_unopened_stream_is_ignored(fake):
    """grpc's C core may reset a stream it never opened (a call cancelled
    before its headers left); grpc-go ignores that, and so must we, instead of
    ending every call on the connection. Sent whole and byte by byte."""
    msg = b"\x00\x00\x00\x00\x00"
    data = (PREFACE + frame(4, 0, 0, b"") + frame(3, 0, 7, b"\x00\x00\x00\x08") +
            frame(1, 4, 1, grpc_headers(b"/quointest.Test/Stats")) + frame(0, 1, 1, msg) +
            frame(3, 0, 9, b"\x00\x00\x00\x08") +
            frame(1, 4, 3, grpc_headers(b"/quointest.Test/Stats")) + frame(0, 1, 3, msg))
    for chunk in (len(data), 1):
        s = socket.create_connection(("127.0.0.1", fake.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk])
            if chunk == 1:
                time.sleep(0.0005)
        s.settimeout(3)
        out = b""
        try:
            while sum(1 for t, f, sid, _ in frames(out) if t == 1 and f & 1) < 2:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except socket.timeout:
            pass
        s.close()
        fs = frames(out)
        assert not any(t == 7 for t, _, _, _ in fs), "the connection was ended (GOAWAY)"
        assert {sid for t, f, sid, _ in fs if t == 1 and f & 1} == {1, 3}


def test_etcdctl_over_a_unix_socket(tmp_path):
    sock = tmp_path / "client.sock"
    proc = subprocess.Popen([FAKE, "--listen", f"unix://{sock}", "--lifetime", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"listening"
        env = dict(os.environ, ETCDCTL_API="3")
        ctl = ["etcdctl", "--endpoints", f"unix://{sock}", "--command-timeout", "10s"]
        assert subprocess.run(ctl + ["put", "u", "v"], capture_output=True, env=env,
                              timeout=60).stdout == b"OK\n"
        assert subprocess.run(ctl + ["get", "u"], capture_output=True, env=env,
                              timeout=60).stdout == b"u\nv\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read().decode()
