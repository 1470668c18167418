"""Recording test-client histories for lincheck (tests/chaos/lincheck.c).

A history is a JSON-lines file, one operation per line, in the format that
docs/testing.md describes. Test clients record what they asked, when, and what
came back; the C checker then decides whether some linearization explains it
all, and checks revisions, watches and leases.

    h = History(path)
    c = Recorder(h, "c1", etcd3.client(host, port, timeout=5))
    c.put("k", "v"); c.get("k"); c.cas("k", "value", "v", "w")
    w = WatchRecorder(h, "w1", host, port, "k", prefix_end("k"), start_rev=1)
    w.start(); ...; w.stop()
    c.range("", "\\0", final=True)
    h.close()
    code, report = run_lincheck(path)

Keys and values are bytes on the wire; they are written as text decoded as
Latin-1, which maps every byte string to a distinct string and keeps their order.

Outcomes: "ok" when the server answered; "fail" when it refused in a way that
means the operation did not happen (a bad request, a missing lease); and
"indeterminate" when the call timed out or the connection broke: it may or may
not have taken effect, and the checker considers both.
"""
import json
import os
import queue
import random
import subprocess
import threading
import time

import grpc
from etcd3 import etcdrpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# gRPC codes after which the request may have been applied anyway.
_UNSURE = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}

_TARGETS = {"value": etcdrpc.Compare.VALUE, "mod_rev": etcdrpc.Compare.MOD,
            "create_rev": etcdrpc.Compare.CREATE, "version": etcdrpc.Compare.VERSION}
_RESULTS = {"=": etcdrpc.Compare.EQUAL, "!=": etcdrpc.Compare.NOT_EQUAL,
            "<": etcdrpc.Compare.LESS, ">": etcdrpc.Compare.GREATER}


def text(b):
    """Bytes from the wire as history text (Latin-1: lossless, order-keeping)."""
    return b.decode("latin-1") if isinstance(b, bytes) else b


def wire(s):
    """History text back to the bytes sent on the wire."""
    return s.encode("latin-1") if isinstance(s, str) else s


def prefix_end(prefix):
    """etcd's range_end for "every key starting with prefix"."""
    b = bytearray(wire(prefix))
    while b and b[-1] == 0xff:
        b.pop()
    if not b:
        return "\0"
    b[-1] += 1
    return text(bytes(b))


def kv_result(kv):
    return {"found": True, "value": text(kv.value), "mod_rev": kv.mod_revision,
            "create_rev": kv.create_revision, "version": kv.version, "lease": kv.lease}


class History:
    """A history file being written; thread-safe, one line per operation."""

    def __init__(self, path):
        self.path = path
        self._f = open(path, "w")
        self._lock = threading.Lock()

    @staticmethod
    def now():
        return time.monotonic_ns()

    def begin(self, client, op, **fields):
        """Starts an operation: returns its entry with the invocation time."""
        entry = {"client": client, "op": op}
        entry.update(fields)
        entry["call"] = self.now()
        return entry

    def finish(self, entry, status, **results):
        """Completes an entry ("ok", "fail" or "indeterminate") and writes it."""
        if status != "indeterminate":
            entry["return"] = self.now()
        entry["status"] = status
        entry.update(results)
        self.write(entry)

    def write(self, entry):
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self):
        with self._lock:
            self._f.close()


