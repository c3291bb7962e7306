use super::rounds::{next_tokens, CaseTimes};
use super::*;
use crate::model::Model;
use crate::routing::Policy;

fn setup() -> BenchSetup {
    BenchSetup {
        batch: 1,
        seq_len: 8,
        ranks: 2,
        policies: vec![Policy::None, "drop:score".parse().unwrap()],
        capacity_factors: vec![1.0, 1.0, 2.0],
        iters: 1,
        a2a_gbps: 10.0,
        elem_bytes: 2,
        seed: 0,
        load_layer: 0,
        model_label: "tiny".into(),
        skew_label: "uniform".into(),
        throughput: false,
        decode_steps: 0,
        interleave: true,
        layer_cases: Vec::new(),
    }
}

#[test]
fn cases_put_none_first_and_drop_duplicates() {
    let s = BenchSetup {
        policies: vec!["drop:score".parse().unwrap()],
        ..setup()
    };
    let c = s.cases();
    assert_eq!(c.len(), 3);
    assert_eq!(c[0], (Policy::None, None));
    assert_eq!(c[2].1, Some(2.0));
}

#[test]
fn validation_names_the_bad_value() {
    assert!(setup().validate(4, 2).is_ok());
    let bad = BenchSetup {
        capacity_factors: vec![0.0],
        ..setup()
    };
    assert!(matches!(
        bad.validate(4, 2),
        Err(EpError::InvalidCapacityFactor(_))
    ));
    assert!(matches!(
        BenchSetup {
            ranks: 3,
            ..setup()
        }
        .validate(4, 2),
        Err(EpError::RanksDoNotDivideExperts { .. })
    ));
    assert!(matches!(
        BenchSetup {
            iters: 0,
            ..setup()
        }
        .validate(4, 2),
        Err(EpError::Zero { .. })
    ));
    assert!(matches!(
        BenchSetup {
            a2a_gbps: f64::NAN,
            ..setup()
        }
        .validate(4, 2),
        Err(EpError::InvalidBandwidth(_))
    ));
}

#[test]
fn next_tokens_take_each_rows_argmax() {
    assert_eq!(next_tokens(&[0.1, 0.9, 0.0, 2.0, 1.0, 3.0], 3), vec![1, 2]);
    assert!(next_tokens(&[], 3).is_empty());
}

#[test]
fn throughput_is_tokens_over_median_time() {
    let s = BenchSetup {
        batch: 4,
        decode_steps: 2,
        throughput: true,
        ..setup()
    };
    let t = CaseTimes {
        rank: Vec::new(),
        prefill: vec![30.0, 10.0, 20.0],
        decode: vec![2.0, 2.0, 4.0],
    };
    let th = t.throughput(&s, 32, 8.0);
    assert_eq!(th.prefill_ms, 20.0);
    assert!((th.prefill_tok_s - 1600.0).abs() < 1e-9);
    assert_eq!(th.decode_step_ms, Some(2.0));
    assert!((th.decode_tok_s.unwrap() - 2000.0).abs() < 1e-9);
    assert!((th.ep_prefill_tok_s - 4000.0).abs() < 1e-9);
    let none = CaseTimes {
        decode: Vec::new(),
        ..t
    };
    assert_eq!(none.throughput(&s, 32, 8.0).decode_tok_s, None);
}

