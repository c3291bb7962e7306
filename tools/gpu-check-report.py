#!/usr/bin/env python3
"""Writes report.md and report.json for a gpu-check run (tools/gpu-check.sh packs this next to
.gpu-check/run.sh, which calls it on the device machine).

usage: gpu-check-report.py WORK_DIR OUT_DIR
WORK_DIR holds gpu.txt, meta.txt (key=value), results.txt (kind|name|exit|seconds|log|note) and
the logs; standard library only (the device has python3 but no extra packages are assumed).
"""
import json
import os
import re
import sys

TAIL_LINES = 40

# test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
SUMMARY = re.compile(
    r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured; (\d+) filtered out"
)
# criterion: "name   time:   [1.2 ms 1.3 ms 1.4 ms]" or the name alone on the line before.
TIME = re.compile(r"^(.*?)\s*time:\s*\[([^\]]+)\]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def parse_tests(text):
    passed = failed = ignored = 0
    seen = False
    for m in SUMMARY.finditer(text):
        seen = True
        passed += int(m.group(2))
        failed += int(m.group(3))
        ignored += int(m.group(4))
    failures = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
    skips = [l.strip() for l in text.splitlines() if re.search(r"\bskip", l, re.I)]
    return {"summary_found": seen, "passed": passed, "failed": failed, "ignored": ignored,
            "skip_messages": len(skips), "failed_tests": failures, "skip_lines": skips[:10]}


def parse_benches(text):
    out = []
    name = None
    for raw in text.splitlines():
        line = ANSI.sub("", raw).rstrip()
        m = TIME.match(line)
        if m:
            label = m.group(1).strip() or name or "?"
            parts = m.group(2).split()
            est = " ".join(parts[2:4]) if len(parts) >= 6 else m.group(2)
            out.append({"name": label, "time": m.group(2).strip(), "estimate": est})
        elif line and not line[0].isspace() and not line.startswith(("Benchmarking", "Found", "Warning")):
            name = line.strip()
    return out


def main():
    work, out = sys.argv[1], sys.argv[2]
    meta = dict(l.split("=", 1) for l in read(os.path.join(work, "meta.txt")).splitlines() if "=" in l)
    gpu = read(os.path.join(work, "gpu.txt")).strip()
    rows = []
    for line in read(os.path.join(work, "results.txt")).splitlines():
        kind, name, code, secs, log, note = (line.split("|") + [""] * 6)[:6]
        text = read(log)
        row = {"kind": kind, "name": name, "exit_code": int(code) if code.lstrip("-").isdigit() else None,
               "seconds": float(secs or 0), "note": note,
               "tail": "\n".join(text.splitlines()[-TAIL_LINES:])}
        if kind == "test":
            row.update(parse_tests(text))
            row["ok"] = row["exit_code"] == 0 and row["failed"] == 0
        else:
            row["benchmarks"] = parse_benches(text)
            row["ok"] = row["exit_code"] == 0
        rows.append(row)
    tests = [r for r in rows if r["kind"] == "test"]
    report = {
        "meta": meta, "gpu": gpu, "binaries": rows,
        "totals": {"passed": sum(r["passed"] for r in tests), "failed": sum(r["failed"] for r in tests),
                   "ignored": sum(r["ignored"] for r in tests),
                   "binaries_failed": [r["name"] for r in rows if not r["ok"]]},
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)

    md = [f"# gpu-check {meta.get('date', '')} at {meta.get('commit', '?')}", ""]
    md += [f"- commit: `{meta.get('commit', '?')}`{' (dirty tree)' if meta.get('dirty') == '1' else ''}",
           f"- built: {meta.get('built', '?')}, archs `{meta.get('archs', '?')}`, host `{meta.get('host', '?')}`",
           f"- budget: {meta.get('budget_s', '?')} s, wall: {meta.get('wall_s', '?')} s", "", "## GPU", "", "```",
           gpu or "(nothing)", "```", "", "## Tests", "",
           "| binary | exit | passed | failed | ignored | skip messages | seconds | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in tests:
        md.append(f"| {r['name']} | {r['exit_code']} | {r['passed']} | {r['failed']} | {r['ignored']} "
                  f"| {r['skip_messages']} | {r['seconds']:.1f} | {r['note']} |")
    t = report["totals"]
    md += ["", f"Total: {t['passed']} passed, {t['failed']} failed, {t['ignored']} ignored "
           "(a GPU test that printed a skip message passed without a GPU).", ""]
    for r in tests:
        if r["failed_tests"]:
            md.append(f"Failed in {r['name']}: " + ", ".join(f"`{x}`" for x in r["failed_tests"]))
        if r["skip_lines"]:
            md += [f"Skips in {r['name']}:", "", "```", *r["skip_lines"], "```", ""]
    md += ["## Benchmarks", "", "| binary | benchmark | time [low est high] |", "| --- | --- | --- |"]
    for r in rows:
        if r["kind"] != "bench":
            continue
        if not r["benchmarks"]:
            md.append(f"| {r['name']} | (none; exit {r['exit_code']}, {r['seconds']:.1f} s) {r['note']} | |")
        for b in r["benchmarks"]:
            md.append(f"| {r['name']} | {b['name']} | {b['time']} |")
    md += ["", "## Output tails", ""]
    for r in rows:
        if not r["ok"] or r["kind"] == "test" or not r.get("benchmarks", True):
            md += [f"### {r['kind']} {r['name']} (exit {r['exit_code']})", "", "```", r["tail"], "```", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