class Recorder:
    """One test client: runs operations with the raw etcd v3 gRPC stubs of a
    python-etcd3 client (for the response headers) and records each one."""

    def __init__(self, history, client_id, etcd, timeout=5):
        self.h = history
        self.id = client_id
        self.kv = etcd.kvstub
        self.lease = etcd.leasestub
        self.timeout = timeout
        self.last_status = None  # "ok", "fail" or "indeterminate": the last call's outcome
        self.last_lease_gone = False  # the last TimeToLive said the lease is gone

    def rebind(self, etcd):
        """Sends the following calls through another client (another member)."""
        self.kv = etcd.kvstub
        self.lease = etcd.leasestub

    def _run(self, entry, call):
        """Runs call() -> (result, results dict), finishing entry by its outcome.
        Returns the result, or None if the call failed."""
        try:
            result, fields = call()
        except grpc.RpcError as e:
            status = "indeterminate" if e.code() in _UNSURE else "fail"
            self.h.finish(entry, status, error="%s: %s" % (e.code().name, e.details()))
            self.last_status = status
            return None
        self.h.finish(entry, "ok", **fields)
        self.last_status = "ok"
        return result

    def put(self, key, value, lease=0):
        e = self.h.begin(self.id, "put", key=key, value=value, lease=lease)
        req = etcdrpc.PutRequest(key=wire(key), value=wire(value), lease=lease)

        def call():
            r = self.kv.Put(req, self.timeout)
            return r, {"rev": r.header.revision}
        return self._run(e, call)

    def get(self, key, serializable=False):
        """A read; a serializable one may be stale and is only checked for
        self-consistency, not for recency."""
        e = self.h.begin(self.id, "get", key=key, serializable=serializable)
        req = etcdrpc.RangeRequest(key=wire(key), serializable=serializable)

        def call():
            r = self.kv.Range(req, self.timeout)
            res = kv_result(r.kvs[0]) if r.kvs else {"found": False}
            res["rev"] = r.header.revision
            return r, res
        return self._run(e, call)

    def delete(self, key):
        e = self.h.begin(self.id, "delete", key=key)
        req = etcdrpc.DeleteRangeRequest(key=wire(key))

        def call():
            r = self.kv.DeleteRange(req, self.timeout)
            return r, {"deleted": r.deleted, "rev": r.header.revision}
        return self._run(e, call)

    def cas(self, key, target, expect, value, lease=0):
        """Puts value if the key's target ("value", "mod_rev", "version",
        "create_rev") equals expect; returns whether it did (None on error)."""
        e = self.h.begin(self.id, "cas", key=key, cmp=target, expect=expect, value=value,
                         lease=lease)
        req = etcdrpc.TxnRequest(
            compare=[_compare({"key": key, "target": target, "cmp": "=", "value": expect})],
            success=[_request_op({"op": "put", "key": key, "value": value, "lease": lease})])

        def call():
            r = self.kv.Txn(req, self.timeout)
            return r.succeeded, {"succeeded": r.succeeded, "rev": r.header.revision}
        return self._run(e, call)

    def txn(self, compares, then, otherwise=()):
        """A multi-key txn. compares: [{"key", "target", "cmp", "value"}];
        then/otherwise: [{"op": "get"|"put"|"delete", "key", "value"?, "lease"?}]."""
        e = self.h.begin(self.id, "txn", **{"if": list(compares), "then": list(then),
                                            "else": list(otherwise)})
        req = etcdrpc.TxnRequest(compare=[_compare(c) for c in compares],
                                 success=[_request_op(o) for o in then],
                                 failure=[_request_op(o) for o in otherwise])

        def call():
            r = self.kv.Txn(req, self.timeout)
            return r, {"succeeded": r.succeeded, "rev": r.header.revision,
                       "results": [_op_result(x) for x in r.responses]}
        return self._run(e, call)

    def range(self, key, range_end, final=False, serializable=False):
        """Reads [key, range_end); final=True marks the read that ends a test
        (every acknowledged write must be in it)."""
        e = self.h.begin(self.id, "range", key=key, range_end=range_end, final=final,
                         serializable=serializable)
        req = etcdrpc.RangeRequest(key=wire(key), range_end=wire(range_end),
                                   serializable=serializable)

        def call():
            r = self.kv.Range(req, self.timeout)
            kvs = []
            for kv in r.kvs:
                d = kv_result(kv)
                d["key"] = text(kv.key)
                kvs.append(d)
            return r, {"kvs": kvs, "rev": r.header.revision}
        return self._run(e, call)

    def lease_grant(self, ttl, lease_id=None):
        """Grants a lease with a chosen id (so a timed-out grant is still
        identified); returns the id, or None."""
        lease_id = lease_id or random.randint(1, 2**62)
        e = self.h.begin(self.id, "lease_grant", lease=lease_id, ttl=ttl)
        req = etcdrpc.LeaseGrantRequest(TTL=ttl, ID=lease_id)

        def call():
            r = self.lease.LeaseGrant(req, self.timeout)
            return r.ID, {"rev": r.header.revision}
        return self._run(e, call)

    def lease_revoke(self, lease_id):
        e = self.h.begin(self.id, "lease_revoke", lease=lease_id)
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)

        def call():
            r = self.lease.LeaseRevoke(req, self.timeout)
            return r, {"rev": r.header.revision}
        return self._run(e, call)

    def lease_ttl(self, lease_id):
        """Asks for the lease's time to live and records what it shows: the
        lease gone ("lease_expired": its keys must be gone) or still there
        ("lease_alive": its keys cannot have expired yet). A lease the server
        does not have answers TTL -1 and grantedTTL 0; one whose time ran out
        but whose revoke is not applied yet answers TTL -1 with its grantedTTL,
        and its keys are still there: alive. Returns the TTL, or None when the
        call failed (nothing is recorded)."""
        call_at = self.h.now()
        try:
            r = self.lease.LeaseTimeToLive(etcdrpc.LeaseTimeToLiveRequest(ID=lease_id),
                                           self.timeout)
        except grpc.RpcError:
            return None
        gone = self.last_lease_gone = r.TTL == -1 and r.grantedTTL == 0
        self.h.write({"client": self.id, "op": "lease_expired" if gone else "lease_alive",
                      "lease": lease_id, "call": call_at, "return": self.h.now(),
                      "status": "ok", "rev": r.header.revision, "ttl": r.TTL,
                      "granted_ttl": r.grantedTTL})
        return r.TTL

    def lease_expired(self, lease_id):
        """Whether the lease is gone, recorded as lease_ttl does."""
        return self.lease_ttl(lease_id) is not None and self.last_lease_gone


def _compare(c):
    msg = etcdrpc.Compare(key=wire(c["key"]), target=_TARGETS[c["target"]],
                          result=_RESULTS[c["cmp"]])
    if c["target"] == "value":
        msg.value = wire(c["value"])
    elif c["target"] == "mod_rev":
        msg.mod_revision = c["value"]
    elif c["target"] == "create_rev":
        msg.create_revision = c["value"]
    else:
        msg.version = c["value"]
    return msg


