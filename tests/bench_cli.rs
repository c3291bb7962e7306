//! `capmoe bench` end to end on the tiny built-in model, one iteration.
//! No timing assertions: only the report's shape and the invariants that hold
//! whatever the clock says.

use serde_json::Value;
use std::path::PathBuf;
mod cli_common;
use cli_common::capmoe;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capmoe-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const TINY: &[&str] = &[
    "bench",
    "--config",
    "tiny",
    "--skew",
    "1.6",
    "--batch",
    "2",
    "--seq-len",
    "24",
    "--ranks",
    "2",
    "--iters",
    "1",
];

fn run_json(extra: &[&str], name: &str) -> (Value, PathBuf) {
    let dir = out_dir(name);
    let d = dir.to_str().unwrap();
    let mut args: Vec<&str> = TINY.to_vec();
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--json", "--out", d]);
    let (code, out, err) = capmoe(&args);
    assert_eq!(code, 0, "stderr: {err}");
    (serde_json::from_str(&out).expect("stdout is JSON"), dir)
}

#[test]
fn json_report_has_the_expected_fields_and_files() {
    let (v, dir) = run_json(&[], "fields");
    for k in [
        "model",
        "setup",
        "latency_model",
        "method",
        "baseline",
        "cases",
        "figures",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["setup"]["tokens"], 48);
    assert_eq!(v["setup"]["ranks"], 2);
    assert_eq!(v["setup"]["experts_per_rank"], 2);
    for k in [
        "prefill_ms",
        "expert_ms",
        "non_moe_ms",
        "non_moe_per_rank_ms",
    ] {
        assert!(v["baseline"][k].is_number(), "baseline.{k}");
    }
    let cases = v["cases"].as_array().unwrap();
    // none once, then 6 capacity policies x 4 default gammas.
    assert_eq!(cases.len(), 1 + 6 * 4);
    for c in cases {
        for k in [
            "imbalance",
            "dropped_pct",
            "rerouted_pct",
            "gate_mass_kept",
            "expert_ms",
            "a2a_ms",
            "moe_ms",
            "ep_prefill_ms",
            "speedup_moe",
            "speedup_e2e",
            "ideal_speedup",
            "routing_ms",
        ] {
            assert!(
                c["summary"][k].is_number(),
                "summary.{k} of {}",
                c["policy"]
            );
        }
        for k in ["kl", "kl_max", "top1"] {
            assert!(c["summary"]["fidelity"][k].is_number());
        }
        let layers = c["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for l in layers {
            assert_eq!(l["load"].as_array().unwrap().len(), 4);
            assert_eq!(l["rank_ms"].as_array().unwrap().len(), 2);
            for k in [
                "max_load",
                "imbalance",
                "dropped_pct",
                "rerouted_pct",
                "gate_mass_kept",
                "a2a_bytes",
                "latency_ms",
            ] {
                assert!(l[k].is_number(), "layer.{k}");
            }
        }
    }
    for f in [
        "report.json",
        "report.md",
        "load.png",
        "speedup.png",
        "fidelity.png",
    ] {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!bytes.is_empty());
        if f.ends_with(".png") {
            assert_eq!(&bytes[1..4], b"PNG", "{f} is a PNG");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn none_is_the_unit_of_speedup_and_fidelity() {
    let (v, dir) = run_json(
        &["--policies", "none,drop:score", "--capacity-factors", "1.0"],
        "none",
    );
    let none = &v["cases"][0];
    assert_eq!(none["policy"], "none");
    assert!(none["capacity_factor"].is_null());
    let s = &none["summary"];
    assert_eq!(s["speedup_moe"], 1.0);
    assert_eq!(s["speedup_e2e"], 1.0);
    assert_eq!(s["ideal_speedup"], 1.0);
    assert_eq!(s["fidelity"]["kl"], 0.0);
    assert_eq!(s["fidelity"]["top1"], 1.0);
    assert_eq!(s["dropped_pct"], 0.0);
    assert_eq!(s["gate_mass_kept"], 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn capacity_policies_keep_every_expert_within_capacity() {
    let (v, dir) = run_json(&["--capacity-factors", "0.5,1.0,1.25"], "cap");
    let mut checked = 0;
    for c in v["cases"].as_array().unwrap() {
        let Some(cap) = c["capacity"].as_u64() else {
            continue;
        };
        let g = c["capacity_factor"].as_f64().unwrap();
        // C = ceil(gamma * T * k / E) with T = 48, k = 2, E = 4.
        assert_eq!(cap, (g * 48.0 * 2.0 / 4.0).ceil() as u64);
        for l in c["layers"].as_array().unwrap() {
            assert!(l["max_load"].as_u64().unwrap() <= cap, "{}", c["policy"]);
            for e in l["load"].as_array().unwrap() {
                assert!(e.as_u64().unwrap() <= cap);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 6 * 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn table_output_names_every_case() {
    let dir = out_dir("table");
    let mut args: Vec<&str> = TINY.to_vec();
    args.extend_from_slice(&[
        "--policies",
        "drop:score,reroute:next-best",
        "--capacity-factors",
        "1.5",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let (code, out, err) = capmoe(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MoE speedup"));
    assert!(out.lines().any(|l| l.starts_with("none ")));
    assert!(out.lines().any(|l| l.starts_with("drop:score ")));
    assert!(out.lines().any(|l| l.starts_with("reroute:next-best ")));
    let _ = std::fs::remove_dir_all(dir);
}

/// `--device cuda` runs the GPU MoE-layer benchmark: without the `cuda`
/// feature it says how to rebuild, without a GPU it says there is none.
#[test]
fn device_cuda_says_what_it_needs() {
    let dir = out_dir("cuda");
    let (code, _, err) = capmoe(&[
        "bench",
        "--device",
        "cuda",
        "--config",
        "tiny",
        "--tokens",
        "16",
        "--ranks",
        "2",
        "--iters",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let want = if cfg!(feature = "cuda") {
        "CUDA driver"
    } else {
        "--features cuda"
    };
    if code == 0 {
        // Only a build with the feature, on a host with a GPU, gets here.
        assert_eq!(want, "CUDA driver", "ran without the feature: {err}");
    } else {
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "`{err}` lacks `{want}`");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_are_typed_errors() {
    let dir = out_dir("bad");
    let d = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--policies", "drop:best"], "drop:best"),
        (&["--ranks", "3"], "divisor"),
        (&["--experts-per-rank", "3"], "divide"),
        (&["--ranks", "4", "--experts-per-rank", "2"], "disagree"),
        (&["--capacity-factors", "0"], "gamma"),
        (&["--capacity-factors=1.0,-1"], "gamma"),
        (&["--capacity-factors", "nan"], "gamma"),
        (&["--iters", "0"], "--iters"),
        (&["--batch", "0"], "--batch"),
        (&["--a2a-gbps", "0"], "bandwidth"),
        (&["--device", "cuda"], "--seq-len is only for --device cpu"),
        (&["--tokens", "64"], "--tokens is only for --device cuda"),
        (&["--load-layer", "9"], "layer 9"),
        (&["--skew", "mixtral"], "out of reach"),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<&str> = vec!["bench", "--config", "tiny", "--seq-len", "8"];
        for (flag, value) in [("--skew", "1.6"), ("--iters", "1")] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", d]);
        let (code, out, err) = capmoe(&args);
        assert_eq!(code, 2, "{extra:?} should fail; stdout {out}");
        assert!(err.contains(needle), "{extra:?}: `{err}` lacks `{needle}`");
        assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    }
    let (code, _, err) = capmoe(&["bench", "--config", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a built-in"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn simulate_ep_writes_its_reports_and_refuses_bad_topologies() {
    let dir = out_dir("sim");
    let d = dir.to_str().unwrap();
    let (code, out, err) = capmoe(&[
        "bench",
        "--simulate-ep",
        "1x4,2x4",
        "--sim-experts",
        "16",
        "--sim-top-k",
        "2",
        "--sim-tokens-per-gpu",
        "16",
        "--sim-layers",
        "1",
        "--capacity-factors",
        "1.0",
        "--json",
        "--out",
        d,
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    let v: Value = serde_json::from_str(&out).expect("stdout is JSON");
    let topos = v["topologies"].as_array().unwrap();
    assert_eq!(topos.len(), 2);
    for t in topos {
        assert_eq!(t["cases"][0]["policy"], "none");
        assert_eq!(t["cases"][0]["speedup"], 1.0);
    }
    assert!(!v["assumptions"].as_array().unwrap().is_empty());
    for f in ["report.json", "report.md", "speedup.png"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    for bad in ["8y8", "0x8", "3x1"] {
        let (code, _, err) = capmoe(&["bench", "--simulate-ep", bad, "--out", d]);
        assert_ne!(code, 0, "{bad}");
        assert!(err.contains(bad) || err.contains("GPUs"), "{bad}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
