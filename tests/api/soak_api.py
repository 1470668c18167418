"""soak-api: many clients at once against the test-double server under the
sanitizers — etcd3 reads, writes and watches, gRPC streams cancelled midway,
calls with tiny deadlines, gateway writes and watches, dropped and garbage
connections — for SECONDS (default 60). Fails if any call that should
succeed does not, or if the server does not exit clean (leaks, races caught
by the sanitizers). Not part of `make test`: `make soak-api`."""
import base64
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import urllib.request

import etcd3
import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from api_fake import start_fake  # noqa: E402
from test_api_grpc import PREFACE, channel, unary  # noqa: E402


def worker(srv, seed, stop, counts, errors):
    rng = random.Random(seed)
    kv = etcd3.client(host="127.0.0.1", port=srv.port)
    while time.time() < stop:
        op = rng.randrange(9)
        try:
            if op == 0:
                kv.put(f"k{rng.randrange(100)}", "v" * rng.randrange(2000))
            elif op == 1:
                kv.get_prefix("k")
            elif op == 2:
                kv.delete(f"k{rng.randrange(100)}")
            elif op == 3:
                _, cancel = kv.watch_prefix("k")
                time.sleep(rng.random() * 0.05)
                cancel()
            elif op == 4:
                with channel(srv) as ch:
                    it = ch.unary_stream("/quointest.Test/Flood")(
                        struct.pack(">QI", 1 << 22, 4096), timeout=10)
                    for i, _ in enumerate(it):
                        if i > rng.randrange(50):
                            it.cancel()
                            break
            elif op == 5:
                try:
                    unary(srv, "/quointest.Test/Hang", b"", timeout=rng.random() * 0.05 + 0.001)
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                        grpc.StatusCode.CANCELLED):
                        raise
            elif op == 6:
                body = json.dumps({"key": base64.b64encode(b"k1").decode(), "value": "eA=="})
                urllib.request.urlopen(urllib.request.Request(
                    f"http://{srv.endpoint}/v3/kv/put", data=body.encode()), timeout=10).read()
            elif op == 7:
                s = socket.create_connection(("127.0.0.1", srv.port))
                if rng.random() < 0.5:
                    s.sendall(PREFACE + os.urandom(rng.randrange(100)))
                else:
                    s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n"
                              b'{"create_request":{"key":"aw=="}}')
                    time.sleep(rng.random() * 0.05)
                s.close()
            else:
                with channel(srv) as ch:
                    msgs = [os.urandom(rng.randrange(100)) for _ in range(rng.randrange(20))]
                    out = list(ch.stream_stream("/quointest.Test/Echo")(iter(msgs), timeout=10))
                    if out != msgs:
                        raise AssertionError(f"echo lost messages: {len(out)} of {len(msgs)}")
            counts[op] = counts.get(op, 0) + 1
        except Exception as e:  # collected and reported at the end
            errors.append(f"op {op}: {e!r}"[:300])


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    srv = start_fake()
    counts, errors = {}, []
    stop = time.time() + seconds
    threads = [threading.Thread(target=worker, args=(srv, i, stop, counts, errors))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    code, err = srv.stop()
    print(f"soak-api: {sum(counts.values())} operations, {len(errors)} failed, "
          f"server exit {code}")
    for e in errors[:10]:
        print("  ", e)
    if code != 0:
        print(err[-4000:])
    return 0 if code == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