def _request_op(o):
    if o["op"] == "get":
        return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=wire(o["key"])))
    if o["op"] == "delete":
        return etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=wire(o["key"])))
    return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
        key=wire(o["key"]), value=wire(o["value"]), lease=o.get("lease", 0)))


def _op_result(r):
    kind = r.WhichOneof("response")
    if kind == "response_range":
        return kv_result(r.response_range.kvs[0]) if r.response_range.kvs else {"found": False}
    if kind == "response_delete_range":
        return {"deleted": r.response_delete_range.deleted}
    return {}


class WatchRecorder:
    """One watcher on [key, range_end) from start_rev, on a stream of its own.
    Records every event, every progress notification, and every reconnect
    (after a broken stream, or when reconnect() is called), resuming after the
    last revision received. stop() writes the watcher's line."""

    def __init__(self, history, client_id, host, port, key, range_end=None, start_rev=1,
                 progress_notify=True, others=()):
        self.h = history
        self.id = client_id
        # Where the stream goes: the first target, then, after each break, the
        # next of `others` ("host:port" of other members) in turn.
        self.targets = ["%s:%d" % (host, port)] + list(others)
        self.key, self.range_end = key, range_end
        self.start_rev = start_rev
        self.progress_notify = progress_notify
        self.events = []
        self.last_rev = start_rev - 1
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._reqs = None  # the open stream's request queue
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._entry = None

    def start(self):
        self._entry = self.h.begin(self.id, "watch", key=self.key, range_end=self.range_end,
                                   start_rev=self.start_rev)
        if self.range_end is None:
            del self._entry["range_end"]
        self._thread.start()

    def _stream(self, channel, start):
        create = etcdrpc.WatchCreateRequest(key=wire(self.key), start_revision=start,
                                            progress_notify=self.progress_notify)
        if self.range_end is not None:
            create.range_end = wire(self.range_end)
        reqs = queue.Queue()
        reqs.put(etcdrpc.WatchRequest(create_request=create))

        def requests():
            while True:
                r = reqs.get()
                if r is None:
                    return
                yield r
        stub = etcdrpc.WatchStub(channel)
        call = stub.Watch(requests())
        with self._lock:
            self._call = call
            self._reqs = reqs
        try:
            for rs in call:
                if rs.created or rs.canceled:
                    continue
                with self._lock:
                    if not rs.events:
                        self.events.append({"type": "progress", "rev": rs.header.revision})
                    for ev in rs.events:
                        d = {"type": "delete" if ev.type == 1 else "put",
                             "key": text(ev.kv.key), "mod_rev": ev.kv.mod_revision}
                        if ev.type != 1:
                            d.update(value=text(ev.kv.value), create_rev=ev.kv.create_revision,
                                     version=ev.kv.version)
                        self.events.append(d)
                        self.last_rev = max(self.last_rev, ev.kv.mod_revision)
        except grpc.RpcError:
            pass
        finally:
            with self._lock:
                self._reqs = None
            reqs.put(None)

    def _run(self):
        start = self.start_rev
        n = 0
        while not self._stop.is_set():
            with grpc.insecure_channel(self.targets[n % len(self.targets)]) as channel:
                self._stream(channel, start)
            n += 1
            if self._stop.is_set():
                break
            with self._lock:
                start = self.last_rev + 1
                self.events.append({"type": "reconnect", "start_rev": start})
            time.sleep(0.05)

    def request_progress(self):
        """Asks the server for a progress notification (etcd 3.4's
        WatchRequest.progress_request, field 3, which python-etcd3's protos
        predate: sent as that field's bytes)."""
        req = etcdrpc.WatchRequest()
        req.ParseFromString(b"\x1a\x00")
        with self._lock:
            if self._reqs is not None:
                self._reqs.put(req)

    def reconnect(self):
        """Breaks the stream; the watcher resumes after its last event."""
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def stop(self):
        self._stop.set()
        self.reconnect()
        self._thread.join(10)
        with self._lock:
            self.h.finish(self._entry, "ok", events=list(self.events))


def lincheck_binary():
    """The checker built next to the server under test (QUOIN_BIN's build
    directory), else the sanitizer build, made on demand."""
    if "QUOIN_BIN" in os.environ:
        path = os.path.join(os.path.dirname(os.environ["QUOIN_BIN"]), "tests", "chaos",
                            "lincheck")
        if os.access(path, os.X_OK):
            return path
    path = os.path.join(ROOT, "build-san", "tests", "chaos", "lincheck")
    subprocess.run(["make", "--no-print-directory", "MODE=san", "build-san/tests/chaos/lincheck"],
                   cwd=ROOT, check=True, capture_output=True)
    return path


def run_lincheck(history_path, *args, timeout=300):
    """Runs the checker on a history; returns (exit code, report text)."""
    r = subprocess.run([lincheck_binary()] + list(args) + [history_path], capture_output=True,
                       text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr
