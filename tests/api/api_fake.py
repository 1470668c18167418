"""The api transport's test double for process-level tests: fake_api_server
(tests/api/fakeserver, an in-memory map behind the real transport) started on
127.0.0.1 at a port in 20000-29999 and stopped by PID. A module of its own
name, so other layers' conftest.py files cannot shadow it."""
import os
import random
import select
import signal
import subprocess


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
        # A small ASan quarantine: freed memory is reused soon, so the RSS the
        # memory tests read follows what the server holds, not what it freed.
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"),
                                                     "quarantine_size_mb=4"]))
        proc = subprocess.Popen([FAKE, "--listen", f"{scheme}://127.0.0.1:{port}", "--lifetime", "300",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        if line.strip() == b"listening":
            return FakeServer(proc, port)
        proc.wait(timeout=30)
        if proc.returncode != 3:  # 3: port taken, try another
            raise AssertionError(f"fake server failed: {proc.stderr.read().decode()}")
    raise AssertionError("no free port")
