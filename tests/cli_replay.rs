//! `capmoe trace --forwards` and `capmoe replay`: the monitor and a controller in the loop over
//! a skew-shifting trace, and the hostile inputs of both.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .args(args)
        .output()
        .expect("run capmoe")
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capmoe-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn shifting_trace(name: &str) -> PathBuf {
    let d = dir(name);
    let o = capmoe(&[
        "trace",
        "--forwards",
        "12",
        "--layers",
        "3",
        "--tokens",
        "128",
        "--experts",
        "16",
        "--top-k",
        "2",
        "--layer-skews",
        "mixtral,uniform,3",
        "--shift-at",
        "6",
        "--shift-skew",
        "4",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    d
}

fn replay(traces: &Path, controller: &str) -> Value {
    let o = capmoe(&[
        "replay",
        "--traces",
        traces.to_str().unwrap(),
        "--top-k",
        "2",
        "--ranks",
        "4",
        "--controller",
        controller,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn budget_holds_on_every_forward_of_a_shifting_trace() {
    let d = shifting_trace("budget");
    for c in ["budget:1.0x", "budget:1.3x", "budget:2x"] {
        let r = replay(&d, c);
        let fw = r["forwards"].as_array().unwrap();
        assert_eq!(fw.len(), 12);
        assert_eq!(r["summary"]["over_budget"], 0, "{c}");
        for f in fw {
            let b = f["budget"].as_f64().unwrap();
            assert!(f["predicted_cost"].as_f64().unwrap() <= b, "{c}: {f}");
            assert!(f["actual_cost"].as_f64().unwrap() <= b, "{c}: {f}");
            let layers = f["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 3);
            for l in layers {
                // The busiest rank never exceeds what capacity allows.
                assert!(
                    l["busiest_rank_rows"].as_u64() <= l["rows_bound"].as_u64(),
                    "{l}"
                );
            }
        }
    }
    // Fixed gamma: one capacity for every layer, no budget.
    let r = replay(&d, "fixed:1.5");
    for f in r["forwards"].as_array().unwrap() {
        assert!(f["budget"].is_null());
        let caps: Vec<u64> = f["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["capacity"].as_u64().unwrap())
            .collect();
        assert!(caps.windows(2).all(|w| w[0] == w[1]), "{caps:?}");
        assert_eq!(caps[0], (1.5f64 * 128.0 * 2.0 / 16.0).ceil() as u64);
    }
}

#[test]
fn hostile_inputs_are_clear_errors() {
    let d = shifting_trace("hostile");
    let t = d.to_str().unwrap();
    let base = ["replay", "--traces", t, "--top-k", "2", "--ranks", "4"];
    let run = |extra: &[&str]| capmoe(&[&base[..], extra].concat());
    for (extra, want) in [
        (&["--controller", "budget:0x"][..], "not valid"),
        (&["--controller", "budget:-3ms"][..], "not valid"),
        (&["--controller", "budget:nanx"][..], "not valid"),
        (
            &["--controller", "budget:0.001x"][..],
            "below the smallest feasible cost",
        ),
        (&["--controller", "budget:5ms"][..], "uncalibrated"),
        (
            &["--controller", "fixed:1.5", "--window", "0"][..],
            "window is 0",
        ),
        (
            &["--controller", "fixed:1.5", "--policy", "none"][..],
            "no capacity",
        ),
    ] {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(err(&o).contains(want), "{extra:?}: {}", err(&o));
    }
    let empty = dir("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = capmoe(&[
        "replay",
        "--traces",
        empty.to_str().unwrap(),
        "--top-k",
        "2",
        "--controller",
        "fixed:1",
    ]);
    assert!(err(&o).contains("empty trace"), "{}", err(&o));
    // A forward of another shape.
    let other = dir("other");
    let o = capmoe(&[
        "trace",
        "--forwards",
        "1",
        "--layers",
        "2",
        "--tokens",
        "64",
        "--experts",
        "16",
        "--top-k",
        "2",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    std::fs::copy(other.join("forward-00000.npy"), d.join("forward-99999.npy")).unwrap();
    let o = run(&["--controller", "fixed:1.5"]);
    assert!(err(&o).contains("trace files must agree"), "{}", err(&o));
    // trace: flags that describe forwards need --forwards; a shift past the end.
    let o = capmoe(&["trace", "--shift-at", "3", "--out", "/tmp/x.npy"]);
    assert!(err(&o).contains("needs --forwards"), "{}", err(&o));
    let o = capmoe(&[
        "trace",
        "--forwards",
        "2",
        "--shift-at",
        "5",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(err(&o).contains("past the last forward"), "{}", err(&o));
    let o = capmoe(&["trace", "--forwards", "0", "--out", other.to_str().unwrap()]);
    assert!(err(&o).contains("expected 1..="), "{}", err(&o));
}

/// `generate --record-router` writes one [L, T, E] file per forward (the prefill, then each
/// decode step), `replay` routes them, and `--metrics-out` has a JSON line per forward and layer
/// plus the Prometheus text.
#[test]
fn recorded_router_logits_replay_with_metrics() {
    let d = dir("record");
    let rec = d.join("fwd");
    let o = capmoe(&[
        "generate",
        "--model",
        "tiny",
        "--ids",
        "4,8,15,16",
        "--max-new-tokens",
        "3",
        "--record-router",
        rec.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let mut files: Vec<String> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "forward-00000.npy",
            "forward-00001.npy",
            "forward-00002.npy"
        ]
    );
    let metrics = d.join("metrics.jsonl");
    let o = capmoe(&[
        "replay",
        "--traces",
        rec.to_str().unwrap(),
        "--top-k",
        "2",
        "--ranks",
        "2",
        "--controller",
        "fixed:1.0",
        "--format",
        "json",
        "--metrics-out",
        metrics.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let tokens: Vec<u64> = r["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, [4, 1, 1]);
    let lines = std::fs::read_to_string(&metrics).unwrap();
    // tiny: 2 layers, 3 forwards.
    assert_eq!(lines.lines().count(), 6);
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["balancedness"].as_f64().unwrap() > 0.0);
    }
    let prom = std::fs::read_to_string(format!("{}.prom", metrics.display())).unwrap();
    assert!(
        prom.contains("capmoe_moe_balancedness{layer=\"1\"}"),
        "{prom}"
    );
    let o = capmoe(&[
        "logits",
        "--model",
        "tiny",
        "--ids",
        "1,2",
        "--ep",
        "local:2",
        "--record-router",
        rec.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && err(&o).contains("--record-router cannot go with --ep"),
        "{}",
        err(&o)
    );
}

/// `capmoe calibrate` fits one cost line per layer from a measured EP benchmark (the committed
/// one), which `replay --cost` then takes; a file that is not such a report is a clear error.
#[test]
fn calibrate_fits_each_layer_from_a_measured_ep_report() {
    let d = dir("calibrate");
    std::fs::create_dir_all(&d).unwrap();
    let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/ep-mpi-cpu/report.json");
    let cost = d.join("cost.json");
    let o = capmoe(&[
        "calibrate",
        "--report",
        report.to_str().unwrap(),
        "--out",
        cost.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cost).unwrap()).unwrap();
    assert_eq!(v["unit"], "ms");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for l in layers {
        assert!(l["per_row"].as_f64().unwrap() > 0.0 && l["fixed"].as_f64().unwrap() >= 0.0);
    }
    let o = capmoe(&[
        "calibrate",
        "--report",
        cost.to_str().unwrap(),
        "--out",
        d.join("x.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no `cases` list"), "{}", err(&o));
}
