"""--quota-backend-bytes as etcd enforces it, seen through the real etcdctl:
past the quota writes fail and the NOSPACE alarm is raised (and survives a
restart); reads and deletes still work; compaction, defragmentation and
disarming bring writes back."""
import json
import subprocess
import urllib.error
import urllib.request

from qtest import clean_env

VALUE = "x" * 100000


def ctl(s, *args, stdin=None):
    env = clean_env()
    env["ETCDCTL_API"] = "3"
    return subprocess.run(["etcdctl", "--endpoints", "127.0.0.1:%d" % s.client_port] + list(args),
                          input=stdin, capture_output=True, text=True, env=env, timeout=30)


def test_nospace_alarm_cycle(servers):
    s = servers(extra=["--quota-backend-bytes", "2000000"]).start()
    results = [ctl(s, "put", "k%d" % i, stdin=VALUE) for i in range(30)]
    ok = sum(r.returncode == 0 for r in results)
    refused = [r for r in results if r.returncode != 0]
    assert 5 < ok < 30, ok
    assert all("etcdserver: mvcc: database space exceeded" in r.stderr for r in refused)
    member = int(json.loads(ctl(s, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
                 ["header"]["member_id"])
    alarm = "memberID:%d alarm:NOSPACE \n" % member
    assert ctl(s, "alarm", "list").stdout == alarm
    assert "database space exceeded" in ctl(s, "put", "small", "x").stderr
    assert ctl(s, "get", "k1", "--print-value-only").stdout == VALUE + "\n"
    assert health(s) == (503, {"health": "false"})  # as etcd: an alarm is unhealthy

    assert s.stop() == 0
    s.start()
    assert ctl(s, "alarm", "list").stdout == alarm  # kept across the restart
    assert "database space exceeded" in ctl(s, "put", "small", "x").stderr

    assert ctl(s, "del", "k", "--prefix").stdout == "%d\n" % ok
    rev = json.loads(ctl(s, "get", "k1", "-w", "json").stdout)["header"]["revision"]
    assert ctl(s, "compaction", str(rev)).returncode == 0
    assert ctl(s, "defrag").returncode == 0
    assert ctl(s, "alarm", "disarm").stdout == alarm
    assert ctl(s, "alarm", "list").stdout == ""
    r = ctl(s, "put", "small", "x")
    assert r.returncode == 0, r.stderr
    assert health(s) == (200, {"health": "true"})


def health(s):
    try:
        r = urllib.request.urlopen(s.client_url + "/health", timeout=10)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
