//! `capmoe serve-bench` end to end on the committed trained model (a few requests), and its
//! hostile flags.

use std::path::Path;
mod cli_common;
use cli_common::capmoe;

const MODEL: &str = "bench/models/mixtral-like";

fn have_model() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(MODEL)
        .join("eval.jsonl")
        .is_file()
}

#[test]
fn serves_a_small_stream_and_writes_its_reports() {
    if !have_model() {
        eprintln!("skipped: {MODEL} is not in this checkout");
        return;
    }
    let out = std::env::temp_dir().join(format!("capmoe-serve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (code, stdout, stderr) = capmoe(&[
        "serve-bench",
        "--model",
        MODEL,
        "--requests",
        "6",
        "--rate",
        "100",
        "--policies",
        "none,drop:score",
        "--controllers",
        "fixed:1.5,budget:1.2x",
        "--max-batch-tokens",
        "32",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3); // none, then drop:score under each controller
    for r in runs {
        assert_eq!(r["completed"], 6);
        for k in ["throughput_req_s", "output_tok_s"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}");
        }
        for k in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            let p = |q: &str| r[k][q].as_f64().unwrap();
            assert!(p("p50") <= p("p90") && p("p90") <= p("p99"), "{k}");
        }
    }
    // Under none the trained model answers its own eval prompts as the eval does (greedy).
    assert!(runs[0]["accuracy"].as_f64().unwrap() > 0.5);
    assert!(v["clock"].as_str().unwrap().contains("modelled EP"));
    for f in ["serve.json", "serve.md", "latency_cdf.png", "load.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("serve.md")).unwrap();
    assert!(md.contains("modelled EP") && md.contains("drop:score budget:1.2x"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn hostile_flags_are_usage_errors() {
    if !have_model() {
        return;
    }
    let trace = std::env::temp_dir().join(format!("capmoe-serve-trace-{}.csv", std::process::id()));
    for (args, want) in [
        (vec!["--rate", "0"], "rate"),
        (vec!["--rate=-3"], "rate"),
        (vec!["--rate", "inf"], "rate"),
        (vec!["--requests", "0"], "requests"),
        (vec!["--requests", "100001"], "requests"),
        (vec!["--window", "0"], "window"),
        (vec!["--max-batch-tokens", "0"], "max batch tokens"),
        (vec!["--arrival", "gamma:0"], "arrival"),
        (vec!["--ranks", "3"], "divide"),
        (vec!["--max-new-tokens", "0"], "max-new-tokens"),
        (vec!["--slo-ttft-ms", "nan"], "slo"),
        (vec!["--trace", trace.to_str().unwrap()], "no arrivals"),
        (vec!["--controllers", "budget:5ms"], "budget"),
    ] {
        std::fs::write(&trace, "arrival_s,request\n").unwrap();
        let mut a = vec!["serve-bench", "--model", MODEL, "--requests", "2"];
        if args[0] == "--requests" {
            a.truncate(3);
        }
        a.extend(&args);
        let (code, _, stderr) = capmoe(&a);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(want),
            "{args:?}: {stderr} (expected `{want}`)"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::write(&trace, "0.0,0\n0.1,99999\n").unwrap();
    let (code, _, stderr) = capmoe(&[
        "serve-bench",
        "--model",
        MODEL,
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("request index"), "{stderr}");
    let _ = std::fs::remove_file(&trace);
}
