#!/usr/bin/env python3
"""Turn criterion's estimates of `cargo bench --bench routing` (groups scale/E*/k*/T*/g*) into
the markdown tables of bench/results/routing-scale/README.md.

Usage: bench/results/routing-scale/table.py [CRITERION_DIR] > bench/results/routing-scale/README.md
"""
import json
import pathlib
import platform
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in sorted(root.glob("scale_E*_k*_T*_g*/*/new/estimates.json")):
    group, bench = est.parts[-4], est.parts[-3]
    if bench == "report":
        continue
    _, e, k, t, g = group.split("_")
    policy, _, scope = bench.partition("@")
    ns = json.loads(est.read_text())["mean"]["point_estimate"]
    rows.setdefault((scope, int(e[1:]), int(k[1:]), int(t[1:]), int(g[1:]) / 100), {})[policy] = ns

order = ["none", "drop-score", "drop-order", "drop-reverse-order", "drop-random", "reroute-next-best",
         "reroute-optimal", "expand-local"]


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} µs"


commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print("# CPU routing at scale (criterion mean per call, one thread)\n")
print(f"commit `{commit}`, {cpu} ({platform.machine()}), `cargo bench --bench routing`. "
      "Mixtral-like skew, 8 EP ranks; each call is gating + policy + plan. `none` has no capacity, so it "
      "appears once per shape (gamma 1.0 rows). Sample size 10, 0.5 s measurement: figures are "
      "indicative, and the machine was shared with other jobs.\n")
for scope in ["expert", "rank"]:
    print(f"## Capacity scope `{scope}`\n")
    print("| E | k | T | gamma | " + " | ".join(order) + " |")
    print("|---|---|---|---|" + "---|" * len(order))
    for key in sorted(k for k in rows if k[0] == scope):
        r = dict(rows[key])
        if "none" not in r:
            r["none"] = rows.get(("expert",) + key[1:], {}).get("none")
        _, e, k, t, g = key
        print(f"| {e} | {k} | {t} | {g} | " + " | ".join(fmt(r.get(p)) for p in order) + " |")
    print()
