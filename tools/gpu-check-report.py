#!/usr/bin/env python3
"""Writes report.md and report.json for a gpu-check run (tools/gpu-check.sh packs this next to
.gpu-check/run.sh, which calls it on the device machine).

usage: gpu-check-report.py WORK_DIR OUT_DIR
WORK_DIR holds gpu.txt, meta.txt (key=value), results.txt (kind|name|exit|seconds|log|note) and
the logs; standard library only (the device has python3 but no extra packages are assumed).
"""
import json
import math
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
    failures = failed_names(text)
    skips = [l.strip() for l in text.splitlines() if re.search(r"\bskip", l, re.I)]
    causes = {name: first_panic(text, name) for name in failures}
    return {"summary_found": seen, "passed": passed, "failed": failed, "ignored": ignored,
            "skip_messages": len(skips), "failed_tests": failures, "skip_lines": skips[:10],
            "causes": causes, "aborted": abort_reason(text)}


def failed_names(text):
    """The names in libtest's closing `failures:` list (the last block: the first one holds the
    captured output, and with --nocapture a test's `... FAILED` line is split by its output)."""
    names = []
    for block in re.finditer(r"^failures:\n((?:    \S+\n)+)", text, re.M):
        names = [l.strip() for l in block.group(1).splitlines()]
    if not names:  # no closing block (the binary died): the per-test lines, where intact
        names = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
    return list(dict.fromkeys(names))


def first_panic(text, name):
    """`thread 'NAME' panicked at FILE:LINE:` and the message lines after it, up to the next
    test's output or the backtrace note."""
    m = re.search(r"thread '" + re.escape(name) + r"' panicked at (.*)$", text, re.M)
    if not m:
        return ""
    lines = [m.group(1).strip()]
    for line in text[m.end():].splitlines()[1:12]:
        if re.match(r"(note: |stack backtrace:|test \S+ \.\.\.|thread '|failures:|----)", line):
            break
        lines.append(line.rstrip())
    return "\n".join(l for l in lines if l.strip())[:1500]


def abort_reason(text):
    """A binary that died without a summary: the last panic or abort line says why."""
    hits = re.findall(r"^(thread '.*' panicked at .*|.*panic in a destructor.*|.*fatal runtime error.*|"
                      r"Aborted.*|Segmentation fault.*)$", text, re.M)
    return hits[-1][:500] if hits else ""


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


# ------------------------------------------------------------------ expert FFN (issue 5)
# Bench lines (bench/gpu_ffn.rs):  CAPMOE_FFN|T|load|micros|tflops|gbps_weights  (CAPMOE_MOE: layer)
#   CAPMOE_FFN_CHECK|T|load|rows|sum|sumabs|sumsq   CAPMOE_FFN_ROW|T|load|token|expert|v0 .. v7
#   CAPMOE_FFN_VARIANTS|T|pair
# Peers (tools/peers/ffn_peers.py): OUT/peers.json, else its CAPMOE_PEER / CAPMOE_CEILING lines.
BARS = {"matmul_t": 4096, "matmul_pct": 70.0, "copy_t_max": 64, "copy_pct": 85.0,
        "vs_grouped_mm": 1.0, "vs_hf": 2.0}


def parse_ffn_lines(text):
    d = {"ffn": {}, "moe": {}, "graph": {}, "checks": {}, "rows": {}, "variants": {}, "skips": []}
    tables = {"CAPMOE_FFN": "ffn", "CAPMOE_MOE": "moe", "CAPMOE_MOE_GRAPH": "graph"}
    for line in text.splitlines():
        f = line.strip().split("|")
        try:
            if f[0] in tables and len(f) == 6:
                d[tables[f[0]]][(int(f[1]), f[2])] = {
                    "micros": float(f[3]), "tflops": float(f[4]), "gbps": float(f[5])}
            elif f[0] == "CAPMOE_FFN_CHECK" and len(f) >= 7:
                d["checks"][(int(f[1]), f[2])] = {"rows": int(f[3]), "sum": float(f[4]),
                                                  "sumabs": float(f[5]), "sumsq": float(f[6])}
            elif f[0] == "CAPMOE_FFN_ROW" and len(f) == 6:
                d["rows"][(int(f[1]), f[2], int(f[3]), int(f[4]))] = [float(v) for v in f[5].split()]
            elif f[0] == "CAPMOE_FFN_VARIANTS" and len(f) >= 3:
                d["variants"][int(f[1])] = "|".join(f[2:])
            elif line.startswith("gpu_ffn: skipped"):
                d["skips"].append(line.strip())
        except ValueError:
            continue
    return d


