//! The GPU MoE-layer EP benchmark (`capmoe bench --device cuda`) on a tiny
//! layer (E = 8, H = 256, I = 512, T = 256, 2 iterations): the report's
//! invariants, the per-rank timing method (a rank's experts run alone over
//! their span of the layout give the same outputs as the whole layer's
//! forward), telemetry without
//! NVML, and the CLI. No timing assertions beyond "positive and finite".
//! Without a GPU every GPU test prints why and passes as skipped.
//!
//! `CAPMOE_GPU_BENCH_ARGS` runs a full benchmark from this binary (the
//! gpu-check pack carries test binaries, not `capmoe`): its value is the
//! flags after `capmoe bench`, e.g.
//! `CAPMOE_GPU_BENCH_ARGS="--device cuda --out $OUT/ep-gpu" bash .gpu-check/run.sh`.
#![cfg(feature = "cuda")]

use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter};
use capmoe::ep::gpu::telemetry::Telemetry;
use capmoe::ep::gpu::{self, GpuBenchSetup, LayerShape};
use capmoe::expert::compare;
use capmoe::routing::{Placement, RouterConfig};
use capmoe::trace::{synthetic_logits, Skew};
use std::time::Duration;

fn gpu() -> Option<GpuContext> {
    match GpuContext::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

const SHAPE: LayerShape = LayerShape {
    experts: 8,
    hidden: 256,
    intermediate: 512,
    top_k: 2,
};

fn tiny_setup() -> GpuBenchSetup {
    GpuBenchSetup {
        label: "tiny".into(),
        shape: SHAPE,
        tokens: vec![256],
        ranks: vec![8, 4],
        skews: vec![Skew::Mixtral, Skew::Olmoe],
        policies: [
            "none",
            "drop:score",
            "drop:order",
            "reroute:next-best",
            "reroute:optimal",
            "expand:local",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect(),
        capacity_factors: vec![1.0, 1.5],
        iters: 2,
        warmup: 1,
        min_case_ms: 0.0,
        a2a_gbps: 150.0,
        elem_bytes: 2,
        seed: 5,
        telemetry_ms: 10.0,
        tune: false,
        variants: None,
        // The emulator's streams run eagerly: a gate's wait would never be released there.
        launch_gate: !cfg!(feature = "emulate"),
        tune_cache: None,
    }
}

#[test]
fn telemetry_without_nvml_is_unavailable_not_an_error() {
    let t = Telemetry::start(None, Duration::from_millis(5));
    let info = t.info();
    if !t.available() {
        assert!(!info.available);
        let why = info.reason.clone().unwrap_or_default();
        assert!(!why.is_empty());
        assert_eq!(t.energy_mj(), None);
        assert_eq!(t.window(0.0, 1.0, None, None), None);
        eprintln!("telemetry unavailable here (expected without a driver): {why}");
        return;
    }
    std::thread::sleep(Duration::from_millis(60));
    let now = t.now();
    let w = t.window(0.0, now, None, None).unwrap();
    assert!(w.samples >= 2, "{w:?}");
    assert!(w.power_mean_w.unwrap_or(1.0) > 0.0);
    eprintln!("telemetry: {:?}", t.info());
}

#[test]
fn tiny_layer_report_keeps_its_invariants() {
    let Some(gpu) = gpu() else { return };
    let setup = tiny_setup();
    let rep = gpu::run(&setup, &gpu, &capmoe::progress::NoProgress).unwrap();
    // olmoe (7x) is out of reach at E = 8, k = 2; reroute:optimal is CPU-only.
    assert!(rep
        .skipped
        .iter()
        .any(|s| s.skew.as_deref() == Some("olmoe") && s.ranks.is_none()));
    let optimal: Vec<_> = rep
        .skipped
        .iter()
        .filter(|s| s.policy.as_deref() == Some("reroute:optimal"))
        .collect();
    assert_eq!(optimal.len(), 2 * 2, "{:?}", rep.skipped);
    assert!(optimal[0].reason.contains("not implemented on the GPU"));
    assert_eq!(rep.groups.len(), 2);
    for g in &rep.groups {
        // none + 4 GPU policies x 2 gammas.
        assert_eq!(g.cases.len(), 1 + 4 * 2, "EP {}", g.ranks);
        let none = g.case("none", None).unwrap();
        assert!(none.latency_ms.p50 > 0.0 && none.latency_ms.p99 >= none.latency_ms.p50);
        assert!((none.gate_mass_kept - 1.0).abs() < 1e-12);
        for c in &g.cases {
            let what = format!("EP {} {} {:?}", g.ranks, c.policy, c.capacity_factor);
            assert_eq!(c.iterations, 2, "{what}");
            assert_eq!(c.rank_ms_p50.len(), g.ranks, "{what}");
            assert_eq!(c.rank_load.iter().sum::<u64>(), c.load.iter().sum::<u64>());
            for (r, &ms) in c.rank_ms_p50.iter().enumerate() {
                assert!(ms.is_finite() && ms >= 0.0, "{what} rank {r}");
                if c.rank_load[r] > 0 {
                    assert!(ms > 0.0, "{what} rank {r} has rows but took no time");
                }
            }
            let s = c.speedup_p50.unwrap();
            assert!(s.is_finite() && s > 0.0, "{what}");
            assert!(c.speedup_p99.unwrap().is_finite());
            let ideal = c.ideal.unwrap();
            assert!(ideal.is_finite() && ideal > 0.0, "{what}");
            if c.policy.starts_with("drop:") {
                assert!(
                    ideal >= 1.0,
                    "{what}: dropping cannot raise the busiest rank"
                );
                assert!(c.gate_mass_kept <= 1.0);
            }
            assert!(c.full_layer_ms.p50 > 0.0, "{what}");
            assert!(c.split_overhead.unwrap().is_finite());
            assert!(c.latency_ms.p50 >= c.a2a_ms);
            assert_eq!(
                c.gate_timeouts, 0,
                "{what}: the launch gate's watchdog fired"
            );
            if let Some(cap) = c.capacity {
                assert!(c.load.iter().all(|&l| l <= cap), "{what}: over capacity");
            }
        }
    }
    // Ungated under the emulator (see tiny_setup), and the report says so.
    assert_eq!(
        rep.setup.gated,
        !cfg!(feature = "emulate"),
        "launch gate: {:?}",
        rep.setup.gate_note
    );
    // The report serialises and renders.
    let j = serde_json::to_string(&rep).unwrap();
    assert!(j.contains("\"bar\""));
    let dir = std::env::temp_dir().join(format!("capmoe-gpu-ep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let figs = gpu::plot::write_figures(&dir, &rep).unwrap();
    assert_eq!(figs.len(), 2);
    let mut md = Vec::new();
    gpu::report::write_markdown(&mut md, &rep).unwrap();
    let md = String::from_utf8(md).unwrap();
    assert!(md.contains("drop:score") && md.contains("## Skipped"));
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "{}",
        String::from_utf8({
            let mut t = Vec::new();
            gpu::report::write_table(&mut t, &rep).unwrap();
            t
        })
        .unwrap()
    );
}

/// The method: a rank's experts run alone over their span of the layout
/// (`ExpertFfn::forward_experts`, what the bench times per rank) give the
/// same outputs as the whole layer's forward gives those rows.
#[test]
fn rank_experts_match_the_whole_layer_rows() {
    let Some(gpu) = gpu() else { return };
    let (t, e, h, i) = (256usize, 8usize, 256usize, 512usize);
    let ffn = ExpertFfn::random(&gpu, FfnShape::new(e, h, i).unwrap(), 3).unwrap();
    let st = gpu.stream();
    let logits = synthetic_logits(t, e, 2, Skew::Mixtral, 1).unwrap();
    let x_host: Vec<u16> = (0..t * h)
        .map(|j| half::bf16::from_f32(((j * 7919 % 1000) as f32 / 500.0) - 1.0).to_bits())
        .collect();
    let x = st.clone_htod(&x_host).unwrap();
    let cfg = RouterConfig::new(2, "drop:score".parse().unwrap()).with_capacity_factor(1.25);
    let router = GpuRouter::new(&gpu, cfg).unwrap();
    let plan = router
        .route(&st.clone_htod(&logits).unwrap(), t, e)
        .unwrap();
    let d = plan.dispatch(1).unwrap();
    let rows = plan.gather_bf16(&d, &x, h).unwrap();
    let y = st
        .clone_dtoh(&ffn.forward(&plan, &d, &rows).unwrap())
        .unwrap();
    let layout = d.to_host(&plan).unwrap();
    let offs = layout.offsets();
    for ranks in [8, 4] {
        let placement = Placement::new(ranks, e, t).unwrap();
        for r in 0..ranks {
            let experts = placement.expert_group(r);
            let span = offs[experts.start] as usize..offs[experts.end] as usize;
            let served: u32 = layout.counts()[experts.clone()].iter().sum();
            assert_eq!(
                span.len(),
                served as usize,
                "EP {ranks} rank {r}: rows (tile 1)"
            );
            if span.is_empty() {
                continue;
            }
            let ry = ffn
                .forward_experts(&plan, &d, &rows, experts, span.clone())
                .unwrap();
            let got = st.clone_dtoh(&ry).unwrap()[span.start * h..span.end * h].to_vec();
            let want = &y[span.start * h..span.end * h];
            if let Err(m) = compare(&got, want) {
                panic!("EP {ranks} rank {r}: {m}");
            }
            let exact = got.iter().zip(want).filter(|(a, b)| a == b).count();
            eprintln!(
                "EP {ranks} rank {r}: {} rows, {exact}/{} bf16 outputs bit-identical",
                span.len(),
                want.len()
            );
        }
    }
}

#[test]
fn cli_runs_the_gpu_bench_or_says_why_not() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_capmoe"));
    if !exe.exists() {
        // The gpu-check pack carries test binaries, not capmoe itself.
        eprintln!("skipped: {} is not on this machine", exe.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("capmoe-gpu-ep-cli-{}", std::process::id()));
    let mut cmd = std::process::Command::new(exe);
    if cfg!(feature = "emulate") {
        cmd.env("CAPMOE_NO_GATE", "1");
    }
    let out = cmd
        .args([
            "bench",
            "--device",
            "cuda",
            "--config",
            "small",
            "--hidden",
            "256",
            "--intermediate",
            "512",
            "--tokens",
            "64",
            "--ranks",
            "8",
            "--skew",
            "mixtral",
            "--policies",
            "none,drop:score",
            "--capacity-factors",
            "1.5",
            "--iters",
            "2",
            "--min-case-ms",
            "0",
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
    assert_eq!(v["groups"].as_array().unwrap().len(), 1);
    assert_eq!(v["groups"][0]["cases"].as_array().unwrap().len(), 2);
    for f in [
        "report.json",
        "report.md",
        "gpu-speedup-T64.png",
        "gpu-latency-T64.png",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A full benchmark run when `CAPMOE_GPU_BENCH_ARGS` gives its flags.
#[test]
fn full_bench_from_env() {
    let Ok(flags) = std::env::var("CAPMOE_GPU_BENCH_ARGS") else {
        eprintln!("skipped: set CAPMOE_GPU_BENCH_ARGS to the flags of `capmoe bench` to run a full benchmark");
        return;
    };
    if gpu().is_none() {
        return;
    }
    // The CLI is the binary's, not the library's: run it. gpu-check packs it and names it in
    // CAPMOE_BIN; a cargo build has it at CARGO_BIN_EXE_capmoe.
    let exe = std::env::var_os("CAPMOE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_capmoe").into());
    assert!(
        exe.exists(),
        "CAPMOE_GPU_BENCH_ARGS is set but the capmoe binary is not at {} (set CAPMOE_BIN)",
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
