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

/// `serve-bench --ep local:2` serves what one process serves (the same answers, drops and gate
/// mass) on the measured clock: all requests arrive at 0, so the batches do not depend on how
/// long the steps take.
#[test]
fn ep_ranks_serve_what_one_process_serves_on_the_measured_clock() {
    if !have_model() {
        eprintln!("skipped: {MODEL} is not in this checkout");
        return;
    }
    let trace = std::env::temp_dir().join(format!("capmoe-serve-ep-{}.csv", std::process::id()));
    let lines: String = (0..8).map(|i| format!("0.0,{i}\n")).collect();
    std::fs::write(&trace, lines).unwrap();
    let run = |ep: &[&str]| {
        let mut a = vec![
            "serve-bench",
            "--model",
            MODEL,
            "--trace",
            trace.to_str().unwrap(),
            "--policies",
            "none,drop:score",
            "--controllers",
            "fixed:1.0,budget:1.2x",
            "--decode-capacity",
            "both",
            "--max-batch-tokens",
            "24",
            "--max-seqs",
            "4",
            "--json",
        ];
        a.extend(ep);
        let (code, stdout, stderr) = capmoe(&a);
        assert_eq!(code, 0, "{ep:?}: {stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let one = run(&["--ranks", "2"]);
    let two = run(&["--ep", "local:2"]);
    assert_eq!(one["ep_timing"], "modelled");
    assert_eq!(two["ep_timing"], "measured");
    let clock = two["clock"].as_str().unwrap();
    assert!(
        clock.starts_with("measured EP on 2 ranks") && clock.contains("2 in-process ranks"),
        "{clock}"
    );
    assert!(two["a2a_gbps"].is_null() && two["ranks"] == 2);
    let (a, b) = (
        one["runs"].as_array().unwrap(),
        two["runs"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 5);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for k in [
            "label",
            "completed",
            "output_tokens",
            "correct",
            "accuracy",
            "drop_rate",
            "decode_drop_rate",
            "gate_mass_kept",
            "mean_effective_gamma",
            "steps",
            "forwards",
        ] {
            assert_eq!(x[k], y[k], "{}: {k}", x["label"]);
        }
        // Measured: per-rank busy and wait times on both ranks, nothing modelled.
        let busy = y["rank_busy_s"].as_array().unwrap();
        let wait = y["rank_wait_s"].as_array().unwrap();
        assert_eq!((busy.len(), wait.len()), (2, 2), "{y}");
        assert!(busy.iter().all(|v| v.as_f64().unwrap() > 0.0), "{y}");
        assert!(wait.iter().all(|v| v.as_f64().unwrap() >= 0.0), "{y}");
        let util = y["rank_utilisation"].as_array().unwrap();
        assert!(util.iter().all(|u| u.as_f64().unwrap() > 0.0), "{y}");
        assert!(y["modelled_ep_moe_s"].is_null() && y["modelled_a2a_s"].is_null());
        assert!(x["modelled_ep_moe_s"].as_f64().unwrap() > 0.0);
        assert!(x["rank_wait_s"].as_array().unwrap().is_empty());
    }
    // Capacity really dropped something, so equal drops are not trivially equal.
    assert!(b[1]["drop_rate"].as_f64().unwrap() > 0.0);
    // What --ep cannot run is a usage error.
    for (args, want) in [
        (vec!["--ep", "local:3"], "cannot hold 8 experts"),
        (vec!["--ep", "local:2", "--ranks", "4"], "disagrees"),
        (
            vec!["--ep", "local:2", "--device", "cuda"],
            "cpu backend only",
        ),
        (vec!["--ep", "local:0"], "ep mode"),
        (vec!["--ep", "local:2", "--a2a-gbps", "10"], "a2a-gbps"),
    ] {
        let mut a = vec!["serve-bench", "--model", MODEL, "--requests", "2"];
        a.extend(&args);
        let (code, _, stderr) = capmoe(&a);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(want),
            "{args:?}: {stderr} (expected `{want}`)"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_file(&trace);
}

/// `mpirun -n 2 capmoe serve-bench --ep mpi` serves what one process serves, and only rank 0
/// prints.
#[cfg(feature = "mpi")]
#[test]
fn mpi_ranks_serve_what_one_process_serves() {
    let mpirun = std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok();
    if !have_model() || !mpirun {
        assert!(
            std::env::var_os("CI").is_none() || !mpirun,
            "CI must run the MPI tests"
        );
        eprintln!("skipped: no {MODEL} or no mpirun");
        return;
    }
    let trace = std::env::temp_dir().join(format!("capmoe-serve-mpi-{}.csv", std::process::id()));
    let lines: String = (0..6).map(|i| format!("0.0,{i}\n")).collect();
    std::fs::write(&trace, lines).unwrap();
    let args = [
        "serve-bench",
        "--model",
        MODEL,
        "--trace",
        trace.to_str().unwrap(),
        "--policies",
        "none,drop:score",
        "--controllers",
        "fixed:1.0",
        "--max-batch-tokens",
        "24",
        "--json",
    ];
    let (code, stdout, stderr) = capmoe(&args);
    assert_eq!(code, 0, "{stderr}");
    let one: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let out = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(env!("CARGO_BIN_EXE_capmoe"))
        .args(args)
        .args(["--ep", "mpi"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // One JSON document: rank 1 printed nothing.
    let two: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(two["ep_timing"], "measured");
    assert!(two["clock"].as_str().unwrap().contains("2 MPI ranks"));
    for (x, y) in one["runs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(two["runs"].as_array().unwrap())
    {
        for k in [
            "label",
            "correct",
            "drop_rate",
            "gate_mass_kept",
            "forwards",
        ] {
            assert_eq!(x[k], y[k], "{k}");
        }
        assert_eq!(y["rank_busy_s"].as_array().unwrap().len(), 2);
    }
    let _ = std::fs::remove_file(&trace);
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
