//! Report assembly and setup checks of the GPU benchmark, on made-up
//! measurements (no GPU).

use super::*;
use crate::ep::{A2aTraffic, LatencyModel};
use crate::routing::Policy;
use crate::trace::Skew;

fn lat() -> LatencyModel {
    LatencyModel {
        a2a_gbps: 100.0,
        elem_bytes: 2,
        hidden: 4096,
    }
}

fn setup() -> GpuBenchSetup {
    GpuBenchSetup {
        label: "mixtral-8x7b".into(),
        shape: LayerShape::MIXTRAL_8X7B,
        tokens: vec![4096, 64],
        ranks: vec![8, 4],
        skews: vec![Skew::Uniform, Skew::Mixtral],
        policies: vec![
            Policy::None,
            "drop:score".parse().unwrap(),
            "reroute:optimal".parse().unwrap(),
        ],
        capacity_factors: vec![1.0, 1.5, 1.5],
        iters: 5,
        warmup: 1,
        min_case_ms: 0.0,
        a2a_gbps: 100.0,
        elem_bytes: 2,
        seed: 0,
        telemetry_ms: 10.0,
        tune: false,
        variants: None,
        launch_gate: true,
        tune_cache: None,
    }
}

/// A measurement whose rank `r` takes `ms[r]` every iteration.
fn measured(policy: &str, gamma: Option<f64>, load: Vec<u64>, ms: &[f64]) -> CaseMeasurement {
    let ranks = ms.len();
    CaseMeasurement {
        policy: policy.into(),
        capacity_factor: gamma,
        capacity: gamma.map(|_| 1000),
        load,
        dropped: 10,
        rerouted: 0,
        gate_mass_kept: 0.99,
        traffic: A2aTraffic {
            send: vec![100; ranks],
            recv: vec![100; ranks],
            total: 100 * ranks as u64,
        },
        rank_ms: vec![ms.to_vec(); 4],
        full_ms: vec![ms.iter().sum::<f64>(); 4],
        routing_ms: vec![0.05; 4],
        host_enqueue_us: 20.0,
        telemetry: Some(telemetry::summarize(
            &[],
            0.0,
            1.0,
            Some((0, 4 * 1000 * 1000)),
        )),
        gate_timeouts: 0,
    }
}

#[test]
fn cases_put_none_first_once_and_keep_unsupported_policies_for_the_run_to_skip() {
    let c = setup().cases();
    assert_eq!(c[0], (Policy::None, None));
    // drop:score and reroute:optimal at 1.0 and 1.5 (the duplicate 1.5 once).
    assert_eq!(c.len(), 1 + 2 * 2);
    assert!(c.contains(&("reroute:optimal".parse().unwrap(), Some(1.5))));
}

#[test]
fn validation_names_the_bad_flag() {
    assert!(setup().validate().is_ok());
    let bad = |f: &dyn Fn(&mut GpuBenchSetup)| {
        let mut s = setup();
        f(&mut s);
        s.validate().unwrap_err().to_string()
    };
    assert!(bad(&|s| s.ranks = vec![8, 3]).contains("3 EP ranks"));
    assert!(bad(&|s| s.tokens = vec![]).contains("--tokens"));
    assert!(bad(&|s| s.tokens = vec![0]).contains("--tokens"));
    assert!(bad(&|s| s.iters = 0).contains("--iters"));
    assert!(bad(&|s| s.capacity_factors = vec![-1.0]).contains("-1"));
    assert!(bad(&|s| s.skews.clear()).contains("--skew"));
    assert!(bad(&|s| s.min_case_ms = f64::NAN).contains("--min-case-ms"));
    assert!(bad(&|s| s.min_case_ms = 1e9).contains("--min-case-ms"));
    assert!(bad(&|s| s.telemetry_ms = 0.0).contains("--telemetry-ms"));
    assert!(bad(&|s| s.telemetry_ms = f64::INFINITY).contains("--telemetry-ms"));
    assert!(bad(&|s| s.warmup = 1_000_000).contains("--warmup"));
    assert!(bad(&|s| s.capacity_factors = vec![1e308]).contains("1e308 is not valid"));
    assert!(bad(&|s| s.a2a_gbps = 0.0).contains("bandwidth"));
}

