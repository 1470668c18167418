"""Differential testing with the real etcdctl: one script of etcdctl commands
runs against the real etcd 3.4 and against another server, and the normalised
outputs must be equal.

Normalising removes only what legitimately differs between two servers or two
runs: member, cluster and lease ids (renamed in order of first appearance),
ports, timings, database sizes, raft indexes, and etcdctl's own retry warnings.
Revisions, values, counts, error texts and exit codes are compared as they are.

Used by the tests in this folder, and by hand:
    /usr/bin/python3 tests/compat/etcdctl_diff.py --endpoint 127.0.0.1:2379
runs the script against a running server and against a real etcd it starts,
and prints a unified diff (exit 1 when they differ)."""
import argparse
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qtest import clean_env, free_port  # noqa: E402

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def start_etcd(tmpdir, extra=(), name="ref"):
    """Starts a single-member real etcd on free loopback ports; returns
    (process, endpoint). Stop it with stop_process."""
    port, peer = free_port(), free_port()
    data = os.path.join(tmpdir, "etcd-%d" % port)
    args = [ETCD, "--name", name, "--data-dir", data,
            "--listen-client-urls", "http://127.0.0.1:%d" % port,
            "--advertise-client-urls", "http://127.0.0.1:%d" % port,
            "--listen-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-cluster", "%s=http://127.0.0.1:%d" % (name, peer),
            "--logger", "zap", "--log-outputs", "stderr"] + list(extra)
    log = open(os.path.join(tmpdir, "etcd-%d.log" % port), "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=log, env=clean_env())
    endpoint = "127.0.0.1:%d" % port
    wait_healthy(proc, endpoint)
    return proc, endpoint


def start_etcd_cluster(tmpdir, n=3):
    """Starts n real etcd members named m0..m(n-1) on free loopback ports;
    returns (processes, client endpoints in name order)."""
    peers = [free_port() for _ in range(n)]
    cluster = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(peers))
    procs, endpoints = [], []
    for i in range(n):
        port = free_port()
        data = os.path.join(tmpdir, "etcd-m%d" % i)
        args = [ETCD, "--name", "m%d" % i, "--data-dir", data,
                "--listen-client-urls", "http://127.0.0.1:%d" % port,
                "--advertise-client-urls", "http://127.0.0.1:%d" % port,
                "--listen-peer-urls", "http://127.0.0.1:%d" % peers[i],
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peers[i],
                "--initial-cluster", cluster,
                "--logger", "zap", "--log-outputs", "stderr"]
        log = open(os.path.join(tmpdir, "etcd-m%d.log" % i), "wb")
        procs.append(subprocess.Popen(args, stdout=log, stderr=log, env=clean_env()))
        endpoints.append("127.0.0.1:%d" % port)
    for proc, endpoint in zip(procs, endpoints):
        wait_healthy(proc, endpoint)
    return procs, endpoints


