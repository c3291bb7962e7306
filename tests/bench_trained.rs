//! `capmoe bench` on a committed trained checkpoint: its router as trained, its held-out text as
//! the batch, and the accuracy eval with the accuracy-speedup front (fidelity.json) after it.

use serde_json::Value;
use std::path::{Path, PathBuf};
mod cli_common;
use cli_common::capmoe;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capmoe-trained-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_default_model_is_the_trained_one_with_its_own_router() {
    let dir = out_dir("default");
    let d = dir.to_str().unwrap();
    let (code, _, err) = capmoe(&[
        "bench",
        "--policies",
        "none",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--iters",
        "1",
        "--out",
        d,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rep = json(&dir.join("report.json"));
    assert!(
        rep["model"]["name"]
            .as_str()
            .unwrap()
            .ends_with("bench/models/mixtral-like"),
        "{}",
        rep["model"]
    );
    assert_eq!(rep["setup"]["skew"], "as trained");
    // --policies none leaves nothing to compare: the eval still runs (none's accuracy).
    let fid = json(&dir.join("fidelity.json"));
    assert!(fid["accuracy_none"].as_f64().unwrap() > 0.0);
    assert_eq!(fid["rows"].as_array().unwrap().len(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fidelity_pairs_each_case_accuracy_with_its_speedup_and_finds_the_front() {
    let dir = out_dir("front");
    let d = dir.to_str().unwrap();
    let (code, out, err) = capmoe(&[
        "bench",
        "--model",
        "bench/models/mixtral-like",
        "--policies",
        "none,drop:score,drop:random",
        "--capacity-factors",
        "1.0,2.0",
        "--batch",
        "4",
        "--seq-len",
        "64",
        "--iters",
        "1",
        "--eval-limit",
        "60",
        "--controllers",
        "fixed:2.0,budget:1.2x",
        "--out",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Accuracy-speedup front"), "{out}");
    let rep = json(&dir.join("report.json"));
    let ev = json(&dir.join("eval.json"));
    let fid = json(&dir.join("fidelity.json"));
    assert!(dir.join("accuracy.png").is_file());
    assert_eq!(
        ev["tokens_per_forward"], 256,
        "the eval runs at the benchmark's T"
    );
    let none = ev["results"][0]["accuracy"].as_f64().unwrap();
    assert_eq!(fid["accuracy_none"].as_f64().unwrap(), none);
    let rows = fid["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "4 uniform cases and 2 controllers");
    let cases = rep["cases"].as_array().unwrap();
    for r in rows {
        let (p, g) = (r["policy"].as_str().unwrap(), r["gamma"].as_f64().unwrap());
        let e = ev["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["policy"] == p && e["gamma"].as_f64() == Some(g))
            .unwrap();
        let acc = e["accuracy"].as_f64().unwrap();
        assert_eq!(r["accuracy"].as_f64().unwrap(), acc);
        assert!((r["delta_points"].as_f64().unwrap() - 100.0 * (acc - none)).abs() < 1e-9);
        // A controller's case is per-layer, labelled as its eval row.
        let case = cases
            .iter()
            .find(|c| {
                c["policy"] == p
                    && (e.get("controller").is_some() || c["capacity_factor"].as_f64() == Some(g))
            })
            .unwrap();
        assert_eq!(r["speedup_e2e"], case["summary"]["speedup_e2e"]);
        assert!(case["summary"]["speedup_e2e"].as_f64().unwrap() > 0.0);
    }
    // fixed:2.0 gives every layer gamma 2.0: the bench routes it as drop:score at 2.0.
    let fixed = cases
        .iter()
        .find(|c| c["policy"] == "drop:score [fixed:2]")
        .unwrap();
    let uniform = cases
        .iter()
        .find(|c| c["policy"] == "drop:score" && c["capacity_factor"].as_f64() == Some(2.0))
        .unwrap();
    assert_eq!(fixed["capacity_factor"].as_f64(), Some(2.0));
    for (a, b) in fixed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(uniform["layers"].as_array().unwrap())
    {
        assert_eq!((&a["load"], &a["capacity"]), (&b["load"], &b["capacity"]));
    }
    let budget = ev["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["controller"] == "budget:1.2x")
        .unwrap();
    let layers = rep["model"]["layers"].as_u64().unwrap() as usize;
    assert_eq!(budget["layer_gammas"].as_array().unwrap().len(), layers);
    // The front: per policy the smallest gamma within 1 point, and only those.
    for p in ["drop:score", "drop:random:0"] {
        let ok: Vec<f64> = rows
            .iter()
            .filter(|r| r["policy"] == p && r["delta_points"].as_f64().unwrap() >= -1.0)
            .map(|r| r["gamma"].as_f64().unwrap())
            .collect();
        let front: Vec<&Value> = fid["front"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["policy"] == p)
            .collect();
        match ok.iter().copied().reduce(f64::min) {
            Some(g) => {
                assert_eq!(front.len(), 1, "{p}");
                assert_eq!(front[0]["gamma"].as_f64(), Some(g), "{p}");
            }
            None => assert!(front.is_empty(), "{p}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn eval_flags_belong_to_the_cpu_benchmark() {
    let (code, _, err) = capmoe(&["bench", "--device", "cuda", "--no-eval"]);
    assert!(code != 0 && code != 101, "{err}");
    assert!(err.contains("--no-eval"), "{err}");
}
