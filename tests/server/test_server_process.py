"""The quoin server process as an etcd user meets it: flags, environment and
config file, the data directory, the listen ports, /version, logs, signals."""
import json
import os
import signal
import socket
import stat
import urllib.request

from qtest import Server, clean_env, free_port, run_quoin


def test_version_flag():
    r = run_quoin(["--version"])
    assert r.returncode == 0
    assert "quoin Version:" in r.stdout and "etcd API Version: 3.4" in r.stdout


def test_help_lists_etcd_flags():
    r = run_quoin(["--help"])
    assert r.returncode == 0
    for flag in ("--name", "--data-dir", "--listen-client-urls", "--initial-cluster-token",
                 "--heartbeat-interval", "--max-request-bytes", "--auto-compaction-mode",
                 "--peer-cert-file", "--log-outputs"):
        assert flag in r.stdout


def test_bad_command_lines_exit_2_with_etcd_wording():
    cases = [
        (["--foo"], "flag provided but not defined: -foo"),
        (["--listen-client-urls", "foo", "--advertise-client-urls", "http://127.0.0.1:2379"],
         'invalid value "foo" for flag -listen-client-urls: URL scheme must be http, https, '
         "unix, or unixs: foo"),
        (["--heartbeat-interval=-10"], 'invalid value "-10" for flag -heartbeat-interval: parse error'),
        (["--election-timeout", "-1"], 'invalid value "-1" for flag -election-timeout: parse error'),
        (["--heartbeat-interval=100", "--election-timeout=499"],
         "--election-timeout[499ms] should be at least as 5 times as --heartbeat-interval[100ms]"),
        (["--enable-v2"], "--enable-v2=true: not supported yet"),
    ]
    for args, want in cases:
        r = run_quoin(args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert want in r.stderr, (args, r.stderr)


def test_bad_environment_value_exits_2():
    env = clean_env()
    env["ETCD_ELECTION_TIMEOUT"] = "soon"
    r = run_quoin([], env=env)
    assert r.returncode == 2
    assert 'invalid value "soon" for ETCD_ELECTION_TIMEOUT: parse error' in r.stderr


def test_serves_version_and_stops_cleanly_on_sigterm(servers):
    s = servers().start()
    body = json.loads(urllib.request.urlopen(s.client_url + "/version", timeout=5).read())
    assert body["etcdserver"].startswith("3.4.")
    assert body["etcdcluster"] == "3.4.0"
    assert "quoin" in body
    assert s.stop(signal.SIGTERM) == 0
    assert s.stop(signal.SIGINT) == 0  # already stopped: idempotent


def test_logs_are_zap_style_json_lines(servers):
    s = servers().start()
    s.stop()
    lines = [l for l in s.logs().splitlines() if l.strip()]
    assert lines, "no log lines"
    for line in lines:
        obj = json.loads(line)
        assert {"level", "ts", "caller", "msg"} <= obj.keys(), line
    assert any("member-id" in json.loads(l) for l in lines)


def test_data_dir_created_private(servers):
    s = servers().start()
    mode = stat.S_IMODE(os.stat(s.data_dir).st_mode)
    assert mode == 0o700


def test_second_server_on_same_data_dir_is_refused(servers):
    a = servers().start()
    b = servers()
    b.args[b.args.index("--data-dir") + 1] = a.data_dir
    b.start(wait=False)
    assert b.proc.wait(20) == 1
    assert "in use by another quoin process (pid %d)" % a.proc.pid in b.logs()
    # The first one is unharmed.
    urllib.request.urlopen(a.client_url + "/version", timeout=5).read()


def test_etcd_data_dir_is_refused_and_untouched(servers, tmp_path):
    s = servers()
    os.makedirs(os.path.join(s.data_dir, "member", "snap"))
    db = os.path.join(s.data_dir, "member", "snap", "db")
    with open(db, "wb") as f:
        f.write(b"bolt")
    before = sorted(os.listdir(s.data_dir))
    s.start(wait=False)
    assert s.proc.wait(20) == 1
    assert "holds an etcd data directory (found member/snap/db)" in s.logs()
    assert sorted(os.listdir(s.data_dir)) == before
    with open(db, "rb") as f:
        assert f.read() == b"bolt"


def test_unknown_files_in_data_dir_are_refused(servers):
    s = servers()
    os.makedirs(s.data_dir)
    with open(os.path.join(s.data_dir, "precious.txt"), "w") as f:
        f.write("keep me")
    s.start(wait=False)
    assert s.proc.wait(20) == 1
    assert 'is not a quoin data directory: it holds \\"precious.txt\\"' in s.logs()


def test_client_port_in_use(servers):
    s = servers()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", s.client_port))
        taken.listen(1)
        s.start(wait=False)
        assert s.proc.wait(20) == 1
    assert "listen tcp 127.0.0.1:%d: bind: address already in use" % s.client_port in s.logs()


def test_peer_port_in_use(servers):
    s = servers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", s.peer_port))
        taken.listen(1)
        s.start(wait=False)
        assert s.proc.wait(20) == 1
    assert "listen tcp 127.0.0.1:%d: bind: address already in use" % s.peer_port in s.logs()


def test_environment_configures_and_flag_wins(servers, tmp_path):
    s = servers(name="fromflag")
    s.env = clean_env()
    s.env["ETCD_NAME"] = "fromenv"
    s.env["ETCD_LOG_LEVEL"] = "warn"
    s.start()
    s.stop()
    logs = s.logs()
    assert "ETCD_NAME is shadowed by the command-line flag --name" in logs
    # ETCD_LOG_LEVEL applies (no flag set it): no info lines.
    assert '"level":"info"' not in logs
    assert os.path.isdir(s.data_dir)


def test_environment_alone_starts_a_member(tmp_path):
    port, peer = free_port(), free_port()
    env = clean_env()
    env.update({
        "ETCD_NAME": "envonly",
        "ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:%d" % port,
        "ETCD_ADVERTISE_CLIENT_URLS": "http://127.0.0.1:%d" % port,
        "ETCD_LISTEN_PEER_URLS": "http://127.0.0.1:%d" % peer,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": "http://127.0.0.1:%d" % peer,
    })
    s = Server(tmp_path, name="unused")
    s.args = [s.args[0]]
    s.env = env
    s.client_url = "http://127.0.0.1:%d" % port
    s.cwd = str(tmp_path)
    try:
        s.start()
        assert '"name":"envonly"' in s.logs()
    finally:
        s.stop(signal.SIGKILL)
    # No --data-dir: the default <name>.quoin, in the working directory.
    assert os.path.isdir(tmp_path / "envonly.quoin")


def test_config_file_overrides_flags_and_env(servers, tmp_path):
    port, peer = free_port(), free_port()
    cfg = tmp_path / "quoin.yaml"
    cfg.write_text(
        "name: fromfile\n"
        "data-dir: %s\n"
        "listen-client-urls: http://127.0.0.1:%d\n"
        "advertise-client-urls: http://127.0.0.1:%d\n"
        "listen-peer-urls: http://127.0.0.1:%d\n"
        "initial-advertise-peer-urls: http://127.0.0.1:%d\n"
        "initial-cluster: fromfile=http://127.0.0.1:%d\n"
        "log-outputs: [stderr]\n" % (tmp_path / "ff.quoin", port, port, peer, peer, peer))
    s = servers(name="fromflag", extra=["--config-file", str(cfg)])
    s.env = clean_env()
    s.env["ETCD_NAME"] = "fromenv"
    s.client_url = "http://127.0.0.1:%d" % port
    s.start()
    logs = s.logs()
    assert '"name":"fromfile"' in logs
    assert "other configuration command line flags and environment variables are ignored" in logs
    assert os.path.isdir(tmp_path / "ff.quoin")


def test_tuning_flags_are_honoured(servers):
    import etcd3
    import grpc
    import pytest
    s = servers(extra=["--heartbeat-interval", "50", "--election-timeout", "500",
                       "--max-txn-ops", "2", "--max-request-bytes", "1024"]).start()
    c = etcd3.client(host="127.0.0.1", port=s.client_port, timeout=10)
    ops = [c.transactions.put("/t%d" % i, "x") for i in range(3)]
    with pytest.raises(grpc.RpcError) as e:
        c.transaction(compare=[], success=ops, failure=[])
    assert e.value.details() == "etcdserver: too many operations in txn request"
    assert c.transaction(compare=[], success=ops[:2], failure=[])[0]
    with pytest.raises(grpc.RpcError) as e:
        c.put("/big", "x" * 2048)
    assert e.value.details() == "etcdserver: request is too large"
    c.put("/small", "x" * 512)
    c.close()
