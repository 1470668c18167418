"""TLS on the client port (https:// URLs): the real etcdctl, curl and grpc
against the test-double server with a certificate from a throwaway CA."""
import os
import subprocess

import grpc

from api_fake import start_fake


def tls_fake(certs, *extra):
    return start_fake("--cert-file", str(certs / "server.pem"), "--key-file",
                      str(certs / "server.key"), *extra, scheme="https")


def etcdctl(srv, certs, *args, client_cert=False):
    env = dict(os.environ, ETCDCTL_API="3")
    tls = ["--cacert", str(certs / "ca.pem")]
    if client_cert:
        tls += ["--cert", str(certs / "client.pem"), "--key", str(certs / "client.key")]
    return subprocess.run(["etcdctl", "--endpoints", f"https://{srv.endpoint}", *tls,
                           "--command-timeout", "5s", "--dial-timeout", "3s", *args],
                          capture_output=True, env=env, timeout=60)


def stop(srv):
    code, err = srv.stop()
    assert code == 0, err


def test_etcdctl_curl_and_grpc_over_tls(certs):
    srv = tls_fake(certs)
    try:
        assert etcdctl(srv, certs, "put", "k", "v").stdout == b"OK\n"
        assert etcdctl(srv, certs, "get", "k").stdout == b"k\nv\n"
        r = etcdctl(srv, certs, "endpoint", "status")
        assert r.returncode == 0 and b"3.4.23" in r.stdout, r.stderr
        out = subprocess.run(["curl", "-s", "--cacert", str(certs / "ca.pem"),
                              f"https://{srv.endpoint}/version"], capture_output=True, timeout=30)
        assert out.stdout.startswith(b'{"etcdserver":"3.4.23"')
        creds = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
        with grpc.secure_channel(srv.endpoint, creds) as ch:
            assert ch.unary_unary("/quointest.Test/Stats")(b"", timeout=10) == b"cancels=0"
            assert ch.unary_unary("/quointest.Test/Whoami")(b"", timeout=10) == b"-"
        # Plain text to the TLS port fails the handshake; the server is fine.
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{srv.endpoint}/version"], capture_output=True, timeout=30)
        assert out.stdout == b"000"
        assert etcdctl(srv, certs, "get", "k").stdout == b"k\nv\n"
    finally:
        stop(srv)


def test_client_cert_auth(certs):
    srv = tls_fake(certs, "--trusted-ca-file", str(certs / "ca.pem"), "--client-cert-auth")
    try:
        assert etcdctl(srv, certs, "put", "k", "v").returncode != 0
        assert etcdctl(srv, certs, "put", "k", "v", client_cert=True).stdout == b"OK\n"
        assert etcdctl(srv, certs, "get", "k", client_cert=True).stdout == b"k\nv\n"
        creds = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(),
                                             (certs / "client.key").read_bytes(),
                                             (certs / "client.pem").read_bytes())
        with grpc.secure_channel(srv.endpoint, creds) as ch:
            assert ch.unary_unary("/quointest.Test/Whoami")(b"", timeout=10) == b"client"
    finally:
        stop(srv)
