#!/usr/bin/env python3
"""Check `capmoe route --policy reroute:optimal` against scipy's LP optimum.

Reads a .npy logits trace [T, E], solves

    maximise   sum p[t,e] x[t,e]
    subject to sum_e x[t,e] <= k            (each token)
               sum_{e in bin} sum_t x[t,e] <= cap   (each bin)
               0 <= x <= 1

with scipy.optimize.linprog (HiGHS), runs capmoe on the same trace and
compares the served mass and feasibility of capmoe's assignments. p is the
float64 softmax of the logits (capmoe's f32 gating differs by ulps, so the
two optima may differ by about T*k*1e-7 at most).

Usage: tools/lp_check.py TRACE.npy --top-k 8 --capacity-factor 1.0
       [--ranks R --capacity-scope rank] [--capmoe target/release/capmoe]
Needs numpy and scipy (e.g. a venv: python3 -m venv v && v/bin/pip install scipy numpy).
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--top-k", type=int, required=True)
    ap.add_argument("--capacity-factor", type=float, required=True)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--capacity-scope", choices=["expert", "rank"], default="expert")
    ap.add_argument("--capmoe", default="target/release/capmoe")
    a = ap.parse_args()

    logits = np.load(a.trace).astype(np.float64)
    t, e = logits.shape
    k = a.top_k
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = z / z.sum(axis=1, keepdims=True)

    cmd = [a.capmoe, "route", "--logits", a.trace, "--top-k", str(k), "--policy", "reroute:optimal",
           "--capacity-factor", repr(a.capacity_factor), "--capacity-scope", a.capacity_scope,
           "--format", "json"]
    if a.capacity_scope == "rank":  # capmoe refuses --ranks where it would change nothing
        cmd += ["--ranks", str(a.ranks)]
    t0 = time.time()
    plan = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    capmoe_s = time.time() - t0
    cap = plan["capacity"]
    per_rank = e // a.ranks
    if a.capacity_scope == "rank":
        bin_of = np.arange(e) // per_rank
        bin_cap = cap * per_rank
        nbins = a.ranks
    else:
        bin_of = np.arange(e)
        bin_cap = cap
        nbins = e

    # capmoe's plan: feasibility and mass under the same p.
    load = np.zeros(nbins, dtype=np.int64)
    mass = 0.0
    for ti, row in enumerate(plan["assignments"]):
        ex = [x["expert"] for x in row]
        assert len(ex) <= k and len(set(ex)) == len(ex), f"token {ti}: {ex}"
        for x in ex:
            load[bin_of[x]] += 1
            mass += p[ti, x]
    assert (load <= bin_cap).all(), "capmoe's plan overfills a bin"

    # The LP: variables x[t,e] row-major.
    n = t * e
    tok_rows = sp.csr_matrix((np.ones(n), (np.repeat(np.arange(t), e), np.arange(n))), shape=(t, n))
    bin_rows = sp.csr_matrix((np.ones(n), (np.tile(bin_of, t), np.arange(n))), shape=(nbins, n))
    a_ub = sp.vstack([tok_rows, bin_rows]).tocsr()
    b_ub = np.concatenate([np.full(t, k), np.full(nbins, bin_cap)])
    t0 = time.time()
    res = linprog(-p.ravel(), A_ub=a_ub, b_ub=b_ub, bounds=(0, 1), method="highs")
    lp_s = time.time() - t0
    if res.status != 0:
        sys.exit(f"linprog failed: {res.message}")
    lp = -res.fun
    top = np.sort(p, axis=1)[:, ::-1][:, :k].sum()
    frac = np.abs(res.x - np.round(res.x)).max()
    print(json.dumps({
        "trace": a.trace, "tokens": t, "experts": e, "top_k": k, "gamma": a.capacity_factor,
        "scope": a.capacity_scope, "ranks": a.ranks, "capacity": cap,
        "lp_mass": lp, "capmoe_mass": mass, "abs_diff": mass - lp, "rel_diff": (mass - lp) / lp,
        "lp_gate_mass_kept": lp / top, "capmoe_gate_mass_kept": plan["gate_mass_kept"],
        "lp_max_fractional": frac, "lp_seconds": round(lp_s, 2), "capmoe_seconds": round(capmoe_s, 2),
    }))


if __name__ == "__main__":
    main()
