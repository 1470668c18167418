"""Fixtures for the api transport's process-level tests: a test-double server
(tests/api/fakeserver, an in-memory map behind the real transport) started on
127.0.0.1 at a port in 20000-29999 and stopped by PID."""
import os
import random
import select
import signal
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# QUOIN_API_FAKE_SERVER runs the tests against another build of the test
# double (e.g. one built with ThreadSanitizer).
FAKE = os.environ.get("QUOIN_API_FAKE_SERVER",
                      os.path.join(ROOT, "build-san", "tests", "api", "fake_api_server"))


class FakeServer:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self):
        """Stops the server by PID; returns its exit code (non-zero on a
        sanitizer report, leaks included) and its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read().decode(errors="replace")


def start_fake(*args, scheme="http"):
    if "QUOIN_API_FAKE_SERVER" not in os.environ:
        subprocess.run(["make", "-s", "MODE=san", "build-san/tests/api/fake_api_server"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    for _ in range(50):
        port = random.randint(20000, 29999)
        proc = subprocess.Popen([FAKE, "--listen", f"{scheme}://127.0.0.1:{port}", "--lifetime", "300",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        if line.strip() == b"listening":
            return FakeServer(proc, port)
        proc.wait(timeout=30)
        if proc.returncode != 3:  # 3: port taken, try another
            raise AssertionError(f"fake server failed: {proc.stderr.read().decode()}")
    raise AssertionError("no free port")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=quoin test CA")
    exts = {"server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            "client": "extendedKeyUsage=clientAuth\n"}
    for name, ext in exts.items():
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


@pytest.fixture
def fake():
    srv = start_fake()
    yield srv
    code, err = srv.stop()
    assert code == 0, err
