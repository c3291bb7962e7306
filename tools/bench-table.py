#!/usr/bin/env python3
"""Turn criterion's estimates under target/criterion/route/ into a markdown table.

Usage: tools/bench-table.py [CRITERION_DIR] > bench/results/routing-cpu.md
"""
import json
import pathlib
import platform
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
policies = []
for est in sorted(root.glob("route_T*_E*_k*/*/new/estimates.json")):
    group, policy = est.parts[-4], est.parts[-3]
    if policy == "report":
        continue
    _, t, e, k = group.split("_")
    ns = json.loads(est.read_text())["mean"]["point_estimate"]
    rows.setdefault((int(e[1:]), int(k[1:]), int(t[1:])), {})[policy] = ns
    if policy not in policies:
        policies.append(policy)
order = ["none", "drop-score", "drop-order", "drop-random", "reroute-next-best", "reroute-optimal", "expand-local"]
policies = [p for p in order if p in policies] + [p for p in policies if p not in order]

def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} µs"

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# CPU routing benchmark (criterion mean per call, one core)\n")
print(f"commit `{commit}`, {platform.machine()}, `cargo bench --bench routing`; gamma = 1.0, 8 ranks, "
      "Mixtral-like skew where E/k > 2.75, else uniform. Each call is gating + policy + plan.\n")
print("| E | k | T | " + " | ".join(policies) + " |")
print("|---|---|---|" + "---|" * len(policies))
for (e, k, t) in sorted(rows):
    r = rows[(e, k, t)]
    print(f"| {e} | {k} | {t} | " + " | ".join(fmt(r.get(p)) for p in policies) + " |")
