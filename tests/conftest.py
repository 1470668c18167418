"""Shared fixtures for the process-level tests (helpers live in qtest.py)."""
import signal

import pytest

from qtest import Server


@pytest.fixture
def servers(tmp_path):
    """Makes servers and stops every one of them at the end of the test."""
    made = []

    def make(**kw):
        s = Server(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop(signal.SIGKILL)
