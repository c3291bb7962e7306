//! The GPU expert FFN (CUTLASS grouped GEMMs + SwiGLU) and MoE layer against
//! the CPU twin `expert::reference`, for every compiled variant that runs on
//! the GPU, on randomised and adversarial routings: T = 0 and 1, odd row
//! counts, empty experts, one expert holding every token, k = E.
//!
//! Tolerance (`expert::compare`): per element `|gpu - ref| <= |ref| / 64 +
//! rms(ref) / 32`. The reference rounds to bf16 where the kernels do (GEMM1
//! output, SwiGLU output, GEMM2 output) and accumulates in f32, but in a
//! different order, so a rounding may land one bf16 ulp apart and propagate.
//! Weights are compared bit for bit. Without a GPU every test prints why and
//! passes as skipped.
#![cfg(feature = "cuda")]

use capmoe::cuda::{ExpertFfn, GpuContext, GpuError, GpuRouter, MoeLayer};
use capmoe::expert::compare::{compare, compare_served};
use capmoe::expert::reference::{to_host, ExpertFfnRef};
use capmoe::expert::{init, FfnShape};
use capmoe::routing::{route, DispatchLayout, Logits, Policy, RouterConfig};
use capmoe::trace::Rng;

mod gpu_lock;

fn gpu() -> Option<GpuContext> {
    gpu_lock::shared();
    match GpuContext::new(0) {
        Ok(g) => Some(g),
        // Under emulation the fake driver is always there: never skip.
        Err(e) if cfg!(feature = "emulate") => panic!("emulated GPU did not open: {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

struct Case {
    name: String,
    tokens: usize,
    k: usize,
    logits: Vec<f32>,
}

/// Routings over `e` experts: spread, one hot expert, all tokens tied.
fn cases(e: usize) -> Vec<Case> {
    let mut rng = Rng::new(11);
    let mut out = Vec::new();
    for &(t, k) in &[
        (0usize, 2usize),
        (1, 2),
        (1, e),
        (5, 2),
        (37, 2),
        (37, e),
        (300, 2),
    ] {
        let spread = (0..t * e).map(|_| rng.normal() as f32 * 2.0).collect();
        out.push(Case {
            name: format!("spread T{t} k{k}"),
            tokens: t,
            k,
            logits: spread,
        });
        let hot = (0..t * e)
            .map(|i| rng.normal() as f32 + if i % e == e / 2 { 12.0 } else { 0.0 })
            .collect();
        out.push(Case {
            name: format!("hot T{t} k{k}"),
            tokens: t,
            k,
            logits: hot,
        });
    }
    // Every token prefers experts 0 and 1: the others stay empty.
    out.push(Case {
        name: "two experts T64 k2".into(),
        tokens: 64,
        k: 2,
        logits: (0..64 * e)
            .map(|i| if i % e < 2 { 5.0 } else { 0.0 })
            .collect(),
    });
    out
}

fn policies(k: usize, experts: usize) -> Vec<RouterConfig> {
    // Two EP ranks where E allows (expand:local adds the rank's experts).
    let ranks = if experts % 2 == 0 { 2 } else { 1 };
    ["none", "drop:score", "reroute:next-best", "expand:local"]
        .into_iter()
        .map(|p| {
            let p: Policy = p.parse().unwrap();
            let c = RouterConfig::new(k, p).with_ranks(ranks);
            if p.has_capacity() {
                c.with_capacity_factor(1.0)
            } else {
                c
            }
        })
        .collect()
}

/// Token activations: uniform(-1, 1) bf16 from the init hash.
fn activations(tokens: usize, hidden: usize, seed: u32) -> Vec<u16> {
    init::fill_bf16(tokens * hidden, seed, 1.0)
}

fn gather(layout: &DispatchLayout, x: &[u16], hidden: usize) -> Vec<u16> {
    let mut rows = vec![0u16; layout.rows() * hidden];
    for (r, &t) in layout.row_tokens().iter().enumerate() {
        if t != capmoe::routing::PAD {
            let t = t as usize;
            rows[r * hidden..(r + 1) * hidden].copy_from_slice(&x[t * hidden..(t + 1) * hidden]);
        }
    }
    rows
}

const SHAPE: FfnShape = FfnShape {
    experts: 8,
    hidden: 64,
    intermediate: 160,
};

#[test]
fn random_weights_match_the_twin_bit_for_bit() {
    let Some(g) = gpu() else { return };
    for shape in [
        SHAPE,
        FfnShape {
            experts: 3,
            hidden: 24,
            intermediate: 40,
        },
    ] {
        let ffn = ExpertFfn::random(&g, shape, 42).unwrap();
        let twin = ExpertFfnRef::random(shape, 42).unwrap();
        assert_eq!(
            g.stream().clone_dtoh(ffn.w13()).unwrap(),
            twin.w13(),
            "{shape:?} W13"
        );
        assert_eq!(
            g.stream().clone_dtoh(ffn.w2()).unwrap(),
            twin.w2(),
            "{shape:?} W2"
        );
    }
}

#[test]
fn host_weights_upload_interleaved() {
    let Some(g) = gpu() else { return };
    let twin = ExpertFfnRef::random(SHAPE, 5).unwrap();
    // The twin's bf16 values as f32 host experts round-trip exactly.
    let host = to_host(&twin).unwrap();
    let ffn = ExpertFfn::from_host(&g, &host).unwrap();
    assert_eq!(ffn.shape(), SHAPE);
    assert_eq!(g.stream().clone_dtoh(ffn.w13()).unwrap(), twin.w13());
    assert_eq!(g.stream().clone_dtoh(ffn.w2()).unwrap(), twin.w2());
}

/// Every runnable variant (for both GEMMs), and the default choice, against
/// the twin on every case and policy, at a small shape and at an odd one
/// (n and k below one tile, 3 experts).
#[test]
fn ffn_matches_the_twin_for_every_variant() {
    let Some(g) = gpu() else { return };
    let mut checked = 0;
    for shape in [
        SHAPE,
        FfnShape {
            experts: 3,
            hidden: 24,
            intermediate: 40,
        },
    ] {
        let twin = ExpertFfnRef::random(shape, 9).unwrap();
        let base = ExpertFfn::random(&g, shape, 9).unwrap();
        let mut variants: Vec<Option<&str>> = vec![None];
        variants.extend(base.variants().into_iter().map(Some));
        eprintln!("variants on this GPU: {:?}", base.variants());
        let (h, e) = (shape.hidden, shape.experts);
        for v in variants {
            let ffn = match v {
                Some(name) => ExpertFfn::random(&g, shape, 9)
                    .unwrap()
                    .with_variants(name, name)
                    .unwrap(),
                None => ExpertFfn::random(&g, shape, 9).unwrap(),
            };
            for case in cases(e) {
                let x = activations(case.tokens, h, 3);
                let xd = g
                    .stream()
                    .clone_htod(&if x.is_empty() { vec![0u16] } else { x.clone() })
                    .unwrap();
                let logits = Logits::new(&case.logits, case.tokens, e).unwrap();
                for cfg in policies(case.k, e) {
                    let what = format!("{shape:?} {} {} variant {v:?}", case.name, cfg.policy);
                    let plan_h = route(&logits, &cfg).unwrap();
                    let layout = DispatchLayout::new(&plan_h, 1).unwrap();
                    let want = twin.forward(&layout, &gather(&layout, &x, h)).unwrap();
                    let router = GpuRouter::new(&g, cfg.clone())
                        .unwrap()
                        .with_max_rounds(64 * e);
                    // Never a zero-byte upload (T = 0): one element then, as `route` allows.
                    let ld = g
                        .stream()
                        .clone_htod(if case.logits.is_empty() {
                            &[0.0f32][..]
                        } else {
                            &case.logits
                        })
                        .unwrap();
                    let plan = router.route(&ld, case.tokens, e).unwrap();
                    assert_eq!(plan.to_host().unwrap(), plan_h, "{what}: plan");
                    let d = plan.dispatch(1).unwrap();
                    let rows = plan.gather_bf16(&d, &xd, h).unwrap();
                    let y = ffn.forward(&plan, &d, &rows).unwrap();
                    let mut got = g.stream().clone_dtoh(&y).unwrap();
                    got.truncate(layout.rows() * h);
                    compare_served(&layout, h, &got, &want)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} FFN outputs within tolerance");
}

/// A Mixtral-like width (H = 1024, I = 3584 keeps K large enough for many
/// k-tiles and several n-tiles per expert) at a skewed load.
#[test]
fn ffn_matches_the_twin_at_a_wide_shape() {
    let Some(g) = gpu() else { return };
    let shape = FfnShape::new(8, 1024, 3584).unwrap();
    let twin = ExpertFfnRef::random(shape, 1).unwrap();
    let ffn = ExpertFfn::random(&g, shape, 1).unwrap();
    let (t, e) = (200, 8);
    let logits = capmoe::trace::synthetic_logits(t, e, 2, capmoe::trace::Skew::Mixtral, 4).unwrap();
    let x = activations(t, shape.hidden, 8);
    for v in ffn.variants() {
        let ffn = ExpertFfn::random(&g, shape, 1)
            .unwrap()
            .with_variants(v, v)
            .unwrap();
        let cfg = RouterConfig::new(2, Policy::None);
        let plan_h = route(&Logits::new(&logits, t, e).unwrap(), &cfg).unwrap();
        let layout = DispatchLayout::new(&plan_h, 1).unwrap();
        let want = twin
            .forward(&layout, &gather(&layout, &x, shape.hidden))
            .unwrap();
        let router = GpuRouter::new(&g, cfg).unwrap();
        let plan = router
            .route(&g.stream().clone_htod(&logits).unwrap(), t, e)
            .unwrap();
        let d = plan.dispatch(1).unwrap();
        let rows = plan
            .gather_bf16(&d, &g.stream().clone_htod(&x).unwrap(), shape.hidden)
            .unwrap();
        let mut got = g
            .stream()
            .clone_dtoh(&ffn.forward(&plan, &d, &rows).unwrap())
            .unwrap();
        got.truncate(layout.rows() * shape.hidden);
        compare_served(&layout, shape.hidden, &got, &want).unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// The whole layer: routing, gather, FFN and the weighted combine.
#[test]
fn moe_layer_matches_route_reference_and_combine() {
    let Some(g) = gpu() else { return };
    let twin = ExpertFfnRef::random(SHAPE, 2).unwrap();
    let h = SHAPE.hidden;
    for case in cases(SHAPE.experts).into_iter().filter(|c| c.tokens > 0) {
        for cfg in policies(case.k, SHAPE.experts) {
            let what = format!("{} {}", case.name, cfg.policy);
            let layer = MoeLayer::new(
                GpuRouter::new(&g, cfg.clone())
                    .unwrap()
                    .with_max_rounds(64 * SHAPE.experts),
                ExpertFfn::random(&g, SHAPE, 2).unwrap(),
            )
            .unwrap();
            let x = activations(case.tokens, h, 4);
            let (out, plan) = layer
                .forward(
                    &g.stream().clone_htod(&case.logits).unwrap(),
                    &g.stream().clone_htod(&x).unwrap(),
                    case.tokens,
                )
                .unwrap();
            let plan_h = route(
                &Logits::new(&case.logits, case.tokens, SHAPE.experts).unwrap(),
                &cfg,
            )
            .unwrap();
            assert_eq!(plan.to_host().unwrap(), plan_h, "{what}");
            let layout = DispatchLayout::new(&plan_h, 1).unwrap();
            let y = twin.forward(&layout, &gather(&layout, &x, h)).unwrap();
            let y32: Vec<f32> = y.iter().map(|&b| init::from_bf16(b)).collect();
            let want: Vec<u16> = capmoe::routing::combine(&plan_h, &layout, &y32, h)
                .unwrap()
                .into_iter()
                .map(init::to_bf16)
                .collect();
            let got = g.stream().clone_dtoh(&out).unwrap();
            compare(&got, &want).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let Some(g) = gpu() else { return };
    let ffn = ExpertFfn::random(&g, SHAPE, 1).unwrap();
    assert!(matches!(
        ExpertFfn::random(&g, SHAPE, 1)
            .unwrap()
            .with_variants("no_such_variant", "x"),
        Err(GpuError::UnknownVariant { .. })
    ));
    assert!(ExpertFfn::random(
        &g,
        FfnShape {
            experts: 8,
            hidden: 60,
            intermediate: 160
        },
        1
    )
    .is_err());
    // A plan over a different number of experts, and rows that are too short.
    let cfg = RouterConfig::new(2, Policy::None);
    let logits = g.stream().clone_htod(&vec![0.0f32; 4 * 4]).unwrap();
    let plan = GpuRouter::new(&g, cfg.clone())
        .unwrap()
        .route(&logits, 4, 4)
        .unwrap();
    let d = plan.dispatch(1).unwrap();
    let rows = g
        .stream()
        .alloc_zeros::<u16>(d.max_rows() * SHAPE.hidden)
        .unwrap();
    assert!(matches!(
        ffn.forward(&plan, &d, &rows),
        Err(GpuError::Shape { .. })
    ));
    let logits = g.stream().clone_htod(&vec![0.0f32; 4 * 8]).unwrap();
    let plan = GpuRouter::new(&g, cfg)
        .unwrap()
        .route(&logits, 4, 8)
        .unwrap();
    let d = plan.dispatch(1).unwrap();
    let short = g.stream().alloc_zeros::<u16>(1).unwrap();
    assert!(matches!(
        ffn.forward(&plan, &d, &short),
        Err(GpuError::Shape { .. })
    ));
}

/// `forward_layout` (host-made layout, one EP rank's experts) gives the same
/// rows as `forward` for the experts in range, bit for bit (same kernels,
/// same variant), and the twin's rows within tolerance.
#[test]
fn forward_layout_matches_forward_per_rank() {
    let Some(g) = gpu() else { return };
    let twin = ExpertFfnRef::random(SHAPE, 4).unwrap();
    let h = SHAPE.hidden;
    let v = ExpertFfn::random(&g, SHAPE, 4).unwrap().variants()[0];
    let ffn = ExpertFfn::random(&g, SHAPE, 4)
        .unwrap()
        .with_variants(v, v)
        .unwrap();
    for case in cases(SHAPE.experts).into_iter().filter(|c| c.tokens > 0) {
        let cfg =
            RouterConfig::new(case.k, "drop:score".parse().unwrap()).with_capacity_factor(1.0);
        let plan_h = route(
            &Logits::new(&case.logits, case.tokens, SHAPE.experts).unwrap(),
            &cfg,
        )
        .unwrap();
        let layout = DispatchLayout::new(&plan_h, 1).unwrap();
        let x = activations(case.tokens, h, 6);
        let rows_h = gather(&layout, &x, h);
        let want = twin.forward(&layout, &rows_h).unwrap();
        let plan = GpuRouter::new(&g, cfg)
            .unwrap()
            .route(
                &g.stream().clone_htod(&case.logits).unwrap(),
                case.tokens,
                SHAPE.experts,
            )
            .unwrap();
        let d = plan.dispatch(1).unwrap();
        let rows = plan
            .gather_bf16(&d, &g.stream().clone_htod(&x).unwrap(), h)
            .unwrap();
        let mut full = g
            .stream()
            .clone_dtoh(&ffn.forward(&plan, &d, &rows).unwrap())
            .unwrap();
        full.truncate(layout.rows() * h);
        let rows_d = g
            .stream()
            .clone_htod(&[rows_h.as_slice(), &[0]].concat())
            .unwrap();
        for r in 0..4 {
            let experts = 2 * r..2 * r + 2;
            let got = g
                .stream()
                .clone_dtoh(
                    &ffn.forward_layout(&layout, &rows_d, experts.clone())
                        .unwrap(),
                )
                .unwrap();
            let span = layout.offsets()[experts.start] as usize * h
                ..layout.offsets()[experts.end] as usize * h;
            assert_eq!(
                got[span.clone()],
                full[span.clone()],
                "{} rank {r}",
                case.name
            );
            // Over the span alone: zeros around it would shrink rms(ref), and
            // with it the tolerance, by the square root of the span's share.
            compare(&got[span.clone()], &want[span])
                .unwrap_or_else(|e| panic!("{} rank {r}: {e}", case.name));
        }
    }
    assert!(ffn
        .forward_layout(
            &DispatchLayout::new(
                &route(
                    &Logits::new(&[0.0; 8], 1, 8).unwrap(),
                    &RouterConfig::new(2, Policy::None)
                )
                .unwrap(),
                1
            )
            .unwrap(),
            &g.stream().alloc_zeros::<u16>(2 * h).unwrap(),
            3..9
        )
        .is_err());
}

/// The captured layer (`MoeLayerGraph`) replays exactly what the eager layer
/// computes, for fresh inputs written between launches too.
#[test]
fn captured_layer_replays_the_eager_layer() {
    let _alone = gpu_lock::alone();
    let Some(g) = gpu() else { return };
    let h = SHAPE.hidden;
    for policy in ["none", "drop:score", "reroute:next-best", "expand:local"] {
        let p: Policy = policy.parse().unwrap();
        let mut cfg = RouterConfig::new(2, p).with_ranks(2);
        if p.has_capacity() {
            cfg = cfg.with_capacity_factor(1.0);
        }
        let layer = MoeLayer::new(
            GpuRouter::new(&g, cfg)
                .unwrap()
                .with_max_rounds(64 * SHAPE.experts),
            ExpertFfn::random(&g, SHAPE, 3).unwrap(),
        )
        .unwrap();
        for tokens in [1usize, 37, 300] {
            let mut graph = capmoe::cuda::MoeLayerGraph::capture(&layer, tokens).unwrap();
            for seed in [1u32, 2] {
                let mut rng = Rng::new(u64::from(seed) * 1000 + tokens as u64);
                let logits: Vec<f32> = (0..tokens * SHAPE.experts)
                    .map(|_| rng.normal() as f32 * 2.0)
                    .collect();
                let x = activations(tokens, h, seed);
                let (ld, xd) = graph.inputs_mut();
                g.stream().memcpy_htod(&logits, ld).unwrap();
                g.stream().memcpy_htod(&x, xd).unwrap();
                graph.launch().unwrap();
                let got = g.stream().clone_dtoh(graph.output()).unwrap();
                let load = g.stream().clone_dtoh(graph.load()).unwrap();
                let (want, plan) = layer
                    .forward(
                        &g.stream().clone_htod(&logits).unwrap(),
                        &g.stream().clone_htod(&x).unwrap(),
                        tokens,
                    )
                    .unwrap();
                let what = format!("{policy} T{tokens} inputs {seed}");
                assert_eq!(got, g.stream().clone_dtoh(&want).unwrap(), "{what}: output");
                assert_eq!(load, plan.load_host().unwrap(), "{what}: load");
            }
        }
    }
    let layer = MoeLayer::new(
        GpuRouter::new(&g, RouterConfig::new(2, Policy::None)).unwrap(),
        ExpertFfn::random(&g, SHAPE, 3).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        capmoe::cuda::MoeLayerGraph::capture(&layer, 0),
        Err(GpuError::Shape { .. })
    ));
}
