"""The members of a chaos run: real quoin (or etcd 3.4) processes, each with
its data directory and log under the run's work directory, started through
the network's wrapper (a namespace, or plain loopback), and signalled by PID
only.

Power cut (quoin's test build only): a member started with
QUOIN_TEST_SYNC_MARK=<file> rewrites that file after every fdatasync of its
WAL with "<segment> <durable bytes>", and with QUOIN_TEST_DB_SYNCED=<file>
keeps there a copy of its key space (LMDB, which commits without syncing) as
of its last sync: a checkpoint every --snapshot-count entries, or an installed
raft snapshot. power_cut() kills the member with SIGKILL, then takes its disk
back to what a power loss leaves: the WAL cut at the mark (later segments
deleted, the rest of the marked one zeroed) and the key space put back to
that copy (removed when it was never synced), so the member replays its WAL
from the checkpoint on restart. A real power loss may keep some later LMDB
pages too; keeping none of them is the worst case.
"""
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import grpc
from etcd3 import etcdrpc

from qtest import ROOT, clean_env, quoin_bin

ETCD = "/usr/bin/etcd"


def quoin_binaries():
    """(release, test build) paths of the server."""
    san = quoin_bin().replace("/build/", "/build-san/")
    if "/build-san/" not in san:
        san = os.path.join(ROOT, "build-san", "quoin")
    release = san.replace("/build-san/", "/build/")
    return release, san


class Member:
    def __init__(self, cluster, i):
        self.c = cluster
        self.i = i
        # The slot (m1, m2...) keeps its peer URL, data directory and log
        # through membership faults; the name is the current member's (a
        # replacement gets a new one).
        self.slot = "m%d" % (i + 1)
        self.name = self.slot
        self.data_dir = os.path.join(cluster.workdir, self.slot + ".data")
        self.log_path = os.path.join(cluster.workdir, self.slot + ".log")
        self.mark_path = os.path.join(cluster.workdir, self.slot + ".syncmark")
        self.synced_db_path = os.path.join(cluster.workdir, self.slot + ".dbsynced")
        self.initial_cluster = None  # the cluster's bootstrap list, until it rejoins
        self.cluster_state = "new"
        self.removed = False  # out of the cluster (a membership fault): not checked
        self.generation = 0  # replacements so far
        self.proc = None
        self.log = None
        self.binary = None
        self.started_at = 0.0
        self.expect_exit = False  # a fault made it stop on purpose
        self.paused = False

    @property
    def endpoint(self):
        return self.c.net.client_endpoint(self.i)

    def argv(self, binary):
        net = self.c.net
        a = [binary,
             "--name", self.name,
             "--data-dir", self.data_dir,
             "--listen-client-urls", net.listen_client_url(self.i),
             "--advertise-client-urls", net.listen_client_url(self.i),
             "--listen-peer-urls", net.listen_peer_url(self.i),
             "--initial-advertise-peer-urls", net.peer_url(self.i),
             "--initial-cluster", self.initial_cluster or self.c.initial_cluster,
             "--initial-cluster-state", self.cluster_state,
             "--initial-cluster-token", self.c.token,
             "--heartbeat-interval", "100",
             "--election-timeout", "1000"]
        if self.c.target == "etcd":
            a += ["--experimental-watch-progress-notify-interval", "1s"]
        if self.c.snapshot_count:
            a += ["--snapshot-count", str(self.c.snapshot_count)]
        return a

    def start(self, binary=None, env=None):
        """Starts the member (the run's binary unless told); returns at once."""
        self.binary = binary or self.c.binary
        e = clean_env()
        if self.c.target == "quoin" and self.binary == self.c.san_binary:
            e["QUOIN_TEST_SYNC_MARK"] = self.mark_path
            e["QUOIN_TEST_DB_SYNCED"] = self.synced_db_path
            e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
            if self.c.bug:
                e["QUOIN_BUG"] = self.c.bug
        e.update(env or {})
        self.log = open(self.log_path, "ab")
        self.log.write(("\n=== %s start %s %s%s\n" % (
            time.strftime("%H:%M:%S"), self.name, os.path.basename(self.binary),
            "".join(" %s=%s" % kv for kv in sorted((env or {}).items())))).encode())
        self.log.flush()
        # A session of its own: a Ctrl-C at the terminal reaches the harness
        # only, which then stops every member itself, by PID.
        self.proc = subprocess.Popen(self.c.net.wrap(self.i, self.argv(self.binary)),
                                     stdout=self.log, stderr=self.log, env=e,
                                     start_new_session=True)
        self.started_at = time.monotonic()
        self.expect_exit = False
        self.paused = False
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL by PID, and reaped."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.paused = False
        if self.log:
            self.log.close()
            self.log = None
        return self.proc.returncode

    def pause(self):
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.signal(signal.SIGCONT)
        self.paused = False

    def wait_ready(self, timeout=30):
        host, port = self.endpoint
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                urllib.request.urlopen("http://%s:%d/version" % (host, port), timeout=1).read()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def power_cut(self):
        """Kills the member and leaves its disk as a power loss would (see
        the module's comment). Returns a short description of what was cut."""
        self.kill()
        wal_dir = os.path.join(self.data_dir, "wal")
        try:
            with open(self.mark_path) as f:
                seg, off = f.read().split()
            off = int(off)
        except (OSError, ValueError):
            return "no sync mark: disk left as it was"
        cut = 0
        for name in sorted(os.listdir(wal_dir)):
            path = os.path.join(wal_dir, name)
            if not name.endswith(".wal"):
                continue
            if name > seg:
                cut += os.path.getsize(path)
                os.unlink(path)
            elif name == seg:
                size = os.path.getsize(path)
                cut += _written_bytes(path, off)
                os.truncate(path, off)  # what follows reads as zeros, as preallocated space
                os.truncate(path, size)
        for name in ("db", "db-lock"):
            try:
                os.unlink(os.path.join(self.data_dir, name))
            except FileNotFoundError:
                pass
        if os.path.exists(self.synced_db_path):
            shutil.copyfile(self.synced_db_path, os.path.join(self.data_dir, "db"))
            kept = "key space back to its last sync"
        else:
            kept = "key space never synced: rebuilt from the WAL"
        return "WAL cut at %s+%d (%d unsynced bytes lost), %s" % (
            seg[:16].lstrip("0") or "0", off, cut, kept)

    def dump_stacks(self):
        """Writes every thread's stack of the running member (gdb, when
        installed) next to its log; returns a note naming the file, or ""."""
        if self.proc is None or self.proc.poll() is not None or not shutil.which("gdb"):
            return ""
        path = os.path.join(self.c.workdir, "%s.stacks.%d.txt" % (self.slot, self.proc.pid))
        with open(path, "wb") as f:
            subprocess.run(["gdb", "-p", str(self.proc.pid), "-batch", "-ex",
                            "thread apply all bt"], stdout=f, stderr=subprocess.STDOUT,
                           timeout=60, check=False)
        return " (its threads' stacks: %s)" % path

    def wipe(self):
        """Deletes the data directory (and its sync mark): a lost disk."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        for path in (self.mark_path, self.synced_db_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def log_lines(self):
        """The log of the member's current (or last) process: the lines after
        the last start marker."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return text[text.rfind("\n=== ") + 1:].splitlines()

    def log_tail(self, lines=15):
        return self.log_lines()[-lines:]


