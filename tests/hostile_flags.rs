//! Hostile flags and outputs through the `capmoe` binary: each ends with a
//! non-zero exit and a message naming what was wrong, before any work runs
//! (issue 11, items 3 and 4 of its list: bounded counts, finite outputs).

mod model_common;

use model_common::*;
use safetensors::Dtype;
use std::process::Command;

/// Runs capmoe; returns (exit code, stderr).
fn capmoe(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().expect("exited, not killed by a signal");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The run fails (not a panic: exit 2 is capmoe's usage error, 101 a
/// panic) and its message holds every one of `words`.
fn refused(args: &[&str], words: &[&str]) {
    let (code, err) = capmoe(args);
    assert!(code != 0 && code != 101, "{args:?}: exit {code}\n{err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for w in words {
        assert!(err.contains(w), "{args:?}: `{w}` not in\n{err}");
    }
}

fn bench(extra: &[&str]) -> Vec<String> {
    let out = temp_dir("hostile-bench-out");
    let mut a: Vec<String> = [
        "bench",
        "--config",
        "tiny",
        "--skew",
        "uniform",
        "--policies",
        "none",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    for (flag, default) in [("--batch", "1"), ("--seq-len", "4"), ("--iters", "1")] {
        if !extra.contains(&flag) {
            a.extend([flag.to_string(), default.to_string()]);
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refused_bench(extra: &[&str], words: &[&str]) {
    let a = bench(extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(&a, words);
}

#[test]
fn a2a_bandwidth_is_checked_when_parsed() {
    for gbps in ["5e-324", "0", "-1", "nan", "inf", "1e7", "1e-7"] {
        let flag = format!("--a2a-gbps={gbps}");
        refused_bench(&[&flag], &["--a2a-gbps", "bandwidth", "1e-6"]);
    }
}

#[test]
fn bench_batch_size_is_bounded() {
    let max = capmoe::ep::MAX_BENCH_TOKENS.to_string();
    refused_bench(
        &["--batch", "18446744073709551615"],
        &["--batch x --seq-len", "too large", &max],
    );
    refused_bench(
        &["--batch", "4294967296", "--seq-len", "4294967296"],
        &["too large", &max],
    );
}

#[test]
fn bench_iterations_are_bounded() {
    let max = capmoe::ep::MAX_BENCH_ITERS.to_string();
    refused_bench(
        &["--iters", "1000000000000"],
        &["--iters", "too large", &max],
    );
}

#[test]
fn bench_positions_are_bounded_by_the_model() {
    // tiny has max_position_embeddings = 32768.
    refused_bench(
        &["--decode-steps", "1000000000000"],
        &["max_position_embeddings", "32768"],
    );
    refused_bench(&["--seq-len", "40000"], &["max_position_embeddings"]);
}

#[test]
fn generate_cannot_run_past_the_last_position() {
    for n in ["18446744073709551615", "100000", "32768"] {
        refused(
            &[
                "generate",
                "--model",
                "tiny",
                "--ids",
                "1,2",
                "--max-new-tokens",
                n,
            ],
            &["max_position_embeddings"],
        );
    }
    // The last position that fits still runs: 2 prompt + 32767 fed.
    let cfg = tiny();
    assert!(cfg.check_generation(2, 32767).is_ok());
}

#[test]
fn trace_experts_zero_names_the_expert_count() {
    let out = temp_dir("hostile-trace").join("t.npy");
    let (code, err) = capmoe(&["trace", "--experts", "0", "--out", out.to_str().unwrap()]);
    assert!(code != 0 && code != 101, "{err}");
    assert!(err.contains("experts") && !err.contains("skew"), "{err}");
    assert!(!out.exists());
}

/// A finite but huge lm_head makes the logits overflow: `logits` and
/// `generate` fail naming the output logit, and print no NaN.
#[test]
fn non_finite_logits_are_an_error_not_output() {
    let cfg = tiny();
    let mut t = random_tensors(&cfg, 3);
    let head = t
        .iter_mut()
        .find(|(n, _, _)| n == "lm_head.weight")
        .unwrap();
    head.2.iter_mut().for_each(|v| *v = 3.0e38);
    let dir = temp_dir("huge-lm-head");
    write_single(&dir, &cfg, &t, Dtype::F32);
    let d = dir.to_str().unwrap();
    for cmd in [
        vec!["logits", "--model", d, "--ids", "1,2,3"],
        vec![
            "generate",
            "--model",
            d,
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_capmoe"))
            .args(&cmd)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{cmd:?}: {stdout}");
        assert!(
            !stdout.contains("NaN") && !stdout.contains("inf"),
            "{stdout}"
        );
        assert!(
            stderr.contains("output logit") && stderr.contains("finite"),
            "{cmd:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