/// Timing each case right after its forward pass (the GPU's order)
/// gives the same plans and fidelity as the interleaved rounds, and
/// throughput fills every case.
#[test]
fn per_case_timing_matches_interleaved_and_reports_throughput() {
    use crate::backend::CpuBackend;
    use crate::model::{InitOptions, MixtralConfig};
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let model = Model::random(
        CpuBackend,
        cfg,
        &InitOptions::new(2).with_skew(crate::trace::Skew::Ratio(1.6)),
    )
    .unwrap();
    let a = run(&model, &setup(), &crate::progress::NoProgress).unwrap();
    let s = BenchSetup {
        throughput: true,
        decode_steps: 2,
        interleave: false,
        layer_cases: Vec::new(),
        ..setup()
    };
    let b = run(&model, &s, &crate::progress::NoProgress).unwrap();
    assert_eq!(a.cases.len(), b.cases.len());
    // Each round's speedup: `none` over itself is exactly 1; the others are ordered.
    assert_eq!(a.cases[0].summary.speedup_moe_spread, [1.0; 3]);
    for c in &a.cases {
        let [lo, mid, hi] = c.summary.speedup_moe_spread;
        assert!(
            lo <= mid && mid <= hi && lo > 0.0,
            "{:?}",
            c.summary.speedup_moe_spread
        );
        let s = &c.summary;
        assert_eq!(s.above_ideal, s.speedup_moe > 1.02 * s.ideal_speedup);
    }
    for (x, y) in a.cases.iter().zip(&b.cases) {
        assert!(x.summary.throughput.is_none());
        let t = y.summary.throughput.as_ref().unwrap();
        assert!(t.prefill_tok_s > 0.0 && t.decode_tok_s.unwrap() > 0.0);
        assert_eq!(t.decode_steps, 2);
        assert_eq!(x.summary.fidelity.kl, y.summary.fidelity.kl);
        assert_eq!(x.summary.fidelity.top1, y.summary.fidelity.top1);
        for (lx, ly) in x.layers.iter().zip(&y.layers) {
            assert_eq!(lx.load, ly.load);
            assert_eq!(lx.dropped, ly.dropped);
            assert!(ly.rank_ms.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }
    let mut md = Vec::new();
    report::write_markdown(&mut md, &b).unwrap();
    let md = String::from_utf8(md).unwrap();
    assert!(md.contains("## Throughput"), "{md}");
    let mut md = Vec::new();
    report::write_markdown(&mut md, &a).unwrap();
    assert!(!String::from_utf8(md).unwrap().contains("## Throughput"));
}

/// A per-layer case runs each layer at its own gamma: with every layer at one gamma it routes
/// exactly as the uniform case does (same load, drops, capacity, fidelity); with gammas that
/// differ, each layer's capacity is its own, and the case reports their mean. Bad cases are
/// typed errors.
#[test]
fn per_layer_cases_route_each_layer_at_its_gamma() {
    use crate::backend::CpuBackend;
    use crate::model::{InitOptions, MixtralConfig};
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let layers = cfg.num_hidden_layers;
    let model = Model::random(
        CpuBackend,
        cfg.clone(),
        &InitOptions::new(2).with_skew(crate::trace::Skew::Ratio(1.6)),
    )
    .unwrap();
    let drop: Policy = "drop:score".parse().unwrap();
    // Each layer at a gamma the uniform cases also run (1.0 or 2.0), alternating.
    let gammas: Vec<f64> = (0..layers).map(|l| 1.0 + (l % 2) as f64).collect();
    let s = BenchSetup {
        layer_cases: vec![
            LayerCase {
                label: "flat".into(),
                policy: drop,
                gammas: vec![1.0; layers],
            },
            LayerCase {
                label: "mixed".into(),
                policy: drop,
                gammas: gammas.clone(),
            },
        ],
        ..setup()
    };
    let r = run(&model, &s, &crate::progress::NoProgress).unwrap();
    let uniform = r.case("drop:score", Some(1.0)).unwrap();
    let flat = r.cases.iter().find(|c| c.policy == "flat").unwrap();
    assert_eq!(flat.capacity_factor, Some(1.0));
    assert_eq!(flat.capacity, None);
    for (a, b) in uniform.layers.iter().zip(&flat.layers) {
        assert_eq!(
            (&a.load, a.dropped, a.capacity),
            (&b.load, b.dropped, b.capacity)
        );
    }
    assert_eq!(uniform.summary.fidelity.kl, flat.summary.fidelity.kl);
    let mixed = r.cases.iter().find(|c| c.policy == "mixed").unwrap();
    let mean = gammas.iter().sum::<f64>() / layers as f64;
    assert_eq!(mixed.capacity_factor, Some(mean));
    let wide = r.case("drop:score", Some(2.0)).unwrap();
    for (l, (m, &g)) in mixed.layers.iter().zip(&gammas).enumerate() {
        let same = if g == 1.0 { uniform } else { wide };
        assert_eq!(m.capacity, same.layers[l].capacity, "layer {l}");
    }
    // Layer 0 sees the same input under both (later layers see what earlier ones made).
    assert_eq!(mixed.layers[0].load, uniform.layers[0].load);
    assert!(wide.layers[1].capacity > uniform.layers[1].capacity);
    for bad in [
        LayerCase {
            label: "short".into(),
            policy: drop,
            gammas: vec![1.0],
        },
        LayerCase {
            label: "no capacity".into(),
            policy: Policy::None,
            gammas: vec![1.0; layers],
        },
        LayerCase {
            label: "nan".into(),
            policy: drop,
            gammas: vec![f64::NAN; layers],
        },
        LayerCase {
            label: "drop:score".into(),
            policy: drop,
            gammas: vec![1.0; layers],
        },
    ] {
        let s = BenchSetup {
            layer_cases: vec![bad],
            ..setup()
        };
        let e = run(&model, &s, &crate::progress::NoProgress).unwrap_err();
        assert!(matches!(e, EpError::LayerCase { .. }), "{e}");
    }
}