def _written_bytes(path, off):
    """Non-zero bytes after off (what the cut throws away), roughly."""
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(8 << 20)
    return len(data.rstrip(b"\0"))


class Cluster:
    def __init__(self, opts, net, workdir):
        self.net = net
        self.workdir = workdir
        self.target = opts.target
        self.bug = opts.bug
        self.token = "chaos-%d" % os.getpid()
        self.release_binary, self.san_binary = quoin_binaries()
        if self.target == "etcd":
            self.binary = ETCD
        else:
            self.binary = self.san_binary if opts.san else self.release_binary
        self.snapshot_count = opts.snapshot_count
        self.members = [Member(self, i) for i in range(opts.members)]
        self.initial_cluster = ",".join(
            "%s=%s" % (m.name, net.peer_url(m.i)) for m in self.members)

    def start(self):
        for m in self.members:
            m.start()
        for m in self.members:
            if not m.wait_ready():
                raise RuntimeError("%s did not start:\n%s" % (m.name, "\n".join(m.log_tail())))
        ids = self.member_ids()
        self.net.set_member_ids(ids)
        deadline = time.monotonic() + 30
        while self.leader(ids) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no leader elected in 30s")
            time.sleep(0.2)

    def _stub(self, m, kind):
        host, port = m.endpoint
        ch = grpc.insecure_channel("%s:%d" % (host, port))
        return ch, kind(ch)

    def live(self):
        """The members in the cluster now (a membership fault may hold one out)."""
        return [m for m in self.members if not m.removed]

    def member_ids(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.live():
                ch, stub = self._stub(m, etcdrpc.ClusterStub)
                try:
                    r = stub.MemberList(etcdrpc.MemberListRequest(), timeout=2)
                    names = {x.name: x.ID for x in r.members}
                    if all(mm.name in names for mm in self.live()):
                        return {names[mm.name]: mm.i for mm in self.live()}
                except grpc.RpcError:
                    pass
                finally:
                    ch.close()
            time.sleep(0.2)
        raise RuntimeError("the members never listed each other")

    def status(self, m, timeout=1):
        """(member id, leader id, raft term, revision), or None."""
        if not m.alive() or m.paused:
            return None
        ch, stub = self._stub(m, etcdrpc.MaintenanceStub)
        try:
            r = stub.Status(etcdrpc.StatusRequest(), timeout=timeout)
            return r.header.member_id, r.leader, r.raftTerm, r.header.revision
        except grpc.RpcError:
            return None
        finally:
            ch.close()

    def leader(self, ids):
        """The index of the member most others call leader, or None."""
        votes = {}
        for m in self.members:
            st = self.status(m)
            if st and st[1]:
                votes[st[1]] = votes.get(st[1], 0) + 1
        if not votes:
            return None
        best = max(votes, key=votes.get)
        return ids.get(best)

    def hash_kv(self, m, rev):
        ch, stub = self._stub(m, etcdrpc.MaintenanceStub)
        try:
            return stub.HashKV(etcdrpc.HashKVRequest(revision=rev), timeout=5).hash
        except grpc.RpcError as e:
            return "error: %s" % e.code().name
        finally:
            ch.close()

    def revision(self, m):
        """The member's own revision (a serializable read), or None."""
        ch, stub = self._stub(m, etcdrpc.KVStub)
        try:
            r = stub.Range(etcdrpc.RangeRequest(key=b"\0", serializable=True), timeout=2)
            return r.header.revision
        except grpc.RpcError:
            return None
        finally:
            ch.close()

    def _change(self, via, call, timeout):
        """Runs call(ClusterStub) through the members via() lists, one after
        another, until one answers or `timeout` passes.
        Returns (response, None) or (None, the last error's text)."""
        deadline = time.monotonic() + timeout
        last = "no member to ask"
        while time.monotonic() < deadline:
            for m in via():
                if not m.alive() or m.paused:
                    continue
                ch, stub = self._stub(m, etcdrpc.ClusterStub)
                try:
                    return call(stub), None
                except grpc.RpcError as e:
                    last = "%s: %s" % (e.code().name, e.details())
                    if "member not found" in last or "Peer URLs already exists" in last:
                        return None, last
                finally:
                    ch.close()
            time.sleep(0.5)
        return None, last

    def member_remove(self, member_id, skip, timeout=40):
        """MemberRemove through a live member other than index `skip`; retried
        while the cluster refuses (a strict reconfiguration check) or times
        out. Returns None when done, else the last error."""
        resp, err = self._change(
            lambda: [m for m in self.live() if m.i != skip],
            lambda st: st.MemberRemove(etcdrpc.MemberRemoveRequest(ID=member_id), timeout=8),
            timeout)
        if resp is not None or (err and "member not found" in err):
            return None  # not found: an earlier attempt that timed out was applied
        return err

    def member_add(self, m, name, timeout=40):
        """MemberAdd of slot m's peer URL through a live member, retried as
        member_remove. Returns (new id, the --initial-cluster to start it
        with, as `etcdctl member add` prints it), or (None, the last error)."""
        url = self.net.peer_url(m.i)
        resp, err = self._change(
            lambda: [x for x in self.live() if x.i != m.i],
            lambda st: st.MemberAdd(etcdrpc.MemberAddRequest(peerURLs=[url]), timeout=8),
            timeout)
        if resp is not None:
            new_id, members = resp.member.ID, resp.members
        elif err and "Peer URLs already exists" in err:
            # An earlier attempt that timed out was applied: the member list
            # says which id it got (the unstarted one with that URL).
            members = self._members()
            new = [x for x in members if url in x.peerURLs and not x.name]
            if not new:
                return None, err
            new_id = new[0].ID
        else:
            return None, err
        conf = ["%s=%s" % (name if x.ID == new_id else x.name, u)
                for x in members for u in x.peerURLs]
        return new_id, ",".join(conf)

    def wait_listed(self, member_id, timeout=10):
        """Waits until every live member (each answers MemberList from its own
        store) lists member_id. A new member asks the members of its
        --initial-cluster for the member list and stops ("member count is
        unequal") if the one it asks has not applied its addition yet, as
        etcd does: an operator checks `etcdctl member list` first."""
        deadline = time.monotonic() + timeout
        pending = [m for m in self.live() if m.alive()]
        while pending and time.monotonic() < deadline:
            for m in list(pending):
                ch, stub = self._stub(m, etcdrpc.ClusterStub)
                try:
                    r = stub.MemberList(etcdrpc.MemberListRequest(), timeout=2)
                    if any(x.ID == member_id for x in r.members):
                        pending.remove(m)
                except grpc.RpcError:
                    pass
                finally:
                    ch.close()
            if pending:
                time.sleep(0.2)
        return not pending

    def _members(self):
        resp, _ = self._change(self.live, lambda st: st.MemberList(
            etcdrpc.MemberListRequest(), timeout=3), 10)
        return resp.members if resp is not None else []

    def stop(self):
        for m in self.members:
            m.kill()
