"""The network of a chaos run, and the network faults on it.

Two ways to put members on a network the harness controls, with the same
interface (directed links between members that can be cut, delay, loss):

- NetnsNet: each member in a network namespace of its own, joined by veth
  pairs to a bridge the harness makes (10.x.y.0/24; the bridge holds .254, the
  address clients come from). Links are cut with nftables rules in the
  receiving member's namespace (packets from the sender are dropped), loss is
  an nftables random drop on the peer port, delay is `tc netem` on the
  member's veth (or, where the kernel has no netem, a `tc tbf` rate limit that
  delays traffic by queueing it: a slow link). Needs CAP_NET_ADMIN.
- ProxyNet: every member's peer port behind a TCP proxy on 127.0.0.1 that
  reads quoin's peer frames: the HELLO frame names the sending member, so each
  directed link can be cut (its messages dropped), delayed or made lossy one
  message at a time. Needs nothing but loopback; understands quoin's peer
  protocol only (etcd's is HTTP: there the proxy forwards bytes unchanged and
  the harness injects no network fault).

Everything made is named after a tag (qch-<pid>) and removed by that name;
no process is ever killed here.
"""
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections import deque

from qtest import free_port

CLIENT_PORT = 2379
PEER_PORT = 2380


def _run(argv, check=True, stdin=None):
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))
    return r


