"""The report of a chaos run: a JSON file for programs and a markdown page for
people, both from the history, the checker's output, the fault log and the
harness's own findings."""
import json
import os
import re

_FINDING = re.compile(r"^([A-Z][A-Z-]+[A-Z]): ")


def op_counts(history_path, watchers=None):
    """{op: {"invoked", "ok", "fail", "indeterminate"}} over the history; fills
    watchers (if given) with {name: {"events", "reconnects", "progress"}}."""
    out = {}
    with open(history_path) as f:
        for line in f:
            e = json.loads(line)
            if e["op"] == "watch" and watchers is not None:
                kinds = [ev["type"] for ev in e.get("events", [])]
                watchers[e["client"]] = {
                    "events": sum(k in ("put", "delete") for k in kinds),
                    "reconnects": kinds.count("reconnect"), "progress": kinds.count("progress")}
            c = out.setdefault(e["op"], {"invoked": 0, "ok": 0, "fail": 0, "indeterminate": 0})
            c["invoked"] += 1
            c[e["status"]] = c.get(e["status"], 0) + 1
    total = {"invoked": 0, "ok": 0, "fail": 0, "indeterminate": 0}
    for c in out.values():
        for k in total:
            total[k] += c.get(k, 0)
    out["total"] = total
    return out


def checker_findings(text):
    """Splits lincheck's report into findings: [{"kind", "text", "excerpt"}]."""
    found = []
    for line in text.splitlines():
        m = _FINDING.match(line)
        if m and m.group(1) not in ("UNKNOWN",) and not line.startswith("lincheck"):
            found.append({"kind": m.group(1), "text": line[len(m.group(0)):], "excerpt": []})
        elif found and line.startswith(" "):
            found[-1]["excerpt"].append(line.strip())
    return found


def write(out_dir, summary):
    """Writes report.json and report.md into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, "report.json")
    mpath = os.path.join(out_dir, "report.md")
    with open(jpath, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    with open(mpath, "w") as f:
        f.write(markdown(summary))
    return jpath, mpath


def markdown(s):
    cfg = s["config"]
    lines = ["# Chaos run: %s, %d members, %ds" % (cfg["target"], cfg["members"], cfg["duration"]),
             "",
             "**Verdict: %s** — %d anomalies; checker: %s" % (
                 s["verdict"], len(s["anomalies"]), s["checker"]["verdict"]),
             "",
             "| setting | value |", "|---|---|"]
    for k in sorted(cfg):
        lines.append("| %s | %s |" % (k, cfg[k]))
    lines += [""] + ["Note: %s." % n for n in s.get("notes", [])]
    lines += ["", "## Operations", "", "| op | invoked | ok | failed | indeterminate |",
              "|---|---:|---:|---:|---:|"]
    for op in sorted(s["operations"], key=lambda o: (o == "total", o)):
        c = s["operations"][op]
        lines.append("| %s | %d | %d | %d | %d |" % (op, c["invoked"], c["ok"], c.get("fail", 0),
                                                     c.get("indeterminate", 0)))
    lines += ["", "| watcher | events | reconnects | progress notifications |",
              "|---|---:|---:|---:|"]
    for name in sorted(s.get("watchers", {})):
        w = s["watchers"][name]
        lines.append("| %s | %d | %d | %d |" % (name, w["events"], w["reconnects"], w["progress"]))
    lines += ["", "## Faults", "", "| kind | injected |", "|---|---:|"]
    for k in sorted(s["faults"]):
        lines.append("| %s | %d |" % (k, s["faults"][k]))
    if not s["faults"]:
        lines.append("| (none) | 0 |")
    lines += ["", "Fault log (seconds from the start):", "", "```"]
    for ev in s["fault_log"]:
        lines.append("%7.1f-%-7s %-18s %s" % (ev["at"], ev.get("healed", "?"), ev["kind"],
                                               ev["what"]))
    lines += ["```", "", "## Checker", "", "```", s["checker"]["first_line"],
              "verdict: %s (exit %d)" % (s["checker"]["verdict"], s["checker"]["exit"]), "```",
              "", "## Anomalies", ""]
    if not s["anomalies"]:
        lines.append("None.")
    for a in s["anomalies"]:
        lines += ["### %s" % a["kind"], "", a["text"], "", "```"] + a["excerpt"][:40] + ["```", ""]
    lines += ["", "Files: history `%s`, checker output `%s`, member logs in `%s`." % (
        s["files"]["history"], s["files"]["checker"], s["files"]["workdir"]), ""]
    return "\n".join(lines)
