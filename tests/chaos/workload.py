"""The clients of a chaos run, each recording into one history (history.py):

- key-value clients: random puts, linearizable gets, compare-and-swap txns on
  value or mod_revision (expectations from their own reads, so some match and
  some are stale), two-key txns, deletes and small ranges, on a few keys; a
  client whose call timed out or failed moves to the next member;
- lease clients: grant a lease with a chosen id and a short TTL, put a key on
  it, then revoke it or let it expire, watching TimeToLive until it is gone,
  and read the key;
- watchers: one on the whole prefix (it lets the checker learn the revision of
  timed-out writes), one on a single key, one on the lease keys, resuming
  after their last revision on another member whenever a stream breaks (and
  now and then on purpose).
"""
import random
import threading
import time

import etcd3

from history import Recorder, WatchRecorder, prefix_end


def random_kv_op(rec, rng, keys, seen, value):
    """One random operation of a key-value client through Recorder rec: a put,
    a get, a CAS on value or mod_revision (expectations from this client's own
    reads in `seen`, so some match and some are stale), a two-key txn, a delete
    or a small range. Every value written is the unique `value`."""
    k = rng.choice(keys)
    r = rng.random()
    if r < 0.2:
        rec.put(k, value)
    elif r < 0.5:
        resp = rec.get(k)
        if resp is not None and resp.kvs:
            seen[k] = (resp.kvs[0].value.decode("latin-1"), resp.kvs[0].mod_revision)
    elif r < 0.62 and k in seen:
        rec.cas(k, "value", seen[k][0], value)
    elif r < 0.74 and k in seen:
        rec.cas(k, "mod_rev", seen[k][1], value)
    elif r < 0.88:
        other = rng.choice([x for x in keys if x != k])
        rec.txn([{"key": k, "target": "version", "cmp": ">", "value": 0}],
                [{"op": "get", "key": k}, {"op": "put", "key": other, "value": value}],
                [{"op": "put", "key": k, "value": value}])
    elif r < 0.94:
        rec.delete(k)
    else:
        a, b = sorted(rng.sample(keys, 2))
        rec.range(a, b)


class Workload:
    def __init__(self, history, cluster, opts, rng):
        self.h = history
        self.c = cluster
        self.opts = opts
        self.rng = rng
        self.prefix = "chaos/"
        self.keys = [self.prefix + "k%d" % i for i in range(opts.keys)]
        self.lease_keys = [self.prefix + "lease/%d" % i for i in range(3)]
        self.stop = threading.Event()
        self.threads = []
        self.watchers = []
        self.leases = []  # every lease id granted, or maybe granted (timed out)
        self.lock = threading.Lock()

    def endpoint(self, i):
        return self.c.members[i % len(self.c.members)].endpoint

    def client(self, i):
        host, port = self.endpoint(i)
        return etcd3.client(host, port, timeout=self.opts.op_timeout)

    def start_revision(self):
        """The revision the watchers start after (the store's current one)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for m in self.c.members:
                rev = self.c.revision(m)
                if rev:
                    return rev
            time.sleep(0.2)
        raise RuntimeError("no member answers a read")

    def start(self):
        start = self.start_revision() + 1
        n = len(self.c.members)
        eps = ["%s:%d" % self.endpoint(i) for i in range(n)]
        specs = [("w-all", self.prefix, prefix_end(self.prefix)),
                 ("w-k0", self.keys[0], None),
                 ("w-lease", self.prefix + "lease/", prefix_end(self.prefix + "lease/"))]
        for j in range(self.opts.watchers):
            name, key, end = specs[j % len(specs)]
            name = "%s-%d" % (name, j)
            host, port = self.endpoint(j)
            others = eps[(j + 1) % n:] + eps[:(j + 1) % n]
            w = WatchRecorder(self.h, name, host, port, key, end, start, others=others)
            w.start()
            self.watchers.append(w)
        for i in range(self.opts.clients):
            self._spawn(self._kv_client, "c%d" % i, i)
        for i in range(self.opts.lease_clients):
            self._spawn(self._lease_client, "l%d" % i, i)
        if self.watchers:
            self._spawn(self._watch_hopper, "hop", 0)

    def _spawn(self, fn, name, i):
        seed = self.rng.randrange(1 << 30)
        t = threading.Thread(target=fn, args=(name, i, random.Random(seed)), daemon=True)
        t.start()
        self.threads.append(t)

    def _rotate(self, rec, state):
        state[0] += 1
        rec.rebind(self.client(state[0]))

    def _kv_client(self, name, i, rng):
        member = [i]
        rec = Recorder(self.h, name, self.client(i), timeout=self.opts.op_timeout)
        seen = {}
        n = 0
        while not self.stop.is_set():
            n += 1
            random_kv_op(rec, rng, self.keys, seen, "%s-%d" % (name, n))
            if rec.last_status != "ok":
                self._rotate(rec, member)
                time.sleep(rng.uniform(0.02, 0.1))

    def _lease_client(self, name, i, rng):
        member = [i]
        rec = Recorder(self.h, name, self.client(i), timeout=self.opts.op_timeout)
        n = 0
        while not self.stop.is_set():
            n += 1
            ttl = rng.choice([2, 3])
            lease = rng.randint(1, 2**62)
            granted = rec.lease_grant(ttl, lease)
            if rec.last_status != "fail":  # a refused grant made no lease to ask about
                with self.lock:
                    self.leases.append(lease)
            if granted is None:
                self._rotate(rec, member)
                continue
            key = rng.choice(self.lease_keys)
            rec.put(key, "%s-%d" % (name, n), lease=lease)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.1, 1.0))
                rec.lease_revoke(lease)
            else:
                until = time.monotonic() + ttl + 8
                while time.monotonic() < until and not self.stop.is_set():
                    ttl_left = rec.lease_ttl(lease)
                    if ttl_left is None:
                        self._rotate(rec, member)
                    elif rec.last_lease_gone:
                        break
                    time.sleep(0.4)
            rec.get(key)
            if rec.last_status != "ok":
                self._rotate(rec, member)

    def _watch_hopper(self, name, i, rng):
        """Asks the watchers for progress notifications, and breaks a stream
        now and then: it resumes on the next member."""
        hop = time.monotonic() + rng.uniform(3, 8)
        while not self.stop.wait(rng.uniform(0.3, 1.0)):
            rng.choice(self.watchers).request_progress()
            if time.monotonic() > hop:
                rng.choice(self.watchers).reconnect()
                hop = time.monotonic() + rng.uniform(3, 8)

    def finish(self, timeout=30):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)

    def lease_pass(self):
        """Records, for every lease tried, whether it is gone now."""
        host, port = self.c.live()[0].endpoint
        rec = Recorder(self.h, "lease-final", etcd3.client(host, port, timeout=5), timeout=5)
        for lease in self.leases:
            rec.lease_ttl(lease)

    def final_reads(self):
        """A linearizable read of the whole prefix through every member: each
        must hold every acknowledged write and no key of an ended lease."""
        for m in self.c.live():
            host, port = m.endpoint
            rec = Recorder(self.h, "final-%s" % m.name, etcd3.client(host, port, timeout=10),
                           timeout=10)
            for _ in range(3):
                if rec.range(self.prefix, prefix_end(self.prefix), final=True) is not None:
                    break
                time.sleep(1)

    def stop_watchers(self):
        """Gives the watchers time to catch up, and a progress notification
        each (it says how far they got), then stops them."""
        time.sleep(1.0)
        for w in self.watchers:
            w.request_progress()
        time.sleep(0.5)
        for w in self.watchers:
            w.stop()
