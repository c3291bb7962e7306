//! The whole-model benchmark on the GPU (`capmoe bench --device cuda
//! --e2e`): a `tiny` Mixtral drawn on the device, prefilled and decoded
//! under `none` and a capacity policy, each EP rank's expert work replayed
//! alone between CUDA events. Checks the report's invariants (not timings
//! beyond "positive and finite"), the device draw's determinism, and the
//! CLI. Without a GPU every test prints why and passes as skipped.
//!
//! `CAPMOE_GPU_E2E_ARGS` runs a full whole-model benchmark from this binary
//! (the gpu-check pack carries test binaries, not `capmoe`): its value is
//! the flags after `capmoe bench`, e.g. `--device cuda --e2e --config
//! mixtral-8x7b --out $OUT/ep-gpu-e2e` (tools/gpu-check.sh sets a short one).
#![cfg(feature = "cuda")]

use capmoe::backend::Backend;
use capmoe::backend::CudaBackend;
use capmoe::cuda::GpuContext;
use capmoe::ep::{self, BenchSetup};
use capmoe::model::{InitOptions, MixtralConfig, Model};
use capmoe::progress::NoProgress;
use capmoe::routing::Policy;
use capmoe::trace::Skew;

fn backend() -> Option<CudaBackend> {
    match GpuContext::new(0).and_then(|g| CudaBackend::new(&g)) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn setup() -> BenchSetup {
    BenchSetup {
        batch: 2,
        seq_len: 16,
        ranks: 2,
        policies: vec![Policy::None, "drop:score".parse().unwrap()],
        capacity_factors: vec![1.0],
        iters: 2,
        a2a_gbps: 150.0,
        elem_bytes: 2,
        seed: 1,
        load_layer: 0,
        model_label: "tiny".into(),
        skew_label: "mixtral".into(),
        throughput: true,
        decode_steps: 2,
        interleave: false,
        layer_cases: Vec::new(),
    }
}

#[test]
fn device_draw_is_seeded_and_skewed() {
    let Some(be) = backend() else { return };
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let opts = InitOptions::new(5).with_skew(Skew::Ratio(1.6));
    let a = Model::random(be.clone(), cfg.clone(), &opts).unwrap();
    let b = Model::random(be.clone(), cfg.clone(), &opts).unwrap();
    let c = Model::random(be, cfg, &InitOptions::new(6).with_skew(Skew::Ratio(1.6))).unwrap();
    let ids = [1u32, 5, 9, 3, 7];
    let r = a.default_router();
    let (la, lb, lc) = (
        a.logits(&ids, &r).unwrap(),
        b.logits(&ids, &r).unwrap(),
        c.logits(&ids, &r).unwrap(),
    );
    assert_eq!(la, lb, "same seed, same device draw");
    assert_ne!(la, lc, "another seed, other weights");
    assert!(la.iter().flatten().all(|v| v.is_finite()));
    for l in a.layers() {
        assert!(
            l.moe.router_bias.is_some(),
            "the skew is applied on the GPU too"
        );
    }
}

#[test]
fn tiny_model_end_to_end_report_keeps_its_invariants() {
    let Some(be) = backend() else { return };
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let model = Model::random(be, cfg, &InitOptions::new(3).with_skew(Skew::Ratio(1.6))).unwrap();
    assert_eq!(model.backend().name(), "cuda");
    let s = setup();
    let rep = ep::run(&model, &s, &NoProgress).unwrap();
    assert_eq!(rep.setup.device, "cuda");
    assert_eq!(rep.cases.len(), 2);
    let base = &rep.cases[0];
    assert_eq!(base.policy, "none");
    assert_eq!(base.summary.fidelity.kl, 0.0);
    assert_eq!(base.summary.fidelity.top1, 1.0);
    assert!((base.summary.speedup_e2e - 1.0).abs() < 1e-12);
    assert!(rep.baseline.prefill_ms > 0.0 && rep.baseline.prefill_ms.is_finite());
    for c in &rep.cases {
        let t = c.summary.throughput.as_ref().expect("throughput asked for");
        assert!(t.prefill_ms > 0.0 && t.prefill_ms.is_finite(), "{t:?}");
        assert!(t.prefill_tok_s > 0.0);
        let step = t.decode_step_ms.expect("2 decode steps");
        assert!(step > 0.0 && step.is_finite());
        assert!(t.decode_tok_s.unwrap() > 0.0);
        assert!(c.summary.fidelity.kl.is_finite() && c.summary.fidelity.kl >= 0.0);
        assert_eq!(c.layers.len(), model.config().num_hidden_layers);
        for l in &c.layers {
            assert_eq!(l.rank_ms.len(), 2);
            assert!(
                l.rank_ms.iter().all(|v| v.is_finite() && *v >= 0.0),
                "{l:?}"
            );
            let slowest = l.rank_ms.iter().cloned().fold(0.0, f64::max);
            assert!((l.latency_ms - slowest - l.a2a_ms).abs() < 1e-9);
        }
        let moe: f64 = c.layers.iter().map(|l| l.latency_ms).sum();
        assert!((c.summary.moe_ms - moe).abs() < 1e-9);
        assert!((c.summary.ep_prefill_ms - rep.baseline.non_moe_per_rank_ms - moe).abs() < 1e-9);
    }
    let capped = &rep.cases[1];
    assert_eq!(capped.capacity_factor, Some(1.0));
    assert!(capped.capacity.is_some());
}

#[test]
fn cli_runs_the_e2e_bench_or_says_why_not() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_capmoe"));
    if !exe.exists() {
        // The gpu-check pack carries test binaries, not capmoe itself.
        eprintln!("skipped: {} is not on this machine", exe.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("capmoe-gpu-e2e-cli-{}", std::process::id()));
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "--device",
            "cuda",
            "--e2e",
            "--config",
            "tiny",
            // The default (mixtral, 2.75x) is out of reach for 4 experts, top-2.
            "--skew",
            "1.6",
            "--batch",
            "2",
            "--seq-len",
            "8",
            "--ranks",
            "2",
            "--policies",
            "none,drop:score",
            "--capacity-factors",
            "1.5",
            "--iters",
            "1",
            "--decode-steps",
            "1",
            "--json",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if GpuContext::unavailable().is_some() {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("CUDA driver"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("skipped the run (no GPU): {err}");
        return;
    }
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["setup"]["device"], "cuda");
    assert_eq!(v["cases"].as_array().unwrap().len(), 2);
    assert!(
        v["cases"][0]["summary"]["throughput"]["decode_tok_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for f in ["report.json", "report.md"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A whole-model benchmark run when `CAPMOE_GPU_E2E_ARGS` gives its flags.
#[test]
fn e2e_bench_from_env() {
    let Ok(flags) = std::env::var("CAPMOE_GPU_E2E_ARGS") else {
        eprintln!("skipped: set CAPMOE_GPU_E2E_ARGS to the flags of `capmoe bench --device cuda --e2e` to run a whole-model benchmark");
        return;
    };
    if backend().is_none() {
        return;
    }
    // The CLI is the binary's, not the library's: run it. gpu-check packs it and names it in
    // CAPMOE_BIN; a cargo build has it at CARGO_BIN_EXE_capmoe.
    let exe = std::env::var_os("CAPMOE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_capmoe").into());
    assert!(
        exe.exists(),
        "CAPMOE_GPU_E2E_ARGS is set but the capmoe binary is not at {} (set CAPMOE_BIN)",
        exe.display()
    );
    let out = std::process::Command::new(&exe)
        .arg("bench")
        .args(flags.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "capmoe bench {flags} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
