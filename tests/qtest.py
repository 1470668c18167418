"""Helpers of the process-level tests: the quoin binary, free ports below
32768 on 127.0.0.1, and quoin processes that are always stopped by PID.
(A module of its own, not conftest.py, so tests can import it by a name no
other folder's conftest shadows.)"""
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quoin_bin():
    return os.environ.get("QUOIN_BIN", os.path.join(ROOT, "build", "quoin"))


def quoin_release_bin():
    """The optimised build next to the sanitizer one: memory measurements mean
    nothing under AddressSanitizer, whose quarantine holds freed memory."""
    path = quoin_bin().replace("/build-san/", "/build/")
    return path if os.path.exists(path) else quoin_bin()


def free_port():
    """A port in 20000-29999 that nothing listens on right now. Ports above
    32768 are handed out to outgoing connections, so they are avoided."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port found in 20000-29999")


def clean_env():
    """The environment without ETCD_* variables, so a developer's shell does
    not change what a test sees."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


class Server:
    """One quoin process on 127.0.0.1 with its own data directory."""

    def __init__(self, tmp_path, name="default", extra=(), env=None, binary=None, peer_port=None,
                 initial_cluster=None):
        self.client_port = free_port()
        self.peer_port = peer_port or free_port()
        self.data_dir = str(tmp_path / (name + ".quoin"))
        self.client_url = "http://127.0.0.1:%d" % self.client_port
        self.args = [
            binary or quoin_bin(),
            "--name", name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
            "--initial-cluster", initial_cluster or "%s=http://127.0.0.1:%d" % (name, self.peer_port),
        ] + list(extra)
        self.env = env if env is not None else clean_env()
        self.log_path = str(tmp_path / (name + ".log"))
        self.proc = None
        self.cwd = None

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log, env=self.env,
                                     cwd=self.cwd)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("quoin exited with %d:\n%s" % (self.proc.returncode, self.logs()))
            try:
                urllib.request.urlopen(self.client_url + "/version", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("quoin did not answer /version in %ds:\n%s" % (timeout, self.logs()))

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Stops the process by PID and returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Cluster:
    """n quoin members (m0, m1, ...) of one new cluster on 127.0.0.1, started
    together. stop() kills every member still running."""

    def __init__(self, tmp_path, n=3, binary=None):
        peers = [free_port() for _ in range(n)]
        initial = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(peers))
        self.members = [Server(tmp_path, name="m%d" % i, binary=binary, peer_port=peers[i],
                               initial_cluster=initial) for i in range(n)]

    def start(self):
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        return self

    def endpoint(self, i):
        return "127.0.0.1:%d" % self.members[i].client_port

    def leader(self, timeout=10):
        """The index of the member that every running member names as leader."""
        import grpc  # only the cluster tests need these
        from etcd3 import etcdrpc
        deadline = time.time() + timeout
        while time.time() < deadline:
            leaders, ids = set(), {}
            for i, m in enumerate(self.members):
                if m.proc is None or m.proc.poll() is not None:
                    continue
                with grpc.insecure_channel("127.0.0.1:%d" % m.client_port) as ch:
                    try:
                        st = etcdrpc.MaintenanceStub(ch).Status(etcdrpc.StatusRequest(), timeout=1)
                    except grpc.RpcError:
                        leaders.add(0)
                        continue
                leaders.add(st.leader)
                ids[st.header.member_id] = i
            if len(leaders) == 1 and 0 not in leaders and next(iter(leaders)) in ids:
                return ids[next(iter(leaders))]
            time.sleep(0.1)
        raise AssertionError("no leader agreed on within %ds" % timeout)

    def stop(self):
        for m in self.members:
            m.stop(signal.SIGKILL)


def run_quoin(args, env=None, timeout=20, cwd=None):
    """Runs quoin to completion (for commands expected to exit by themselves)."""
    return subprocess.run([quoin_bin()] + list(args), capture_output=True, text=True,
                          env=env if env is not None else clean_env(), timeout=timeout, cwd=cwd)
