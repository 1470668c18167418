"""The recorder's history format as the C checker reads it: a history written
with history.History must check clean, and the same history with a stale read
added must be reported, naming that read."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from history import History, prefix_end, run_lincheck  # noqa: E402


def write_history(path, stale):
    h = History(path)
    # Two clients; the first put overlaps a read that sees nothing yet.
    p1 = h.begin("c1", "put", key="k\u00e9", value="v1", lease=0)
    g1 = h.begin("c2", "get", key="k\u00e9")
    h.finish(g1, "ok", found=False, rev=1)
    h.finish(p1, "ok", rev=2)
    c = h.begin("c1", "cas", key="k\u00e9", cmp="mod_rev", expect=2, value="v2", lease=0)
    h.finish(c, "ok", succeeded=True, rev=3)
    t = h.begin("c2", "txn", **{"if": [{"key": "k\u00e9", "target": "value", "cmp": "=",
                                        "value": "v2"}],
                                "then": [{"op": "get", "key": "k\u00e9"},
                                         {"op": "put", "key": "other", "value": "x"}],
                                "else": []})
    h.finish(t, "ok", succeeded=True, rev=4,
             results=[{"found": True, "value": "v2", "mod_rev": 3, "create_rev": 2,
                       "version": 2}, {}])
    lost = h.begin("c1", "put", key="other", value="maybe", lease=0)
    h.finish(lost, "indeterminate", error="DEADLINE_EXCEEDED: timed out")
    if stale:
        g = h.begin("c2", "get", key="k\u00e9")
        h.finish(g, "ok", found=True, value="v1", mod_rev=2, create_rev=2, version=1, rev=4)
    f = h.begin("c3", "range", key="k", range_end=prefix_end("k"), final=True)
    h.finish(f, "ok", rev=4, kvs=[{"key": "k\u00e9", "found": True, "value": "v2",
                                   "mod_rev": 3, "create_rev": 2, "version": 2}])
    h.close()


def test_recorded_history_checks_clean(tmp_path):
    path = str(tmp_path / "good.jsonl")
    write_history(path, stale=False)
    code, report = run_lincheck(path)
    assert code == 0, report
    assert "verdict: linearizable" in report


def test_stale_read_is_reported_with_its_line(tmp_path):
    path = str(tmp_path / "bad.jsonl")
    write_history(path, stale=True)
    code, report = run_lincheck(path)
    assert code == 1, report
    assert "NONLINEARIZABLE" in report and "verdict: VIOLATION" in report
    stale_line = [i + 1 for i, line in enumerate(open(path)) if '"value":"v1","mod_rev"' in line]
    assert "line %d:" % stale_line[0] in report


def test_unreadable_history_is_a_usage_error(tmp_path):
    path = str(tmp_path / "broken.jsonl")
    with open(path, "w") as f:
        f.write('{"client":1,"op":"put"\n')
    code, report = run_lincheck(path)
    assert code == 64
    assert "history line 1" in report