class NetnsNet:
    kind = "netns"

    def __init__(self, n, tag):
        self.n = n
        self.tag = tag  # qch-<pid>
        short = tag.replace("-", "")  # interface names: at most 15 bytes
        self.bridge = short + "br"
        self.ns = ["%s-n%d" % (tag, i + 1) for i in range(n)]
        self.veth_host = ["%sh%d" % (short, i + 1) for i in range(n)]
        self.veth_ns = ["%sn%d" % (short, i + 1) for i in range(n)]
        self.made_ns = []
        self.made_bridge = False
        self.subnet = None
        self.netem = False
        self.nft = _has("nft")
        self.blocked = set()
        self.loss = {}

    @staticmethod
    def available(tag):
        """Whether namespaces, veth pairs and bridges can be made here."""
        if os.geteuid() != 0 or not _has("ip"):
            return False
        probe = tag + "-probe"
        made = _run(["ip", "netns", "add", probe], check=False).returncode == 0
        _run(["ip", "netns", "del", probe], check=False)
        return made

    @staticmethod
    def remove_stale():
        """Removes the namespaces and bridges of earlier runs whose harness
        died without cleaning up (killed with SIGKILL): only names of this
        harness's pattern whose PID no longer exists."""
        gone = []
        for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
            m = re.match(r"^(qch-(\d+)-(n\d+|probe))\b", line)
            if m and not _pid_alive(int(m.group(2))):
                _run(["ip", "netns", "del", m.group(1)], check=False)
                gone.append(m.group(1))
        for line in _run(["ip", "-o", "link", "show", "type", "bridge"],
                         check=False).stdout.splitlines():
            m = re.match(r"^\d+: (qch(\d+)br)[:@]", line)
            if m and not _pid_alive(int(m.group(2))):
                _run(["ip", "link", "del", m.group(1)], check=False)
                gone.append(m.group(1))
        return gone

    def _pick_subnet(self):
        used = _run(["ip", "-o", "-4", "addr"], check=False).stdout
        rng = random.Random(os.getpid())
        for _ in range(100):
            net = "10.%d.%d" % (rng.randint(100, 250), rng.randint(0, 250))
            if (" %s." % net) not in used:
                return net
        raise RuntimeError("no free 10.x.y.0/24 subnet")

    def setup(self):
        self.subnet = self._pick_subnet()
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.made_bridge = True
        _run(["ip", "addr", "add", "%s.254/24" % self.subnet, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i in range(self.n):
            ns = self.ns[i]
            _run(["ip", "netns", "add", ns])
            self.made_ns.append(ns)
            _run(["ip", "link", "add", self.veth_host[i], "type", "veth", "peer", "name",
                  self.veth_ns[i]])
            _run(["ip", "link", "set", self.veth_ns[i], "netns", ns])
            _run(["ip", "link", "set", self.veth_host[i], "master", self.bridge, "up"])
            ex = ["ip", "netns", "exec", ns]
            _run(ex + ["ip", "addr", "add", "%s/24" % self.host(i), "dev", self.veth_ns[i]])
            _run(ex + ["ip", "link", "set", self.veth_ns[i], "up"])
            _run(ex + ["ip", "link", "set", "lo", "up"])
        ex = ["ip", "netns", "exec", self.ns[0], "tc", "qdisc"]
        if _run(ex + ["add", "dev", self.veth_ns[0], "root", "netem", "delay", "1ms"],
                check=False).returncode == 0:
            self.netem = True
            _run(ex + ["del", "dev", self.veth_ns[0], "root"], check=False)

    def host(self, i):
        return "%s.%d" % (self.subnet, i + 1)

    def client_endpoint(self, i):
        return self.host(i), CLIENT_PORT

    def listen_client_url(self, i):
        return "http://%s:%d" % (self.host(i), CLIENT_PORT)

    def listen_peer_url(self, i):
        return "http://%s:%d" % (self.host(i), PEER_PORT)

    peer_url = listen_peer_url

    def wrap(self, i, argv):
        """The command that runs argv in member i's namespace (ip netns exec
        execs it: the PID is the member's own)."""
        return ["ip", "netns", "exec", self.ns[i]] + list(argv)

    def set_member_ids(self, ids):
        pass

    def supports(self, fault):
        if fault == "loss":
            return self.nft
        if fault.startswith("partition"):
            return self.nft
        return fault == "delay" and _has("tc")

    def delay_kind(self):
        return "netem" if self.netem else "tbf-slow-link"

    def _apply_nft(self, i):
        rules = ["ip saddr %s drop" % self.host(s) for (s, d) in sorted(self.blocked) if d == i]
        pct = self.loss.get(i, 0)
        if pct:
            rules += ["tcp dport %d numgen random mod 100 < %d drop" % (PEER_PORT, pct),
                      "tcp sport %d numgen random mod 100 < %d drop" % (PEER_PORT, pct)]
        body = "".join("    %s\n" % r for r in rules)
        text = ("table inet qch\ndelete table inet qch\n"
                "table inet qch {\n  chain in {\n    type filter hook input priority 0; "
                "policy accept;\n%s  }\n}\n" % body)
        _run(["ip", "netns", "exec", self.ns[i], "nft", "-f", "-"], stdin=text)

    def set_blocked(self, blocked):
        """Cuts exactly the directed links (src, dst) in blocked: dst no
        longer receives anything src sends."""
        old, self.blocked = self.blocked, set(blocked)
        for i in range(self.n):
            if {l for l in old if l[1] == i} != {l for l in self.blocked if l[1] == i}:
                self._apply_nft(i)

    def set_loss(self, i, pct):
        self.loss[i] = pct
        self._apply_nft(i)

    def set_delay(self, i, ms):
        ex = ["ip", "netns", "exec", self.ns[i], "tc", "qdisc"]
        if not ms:
            _run(ex + ["del", "dev", self.veth_ns[i], "root"], check=False)
        elif self.netem:
            _run(ex + ["replace", "dev", self.veth_ns[i], "root", "netem", "delay", "%dms" % ms,
                       "%dms" % (ms // 4)])
        else:
            # No netem in this kernel: a slow link (128 kbit/s, up to a
            # second of queue) delays whatever the member sends under load.
            _run(ex + ["replace", "dev", self.veth_ns[i], "root", "tbf", "rate", "128kbit",
                       "burst", "4kb", "latency", "%dms" % max(ms, 200)])

    def clear(self):
        self.set_blocked(set())
        for i in range(self.n):
            if self.loss.get(i):
                self.set_loss(i, 0)
            self.set_delay(i, 0)

    def close(self):
        """Removes the namespaces and the bridge it made, by name (a veth
        pair goes with its namespace)."""
        for ns in self.made_ns:
            _run(["ip", "netns", "del", ns], check=False)
        self.made_ns = []
        if self.made_bridge:
            _run(["ip", "link", "del", self.bridge], check=False)
            self.made_bridge = False


def _pid_alive(pid):
    return os.path.exists("/proc/%d" % pid)


def _has(cmd):
    return any(os.access(os.path.join(d, cmd), os.X_OK)
               for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"])


# ---- the loopback proxy ----

_FRAME_HDR = 8
_F_HELLO, _F_MSG = 1, 3


class _Link:
    """One proxied connection: dialer -> member (frames, faults applied) and
    member -> dialer (bytes, unchanged)."""

    def __init__(self, proxy, up, down):
        self.p = proxy
        self.up, self.down = up, down
        self.sender = None  # the dialling member's id, from its HELLO
        self.kind = 0
        self.queue = deque()
        self.cv = threading.Condition()
        self.closed = False

    def start(self):
        for fn in (self._read_up, self._send_down, self._read_down):
            threading.Thread(target=fn, daemon=True).start()

    def close(self):
        with self.cv:
            if self.closed:
                return
            self.closed = True
            self.cv.notify_all()
        for s in (self.up, self.down):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _read_up(self):
        buf = b""
        raw = False
        try:
            while not self.closed:
                data = self.up.recv(65536)
                if not data:
                    break
                if raw:
                    self._queue(data, 0)
                    continue
                buf += data
                if not buf.startswith(b"qr"[:len(buf)]):
                    raw = True  # not quoin's peer protocol: bytes through, no faults
                    self._queue(buf, 0)
                    buf = b""
                    continue
                while len(buf) >= _FRAME_HDR:
                    (flen,) = struct.unpack(">I", buf[4:8])
                    if len(buf) < _FRAME_HDR + flen:
                        break
                    frame, buf = buf[:_FRAME_HDR + flen], buf[_FRAME_HDR + flen:]
                    if not self._frame(frame[3], frame):
                        return
        except OSError:
            pass
        finally:
            self.close()

    def _frame(self, ftype, frame):
        """Decides one frame's fate; False closes the connection."""
        if ftype == _F_HELLO and len(frame) >= _FRAME_HDR + 25:
            (self.sender,) = struct.unpack(">Q", frame[_FRAME_HDR + 8:_FRAME_HDR + 16])
            self.kind = frame[_FRAME_HDR + 24]
        dst = self.p.index
        src = self.p.ids.get(self.sender)
        if src is not None and (src, dst) in self.p.net.blocked:
            return self.kind == 0  # a stream's frames vanish; a snapshot stream fails
        if ftype == _F_MSG and self.kind == 0 and random.random() * 100 < self.p.net.loss.get(dst, 0):
            return True
        self._queue(frame, self.p.net.delay.get(dst, 0))
        return True

    def _queue(self, data, delay_ms):
        with self.cv:
            due = time.monotonic() + (delay_ms * random.uniform(0.75, 1.25)) / 1000.0
            if self.queue:
                due = max(due, self.queue[-1][0])  # a stream keeps its order
            self.queue.append((due, data))
            self.cv.notify()

    def _send_down(self):
        try:
            while True:
                with self.cv:
                    while not self.closed and not self.queue:
                        self.cv.wait()
                    if self.closed:
                        return
                    due, data = self.queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self.cv.wait(wait)
                        continue
                    self.queue.popleft()
                self.down.sendall(data)
        except OSError:
            self.close()

    def _read_down(self):
        try:
            while not self.closed:
                data = self.down.recv(65536)
                if not data:
                    break
                self.up.sendall(data)
        except OSError:
            pass
        finally:
            self.close()


class _Proxy:
    """Listens on one member's advertised peer port, forwards to its real one."""

    def __init__(self, net, index, listen_port, target_port):
        self.net, self.index = net, index
        self.target = target_port
        self.ids = net.ids
        self.links = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", listen_port))
        self.sock.listen(64)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                up, _ = self.sock.accept()
            except OSError:
                return
            try:
                down = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                down.settimeout(None)
            except OSError:
                up.close()
                continue
            for s in (up, down):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, up, down)
            self.links = [x for x in self.links if not x.closed] + [link]
            link.start()

    def close(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for link in self.links:
            link.close()


class ProxyNet:
    kind = "proxy"

    def __init__(self, n, tag):
        self.n = n
        self.tag = tag
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.proxy_ports = [free_port() for _ in range(n)]
        self.ids = {}
        self.blocked = set()
        self.loss = {}
        self.delay = {}
        self.proxies = []

    def setup(self):
        self.proxies = [_Proxy(self, i, self.proxy_ports[i], self.peer_ports[i])
                        for i in range(self.n)]

    def client_endpoint(self, i):
        return "127.0.0.1", self.client_ports[i]

    def listen_client_url(self, i):
        return "http://127.0.0.1:%d" % self.client_ports[i]

    def listen_peer_url(self, i):
        return "http://127.0.0.1:%d" % self.peer_ports[i]

    def peer_url(self, i):
        return "http://127.0.0.1:%d" % self.proxy_ports[i]

    def wrap(self, i, argv):
        return list(argv)

    def set_member_ids(self, ids):
        """Member id -> index, so that a HELLO names its link's source."""
        self.ids.clear()
        self.ids.update(ids)

    def supports(self, fault):
        return fault == "delay" or fault == "loss" or fault.startswith("partition")

    def delay_kind(self):
        return "proxy"

    def set_blocked(self, blocked):
        self.blocked = set(blocked)

    def set_loss(self, i, pct):
        self.loss[i] = pct

    def set_delay(self, i, ms):
        self.delay[i] = ms

    def clear(self):
        self.blocked = set()
        self.loss.clear()
        self.delay.clear()

    def close(self):
        for p in self.proxies:
            p.close()
        self.proxies = []
