#!/usr/bin/env python3
"""Reads an Nsight Systems cuda_api_trace CSV of graph-replayed decode steps and prints, per
cuGraphLaunch, the host-synchronising API calls between it and the next launch. A decode step's
graph holds no host sync (CUDA refuses one at capture); what a step adds is its one record
download and the benchmark's timing events, all after the launch.

    decode-syncs.py nsys-decode-step-B64_cuda_api_trace.csv
"""
import csv
import sys

SYNCS = ("Synchronize", "MemcpyDtoH", "MemcpyAsync", "Memcpy", "EventQuery", "StreamQuery")


def main(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no API calls")
    name_key = next((k for k in rows[0] if k.lower() in ("name", "api name", "function")), None)
    if name_key is None:
        sys.exit(f"{path}: no name column in {list(rows[0])}")
    names = [r[name_key] for r in rows]
    launches = [i for i, n in enumerate(names) if "GraphLaunch" in n]
    print(f"{len(launches)} graph launches (decode steps), {len(names)} API calls")
    for s, i in enumerate(launches):
        end = launches[s + 1] if s + 1 < len(launches) else len(names)
        between = [n for n in names[i + 1:end] if any(k in n for k in SYNCS)]
        print(f"step {s}: cuGraphLaunch, then {len(between)} host-synchronising call(s): {', '.join(between) or '-'}")
    if not launches:
        print("no cuGraphLaunch: the decode steps did not run as graph replays (reroute:optimal, or an eager decoder)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