def lead_with_first(endpoints, timeout=20):
    """Makes the first endpoint's member the leader (etcdctl move-leader),
    so that runs against two clusters see the same roles; returns the
    members as (name, id) in name order."""
    listed = json.loads(etcdctl(",".join(endpoints), ["member", "list", "-w", "json"]).stdout)
    members = sorted((m["name"], m["ID"]) for m in listed["members"])
    first = json.loads(etcdctl(endpoints[0], ["endpoint", "status", "-w", "json"]).stdout)
    first_id = first[0]["Status"]["header"]["member_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = json.loads(etcdctl(endpoints[0], ["endpoint", "status", "-w", "json"]).stdout)
        if st[0]["Status"].get("leader") == first_id:
            return members
        etcdctl(",".join(endpoints), ["move-leader", "%x" % first_id])
        time.sleep(0.2)
    raise RuntimeError("%s did not become leader" % endpoints[0])


def wait_healthy(proc, endpoint, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %d before answering" % proc.returncode)
        r = etcdctl(endpoint, ["endpoint", "health"], timeout=5)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("server at %s not healthy in %ds" % (endpoint, timeout))


def stop_process(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def etcdctl(endpoint, args, stdin=None, timeout=20):
    env = clean_env()
    env["ETCDCTL_API"] = "3"
    return subprocess.run([ETCDCTL, "--endpoints", endpoint, "--command-timeout=5s"] + args,
                          input=stdin, capture_output=True, text=True, env=env, timeout=timeout)


class Normaliser:
    """Renames what differs between servers and runs, consistently within one
    run: the first member id seen becomes <member-1>, and so on."""

    def __init__(self, endpoint, workdir, members=None):
        self.endpoint = endpoint
        self.workdir = workdir
        self.names = {}
        # A cluster: ids are random (derived from random ports), so members
        # are named in name order up front, and what depends on them (their
        # order in lists, the election's term) is made order-free.
        self.cluster = members is not None
        for _, member_id in members or ():
            self._name("id", int(member_id))

    def _name(self, kind, value):
        key = (kind, value)
        if key not in self.names:
            count = sum(1 for k in self.names if k[0] == kind) + 1
            self.names[key] = "<%s-%d>" % (kind, count)
        return self.names[key]

    def members_json(self, s):
        """Member lists come in id order, which differs between clusters."""
        try:
            doc = json.loads(s)
        except ValueError:
            return s
        if isinstance(doc, dict) and "members" in doc:
            doc["members"].sort(key=lambda m: m.get("name", ""))
            return json.dumps(doc, separators=(",", ":")) + "\n"
        return s

    def text(self, s):
        if self.cluster:
            s = self.members_json(s)
            # The election's term depends on split votes.
            s = re.sub(r'"(raft_term|raftTerm|RaftTerm)"\s*:\s*\d+', r'"\1":<term>', s)
        s = s.replace(self.endpoint, "<endpoint>").replace(self.workdir, "<dir>")
        s = re.sub(r"took = [0-9.]+[µmn]?s", "took = <t>", s)
        s = re.sub(r"http://127\.0\.0\.1:\d+", "<peer-url>", s)
        # Ids (member, cluster, lease) print in decimal in JSON and in hex
        # elsewhere; both spellings of one id get the same name.
        s = re.sub(r"remaining\(\d+s\)", "remaining(<n>s)", s)
        # etcd lists a lease's keys in Go map order, which varies run to run.
        s = re.sub(r"attached keys\(\[([^]]*)\]\)",
                   lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split())), s)
        s = re.sub(r'"(cluster_id|ClusterID|member_id|MemberID|ID|leader|id|lease)"\s*:\s*(\d+)',
                   lambda m: '"%s":%s' % (m.group(1), self._name("id", int(m.group(2)))), s)
        # Go prints hex ids without leading zeros: 12 to 16 digits.
        s = re.sub(r"\b[0-9a-f]{12,16}\b", lambda m: self._name("id", int(m.group(0), 16)), s)
        s = re.sub(r'"(dbSize|dbSizeInUse|raftIndex|raftAppliedIndex|totalSize)"\s*:\s*\d+',
                   lambda m: '"%s":<n>' % m.group(1), s)
        s = re.sub(r"\b\d+(\.\d+)? [kMG]?B\b", "<size>", s)
        # endpoint status tables: ..., is leader, is learner, term, raft index, applied index
        s = re.sub(r"(, (?:true|false), (?:true|false), \d+, )\d+, \d+,", r"\1<n>, <n>,", s)
        if self.cluster:
            s = re.sub(r"(, (?:true|false), (?:true|false), )\d+(, <n>, <n>,)", r"\1<term>\2", s)
        return s

    def stderr(self, s):
        keep = [l for l in s.splitlines() if not l.startswith('{"level":')]
        return self.text("\n".join(keep))


def run_script(endpoint, steps, workdir, members=None):
    """Runs the steps against one server; returns the normalised transcript as
    a list of lines. "{lease}" in a step's arguments stands for the id of the
    lease the last `lease grant` granted. members: the cluster's (name, id)
    pairs when endpoint is one member of several (see Normaliser)."""
    norm = Normaliser(endpoint, workdir, members)
    out = []
    lease = "0"
    for step in steps:
        kind = step[0]
        if kind == "ctl":
            args, stdin = step[1], step[2] if len(step) > 2 else None
            args = [a.replace("{dir}", workdir).replace("{lease}", lease) for a in args]
            r = etcdctl(endpoint, args, stdin=stdin)
            granted = re.search(r"lease ([0-9a-f]+) granted", r.stdout)
            if granted:
                lease = granted.group(1)
            out.append("$ etcdctl %s -> %d" % (" ".join(step[1]), r.returncode))
            lines = norm.text(r.stdout).splitlines()
            if norm.cluster and step[1][:2] == ["member", "list"]:
                lines.sort()
            out.extend(lines)
            out.extend("! " + l for l in norm.stderr(r.stderr).splitlines())
        elif kind == "watch":
            args, actions = step[1], step[2]
            stdin = step[3] if len(step) > 3 else None
            env = clean_env()
            env["ETCDCTL_API"] = "3"
            w = subprocess.Popen([ETCDCTL, "--endpoints", endpoint] + args,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
            if stdin:
                w.stdin.write(stdin)
                w.stdin.flush()
            time.sleep(0.7)
            for a in actions:
                etcdctl(endpoint, a)
            time.sleep(0.7)
            w.send_signal(signal.SIGINT)
            try:
                so, se = w.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
                so, se = w.communicate()
            out.append("$ etcdctl %s (watching while: %s)" % (" ".join(args), "; ".join(" ".join(a) for a in actions)))
            out.extend(norm.text(so).splitlines())
        else:
            raise ValueError("unknown step kind %r" % kind)
    return out


def diff(reference, candidate):
    return list(difflib.unified_diff(reference, candidate, "etcd", "candidate", lineterm="", n=2))


def main():
    from etcdctl_script import ORDER, script
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="host:port of the server to compare")
    ap.add_argument("--sections", default=",".join(ORDER),
                    help="comma list of script sections (default: all)")
    a = ap.parse_args()
    steps = script(a.sections.split(","))
    tmp = tempfile.mkdtemp(prefix="etcdctl-diff-")
    proc, ref = start_etcd(tmp)
    try:
        want = run_script(ref, steps, tmp)
    finally:
        stop_process(proc)
    got = run_script(a.endpoint, steps, tmp)
    d = diff(want, got)
    print("\n".join(d) if d else "no differences (%d lines compared)" % len(want))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if d else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