def load_peers(out, rows):
    """peers.json written by the peers script, else what its log printed."""
    try:
        with open(os.path.join(out, "peers.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    log = next((read(r["log"]) for r in rows if r["kind"] == "peer"), "")
    doc = {"status": "no peers.json" + ("" if log else " and no peers log"), "results": [], "ceilings": {}}
    for line in log.splitlines():
        f = line.strip().split("|")
        try:
            if f[0] == "CAPMOE_PEER" and len(f) == 5:
                doc["results"].append({"peer": f[1], "T": int(f[2]), "load": f[3], "micros": float(f[4])})
            elif f[0] == "CAPMOE_CEILING" and len(f) == 3:
                doc["ceilings"][f[1]] = float(f[2])
        except ValueError:
            continue
    return doc


def fmt(v, spec=".1f", none="–"):
    return none if v is None else format(v, spec)


def fx(v):
    return "–" if v is None else f"{v:.2f}x"


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def cross_checks(ffn, peers):
    """Bench checksums and sample rows against torch on the same hashed weights and inputs."""
    out = []
    pc = {(c["T"], c["load"]): c for c in peers.get("checks", []) if c.get("what") == "ffn_sums"}
    for key, c in sorted(ffn["checks"].items()):
        p = pc.get(key)
        if not p:
            out.append((key, "sums", None, "no torch value"))
            continue
        # An unrelated output of the same statistics misses the sum by ~sqrt(sumsq); rounding
        # differences by ~1e-2 of that. sum y^2 catches a scale error.
        d_sum = abs(c["sum"] - p["sum"]) / max(math.sqrt(p["sumsq"]), 1e-30)
        d_sq = abs(c["sumsq"] - p["sumsq"]) / max(p["sumsq"], 1e-30)
        ok = c["rows"] == p["rows"] and d_sum < 0.1 and d_sq < 1e-2
        out.append((key, "sums", ok, f"rows {c['rows']}/{p['rows']}, abs(dsum)/sqrt(sumsq) {d_sum:.2e}, "
                    f"dsumsq/sumsq {d_sq:.2e}"))
    pr = {(c["T"], c["load"], c["token"], c["expert"]): c["values"]
          for c in peers.get("checks", []) if c.get("what") == "ffn_row"}
    per = {}  # (T, load) -> [(row, err or None)]
    for key, vals in sorted(ffn["rows"].items()):
        ref = pr.get(key)
        err = None
        if ref is not None:
            err = max(abs(a - b) for a, b in zip(vals, ref)) / max(max(abs(v) for v in ref), 1e-30)
        per.setdefault(key[:2], []).append((f"t{key[2]}/e{key[3]}", err))
    for key, errs in sorted(per.items()):
        got = [(r, e) for r, e in errs if e is not None]
        if not got:
            out.append((key, "sample rows", None, "no torch value"))
            continue
        worst = max(got, key=lambda x: x[1])
        bad = [r for r, e in got if e >= 3e-2]
        out.append((key, "sample rows", not bad and len(got) == len(errs),
                    f"{len(got)}/{len(errs)} rows (token/expert) compared, worst {worst[0]}: max abs diff "
                    f"/ max abs ref {worst[1]:.2e}" + (f"; over 3e-2: {', '.join(bad)}" if bad else "")))
    return out


def ffn_section(rows, out):
    ffn = {"ffn": {}, "moe": {}, "graph": {}, "checks": {}, "rows": {}, "variants": {}, "skips": []}
    for r in rows:
        if r["kind"] == "bench":
            d = parse_ffn_lines(read(r["log"]))
            for k in ffn:
                ffn[k].update(d[k]) if isinstance(ffn[k], dict) else ffn[k].extend(d[k])
    have_peers = any(r["kind"] == "peer" for r in rows)
    if not (ffn["ffn"] or ffn["moe"] or ffn["skips"] or have_peers):
        return [], None
    peers = load_peers(out, rows)
    ceil = peers.get("ceilings") or {}
    mm, cp = ceil.get("matmul_tflops"), ceil.get("copy_gbps")
    pt = {(x["peer"], x["T"], x["load"]): x["micros"] for x in peers.get("results", [])}
    status = peers.get("peers", {})
    md = ["## Expert FFN (Mixtral-8x7B shapes: E 8, H 4096, I 14336, top-2, bf16)", ""]
    md += [f"- peers: {peers.get('status', '?')}; torch {peers.get('torch', '–')}, transformers "
           f"{(peers.get('hf') or {}).get('transformers', '–')}"
           + "".join(f"; {k}: {v}" for k, v in status.items())]
    md += [f"- ceilings (same run): bf16 8192^3 torch.matmul **{fmt(mm)} TFLOP/s**; device-to-device "
           f"copy **{fmt(cp)} GB/s** (read + write bytes, so the copy moves half of that from HBM "
           "each way; the FFN's GB/s count weight bytes read only)"]
    for s in ffn["skips"]:
        md.append(f"- bench: {s}")
    for note in peers.get("notes", []):
        md.append(f"- peers: {note}")
    md.append("")
    tokens = sorted({k[0] for k in list(ffn["ffn"]) + list(ffn["moe"])} | {k[1] for k in pt})
    loads = ["balanced", "skewed"]
    pct = lambda v, c: None if v is None or not c else 100.0 * v / c  # noqa: E731
    ratio = lambda a, b: None if a is None or b is None or a <= 0 else b / a  # noqa: E731
    t1 = ["### ExpertFfn::forward on gathered rows vs torch._grouped_mm", "",
          "| T | load | variants | µs | TFLOP/s | % matmul | GB/s weights | % copy | grouped_mm µs | speed-up |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {"rate": [], "copy": [], "gmm": [], "hf": []}
    for t in tokens:
        for load in loads:
            f = ffn["ffn"].get((t, load))
            g = pt.get(("grouped_mm", t, load))
            if not f and g is None:
                continue
            us = f["micros"] if f else None
            tf = f["tflops"] if f else None
            gb = f["gbps"] if f else None
            sp = ratio(us, g)
            t1.append(f"| {t} | {load} | {ffn['variants'].get(t, '')} | {fmt(us, '.1f')} | {fmt(tf)} | "
                      f"{fmt(pct(tf, mm))} | {fmt(gb, '.0f')} | {fmt(pct(gb, cp))} | {fmt(g, '.1f')} | "
                      f"{fx(sp)} |")
            if t == BARS["matmul_t"]:
                summary["rate"].append((f"FFN T={t} {load}", pct(tf, mm)))
            if t <= BARS["copy_t_max"]:
                summary["copy"].append((f"FFN T={t} {load}", pct(gb, cp)))
            summary["gmm"].append((f"T={t} {load}", sp))
    t2 = ["### MoeLayer::forward from logits (route, gather, FFN, combine) vs HF MixtralSparseMoeBlock", "",
          "| T | load | µs | TFLOP/s | % matmul | HF block µs | speed-up vs HF | grouped_mm layer µs | speed-up |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tokens:
        for load in loads:
            m = ffn["moe"].get((t, load))
            hf, gl = pt.get(("hf_block", t, load)), pt.get(("grouped_mm_layer", t, load))
            if not m and hf is None and gl is None:
                continue
            us, tf = (m["micros"], m["tflops"]) if m else (None, None)
            t2.append(f"| {t} | {load} | {fmt(us, '.1f')} | {fmt(tf)} | {fmt(pct(tf, mm))} | {fmt(hf, '.1f')} | "
                      f"{fx(ratio(us, hf))} | {fmt(gl, '.1f')} | {fx(ratio(us, gl))} |")
            if t == BARS["matmul_t"]:
                summary["rate"].append((f"layer T={t} {load}", pct(tf, mm)))
            summary["hf"].append((f"T={t} {load}", ratio(us, hf)))
    tg = ["### MoeLayer as a CUDA graph (MoeLayerGraph) vs eager launches", "",
          "| T | load | eager µs | graph µs | gain (eager / graph) |", "| --- | --- | --- | --- | --- |"]
    for t in tokens:
        for load in loads:
            m, gr = ffn["moe"].get((t, load)), ffn["graph"].get((t, load))
            if m and gr:
                tg.append(f"| {t} | {load} | {m['micros']:.1f} | {gr['micros']:.1f} | {fx(ratio(gr['micros'], m['micros']))} |")
    t3 = ["### Skewed load (expert 0 at 3x the mean) vs balanced, same total rows: time ratio", "",
          "| T | capmoe FFN skewed / balanced | capmoe layer | grouped_mm | HF block |", "| --- | --- | --- | --- | --- |"]
    for t in tokens:
        def sk(get):
            a, b = get("balanced"), get("skewed")
            return None if a is None or b is None or a <= 0 else b / a
        cells = [sk(lambda l: (ffn["ffn"].get((t, l)) or {}).get("micros")),
                 sk(lambda l: (ffn["moe"].get((t, l)) or {}).get("micros")),
                 sk(lambda l: pt.get(("grouped_mm", t, l))), sk(lambda l: pt.get(("hf_block", t, l)))]
        if any(c is not None for c in cells):
            t3.append(f"| {t} | " + " | ".join(fx(c) for c in cells) + " |")
    for table in (t1, t2, tg, t3):
        if len(table) > 4:
            md += table + [""]
    if all(len(table) == 4 for table in (t1, t2, t3)):
        md += ["No measurements (the bench skipped and the peers measured nothing).", ""]

    def bar(name, items, limit, unit):
        vals = [(n, v) for n, v in items if v is not None]
        if not vals:
            return f"| {name} | n/a (no data) | |"
        fails = [f"{n} {v:.2f}{unit}" for n, v in vals if v < limit]
        worst = min(vals, key=lambda x: x[1])
        detail = ("fails: " + ", ".join(fails)) if fails else f"worst {worst[0]} {worst[1]:.2f}{unit}"
        return f"| {name} | {verdict(not fails)} | {detail} |"

    md += ["### Bars (design.md §6)", "", "| bar | verdict | detail |", "| --- | --- | --- |",
           bar(f"T={BARS['matmul_t']} >= {BARS['matmul_pct']:.0f}% of the matmul rate", summary["rate"],
               BARS["matmul_pct"], "%"),
           bar(f"T<={BARS['copy_t_max']} >= {BARS['copy_pct']:.0f}% of copy GB/s on weights read",
               summary["copy"], BARS["copy_pct"], "%"),
           bar(">= 1x torch._grouped_mm (FFN)", summary["gmm"], BARS["vs_grouped_mm"], "x"),
           bar(">= 2x HF MixtralSparseMoeBlock (layer)", summary["hf"], BARS["vs_hf"], "x")]
    checks = cross_checks(ffn, peers)
    hfc = [c for c in peers.get("checks", []) if c.get("what") == "hf_vs_grouped_mm_layer"]
    hc = peers.get("hash_check")
    if checks or hfc or hc:
        md += ["", "### Cross-checks on the same weights (capmoe's hashed init, redrawn by torch)", "",
               "| T | load | what | verdict | detail |", "| --- | --- | --- | --- | --- |"]
        if hc:
            md.append(f"| | | torch redraw of the hash vs pinned values | {verdict(hc.get('ok'))} | "
                      f"{'; '.join(hc.get('mismatches', [])[:3])} |")
        for (t, load), what, ok, detail in checks:
            md.append(f"| {t} | {load} | capmoe FFN {what} vs torch | {verdict(ok)} | {detail} |")
        for c in hfc:
            md.append(f"| {c['T']} | {c['load']} | HF block vs grouped_mm layer output | "
                      f"{verdict(c.get('ok'))} | max abs diff / max abs ref {c['value']:.2e} |")
    md.append("")
    verdicts = {"bars": summary, "cross_checks": [
        {"T": k[0], "load": k[1], "what": w, "ok": ok, "detail": d} for k, w, ok, d in checks]}
    return md, {"capmoe": {"ffn": {f"{k[0]}|{k[1]}": v for k, v in ffn["ffn"].items()},
                           "moe": {f"{k[0]}|{k[1]}": v for k, v in ffn["moe"].items()},
                           "graph": {f"{k[0]}|{k[1]}": v for k, v in ffn["graph"].items()},
                           "variants": ffn["variants"]},
                "peers": peers, "verdicts": verdicts}


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
        row["log"] = log
        row["log_file"] = os.path.join("logs", os.path.basename(log)) if log else ""
        if kind == "rerun":
            row["ok"] = True
        elif kind == "test":
            row.update(parse_tests(text))
            row["ok"] = row["exit_code"] == 0 and row["failed"] == 0
        elif kind == "peer":
            row["ok"] = row["exit_code"] == 0
        else:
            row["benchmarks"] = parse_benches(text)
            row["ok"] = row["exit_code"] == 0
        rows.append(row)
    # A rerun row (kind `rerun`, name `BINARY::TEST::HOW`) belongs to its binary's row.
    for r in [r for r in rows if r["kind"] == "rerun"]:
        binary, test, how = (r["name"].split("::") + ["", ""])[:3]
        owner = next((o for o in rows if o["kind"] == "test" and o["name"] == binary), None)
        if owner is not None:
            owner["rerun"] = {"test": test, "how": how, "exit_code": r["exit_code"], "tail": r["tail"]}
    rows = [r for r in rows if r["kind"] != "rerun"]
    tests = [r for r in rows if r["kind"] == "test"]
    report = {
        "meta": meta, "gpu": gpu, "binaries": rows,
        "totals": {"passed": sum(r["passed"] for r in tests), "failed": sum(r["failed"] for r in tests),
                   "ignored": sum(r["ignored"] for r in tests),
                   "binaries_failed": [r["name"] for r in rows if not r["ok"]]},
    }
    ffn_md, ffn_json = ffn_section(rows, out)
    if ffn_json:
        report["expert_ffn"] = ffn_json
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
            first = r["failed_tests"][0]
            md.append(f"Failed in {r['name']}: " + ", ".join(f"`{x}`" for x in r["failed_tests"]))
            md += ["", f"First failure in {r['name']}: `{first}`", "", "```",
                   r["causes"].get(first) or "(no `panicked at` line for it in the log)", "```", ""]
        elif not r["ok"] and r.get("aborted"):
            md += ["", f"{r['name']} died without a summary; its last panic or abort line:", "", "```",
                   r["aborted"], "```", ""]
        if r.get("rerun"):
            md += [f"Rerun of `{r['rerun']['test']}` alone ({r['rerun']['how']}): exit "
                   f"{r['rerun']['exit_code']}", "", "```", r["rerun"]["tail"], "```", ""]
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
    for r in rows:
        if r["kind"] == "peer":
            md.append(f"| {r['name']} (peers script) | exit {r['exit_code']}, {r['seconds']:.1f} s "
                      f"{r['note']} | see Expert FFN |")
    md += [""] + ffn_md
    md += ["", "## Output tails", ""]
    for r in rows:
        if not r["ok"] or r["kind"] in ("test", "peer") or not r.get("benchmarks", True):
            md += [f"### {r['kind']} {r['name']} (exit {r['exit_code']})", "", "```", r["tail"], "```", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