#[test]
fn group_speedups_are_against_none_and_ideal_is_rows_over_rows() {
    let shape = LayerShape::MIXTRAL_8X7B;
    // 4 ranks of 2 experts. none: rank 0 has 1200 rows and takes 6 ms.
    let none = measured(
        "none",
        None,
        vec![700, 500, 300, 300, 250, 250, 150, 150],
        &[6.0, 3.0, 2.5, 1.5],
    );
    // drop:score caps the busiest rank at 600 rows: 3 ms.
    let drop = measured(
        "drop:score",
        Some(1.0),
        vec![300, 300, 300, 300, 250, 250, 150, 150],
        &[3.0, 3.0, 2.5, 1.5],
    );
    let g = assemble_group(
        4096,
        "mixtral".into(),
        4,
        &shape,
        &lat(),
        ("a".into(), "b".into()),
        &[none, drop],
    );
    assert_eq!(g.experts_per_rank, 2);
    let n = g.case("none", None).unwrap();
    assert_eq!(n.rank_load, vec![1200, 600, 500, 300]);
    assert_eq!(n.max_rank_load, 1200);
    assert_eq!(n.slowest_rank, 0);
    assert_eq!(n.speedup_p50, Some(1.0));
    assert_eq!(n.ideal, Some(1.0));
    let d = g.case("drop:score", Some(1.0)).unwrap();
    assert_eq!(d.ideal, Some(2.0));
    // a2a: 2 * 100 rows * 4096 * 2 B / 100 GB/s = 0.016384 ms, same for both.
    assert!((d.a2a_ms - 0.016384).abs() < 1e-9);
    let want = (6.0 + d.a2a_ms) / (3.0 + d.a2a_ms);
    assert!((d.speedup_p50.unwrap() - want).abs() < 1e-12);
    assert!((d.speedup_expert_p50.unwrap() - 2.0).abs() < 1e-12);
    assert!((d.efficiency_expert.unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(d.meets_bar, Some(true));
    // The slowest rank's tie (3.0, 3.0) goes to the lower rank.
    assert_eq!(d.slowest_rank, 0);
    assert_eq!(d.iterations, 4);
    assert!((d.sum_rank_ms_p50 - 10.0).abs() < 1e-12);
    assert!((d.split_overhead.unwrap() - 1.0).abs() < 1e-12);
    // 4000 J over 4 iterations of 4096 tokens.
    assert!((d.energy_j_per_token.unwrap() - 4000.0 / (4.0 * 4096.0)).abs() < 1e-9);
    assert!((d.dropped_pct - 100.0 * 10.0 / 8192.0).abs() < 1e-12);
    // Rates: 2000 rows in 10 ms.
    let tf = shape.flops(2000) / 1e-2 / 1e12;
    assert!((d.full_tflops.unwrap() - tf).abs() < 1e-9);
    assert!(d.full_weight_gbps.unwrap() > 0.0);

    let bar = bar_rows(std::slice::from_ref(&g), &[1.0, 2.0]);
    assert_eq!(bar.len(), 1);
    assert_eq!(bar[0].policy, "drop:score");
    assert!(bar_rows(&[g], &[]).is_empty());
}

#[test]
fn a_group_without_none_has_no_speedups_and_json_has_no_infinities() {
    let shape = LayerShape::MIXTRAL_8X7B;
    let mut m = measured("drop:score", Some(1.0), vec![0; 8], &[0.0; 8]);
    m.full_ms.clear();
    m.telemetry = None;
    let g = assemble_group(
        64,
        "uniform".into(),
        8,
        &shape,
        &lat(),
        ("a".into(), "a".into()),
        &[m],
    );
    let c = &g.cases[0];
    assert_eq!(c.speedup_p50, None);
    assert_eq!(c.split_overhead, None);
    assert_eq!(c.full_tflops, None);
    assert_eq!(c.energy_j_per_token, None);
    let j = serde_json::to_string(&g).unwrap();
    assert!(!j.contains("inf") && !j.contains("NaN"));
}

#[test]
fn nvml_uuid_is_8_4_4_4_12() {
    let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
    assert_eq!(nvml_uuid(&b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
}

#[test]
fn shape_rates_match_the_ffn_shape() {
    let s = LayerShape::MIXTRAL_8X7B;
    let f = crate::expert::FfnShape::new(8, 4096, 14336).unwrap();
    assert_eq!(s.flops(100), f.flops(100));
    assert_eq!(s.weight_bytes(3), f.weight_bytes(3));
}

/// A whole report from made-up measurements: 2 skews x 2 EP sizes at one T.
fn report() -> GpuBenchReport {
    let shape = LayerShape::MIXTRAL_8X7B;
    let mut groups = Vec::new();
    for skew in ["uniform", "mixtral"] {
        for ranks in [8usize, 4] {
            let mut cases = vec![measured(
                "none",
                None,
                vec![700, 500, 300, 300, 250, 250, 150, 150],
                &vec![2.0; ranks],
            )];
            for (i, p) in ["drop:score", "reroute:next-best"].iter().enumerate() {
                for g in [1.0, 1.5] {
                    let ms: Vec<f64> = (0..ranks).map(|r| 1.0 + 0.1 * (r + i) as f64 * g).collect();
                    cases.push(measured(p, Some(g), vec![300; 8], &ms));
                }
            }
            groups.push(assemble_group(
                4096,
                skew.into(),
                ranks,
                &shape,
                &lat(),
                ("v1".into(), "v2".into()),
                &cases,
            ));
        }
    }
    GpuBenchReport {
        label: "mixtral-8x7b".into(),
        shape,
        device: DeviceInfo {
            name: "NVIDIA H200".into(),
            compute_capability: "90".into(),
            sm_count: 132,
            variants: vec!["v1".into(), "v2".into()],
        },
        setup: GpuSetupInfo {
            tokens: vec![4096],
            ranks: vec![8, 4],
            skews: vec!["uniform".into(), "mixtral".into()],
            policies: vec![
                "none".into(),
                "drop:score".into(),
                "reroute:next-best".into(),
            ],
            capacity_factors: vec![1.0, 1.5],
            iters: 4,
            warmup: 1,
            min_case_ms: 0.0,
            a2a_gbps: 100.0,
            elem_bytes: 2,
            seed: 0,
            tuned: false,
            gated: true,
            gate_note: None,
        },
        latency_model: lat(),
        method: method_lines(),
        fidelity_note: FIDELITY_NOTE.into(),
        telemetry: TelemetryInfo::unavailable("NVML did not initialise", 10.0),
        bar: bar_rows(&groups, &[1.0, 1.5]),
        groups,
        skipped: vec![Skipped {
            tokens: Some(4096),
            skew: Some("mixtral".into()),
            ranks: Some(8),
            policy: Some("reroute:optimal".into()),
            capacity_factor: Some(1.5),
            reason: "policy `reroute:optimal` is not implemented on the GPU yet".into(),
        }],
        figures: Vec::new(),
    }
}

#[test]
fn reports_and_figures_render() {
    let r = report();
    assert_eq!(r.bar.len(), 4 * 2);
    assert!(r.bar.iter().all(|b| b.capacity_factor == 1.5));
    let mut md = Vec::new();
    report::write_markdown(&mut md, &r).unwrap();
    let md = String::from_utf8(md).unwrap();
    for want in [
        "## Bar: layer speedup P50 >= 95% of the ideal ratio",
        "## T = 4096 tokens, skew mixtral, EP 4 ranks x 2 experts (GEMM variants v1 / v2)",
        "| reroute:next-best | 1.5 |",
        "telemetry: unavailable (NVML did not initialise)",
        "T 4096, skew mixtral, EP 8, reroute:optimal, gamma 1.5: policy",
        "## Method",
    ] {
        assert!(md.contains(want), "markdown lacks `{want}`:\n{md}");
    }
    let mut t = Vec::new();
    report::write_table(&mut t, &r).unwrap();
    let t = String::from_utf8(t).unwrap();
    assert!(t.lines().any(|l| l.starts_with("drop:score ")));
    #[cfg(feature = "bench")]
    {
        let dir = std::env::temp_dir().join(format!("capmoe-gpu-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let figs = plot::write_figures(&dir, &r).unwrap();
        let names: Vec<String> = figs
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["gpu-speedup-T4096.png", "gpu-latency-T4096.png"]
        );
        for f in &figs {
            assert!(std::fs::metadata(f).unwrap().len() > 10_000, "{f:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
