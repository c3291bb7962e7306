//! GPU routing kernels against the CPU oracle. Plans must be bit-identical
//! (experts, order, weights, probabilities, statistics), and so must the
//! dispatch layout, the overflow list and the f32 combine. Without a GPU
//! every test prints why and passes as skipped.
#![cfg(feature = "cuda")]

use capmoe::cuda::{GpuContext, GpuError, GpuPlan, GpuRouter};
use capmoe::routing::{
    combine, route, CapacityScope, DispatchLayout, Logits, Policy, RouterConfig,
};
use capmoe::trace::{Rng, Skew};

fn gpu() -> Option<GpuContext> {
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

/// Randomised and adversarial logits: spread, ties, one hot expert, all equal.
fn cases() -> Vec<(String, usize, usize, usize, Vec<f32>)> {
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    for &(t, e, k) in &[
        (0usize, 8usize, 2usize),
        (1, 8, 2),
        (1, 8, 8),
        (37, 8, 2),
        (256, 8, 2),
        (512, 64, 8),
        (300, 16, 16),
        (1024, 256, 8),
        (64, 512, 4),
        (70, 40, 3),
        (33, 100, 5),
        (20, 384, 8),
        (45, 30, 3),
    ] {
        let spread: Vec<f32> = (0..t * e).map(|_| rng.normal() as f32 * 2.0).collect();
        out.push((format!("spread T{t} E{e} k{k}"), t, e, k, spread));
        let ties: Vec<f32> = (0..t * e)
            .map(|_| (rng.next_u64() % 3) as f32 * 0.5)
            .collect();
        out.push((format!("ties T{t} E{e} k{k}"), t, e, k, ties));
        let hot: Vec<f32> = (0..t * e)
            .map(|i| rng.normal() as f32 + if i % e == 0 { 9.0 } else { 0.0 })
            .collect();
        out.push((format!("hot T{t} E{e} k{k}"), t, e, k, hot));
        out.push((format!("equal T{t} E{e} k{k}"), t, e, k, vec![0.0; t * e]));
    }
    let skewed = capmoe::trace::synthetic_logits(4096, 8, 2, Skew::Mixtral, 3).unwrap();
    out.push(("mixtral-skew T4096 E8 k2".into(), 4096, 8, 2, skewed));
    out
}

/// Logits on the device; T = 0 gets a one-element buffer, as `route_host`
/// does (cuMemAlloc rejects 0 bytes).
fn upload(g: &GpuContext, logits: &[f32]) -> cudarc::driver::CudaSlice<f32> {
    let data = if logits.is_empty() {
        &[0.0f32][..]
    } else {
        logits
    };
    g.stream().clone_htod(data).unwrap()
}

/// Routes on the device, raising next-best's round limit once when a
/// displacement chain needs more synchronous rounds than the default
/// (2E + 16). Converged rounds exit early on a device flag, so the raised limit
/// costs launches, not work: 16E + 64 rounds are at most ~8200 x ~12 launches.
fn gpu_plan(g: &GpuContext, cfg: &RouterConfig, logits: &[f32], t: usize, e: usize) -> GpuPlan {
    let d = upload(g, logits);
    for rounds in [None, Some(16 * e + 64)] {
        let mut router = GpuRouter::new(g, cfg.clone()).unwrap();
        if let Some(r) = rounds {
            router = router.with_max_rounds(r);
        }
        let plan = router.route(&d, t, e).unwrap();
        match plan.to_host() {
            Err(GpuError::NotConverged { .. }) => continue,
            Err(err) => panic!("{cfg:?}: {err}"),
            Ok(_) => return plan,
        }
    }
    panic!("{cfg:?}: next-best did not converge within 16 E + 64 rounds (T {t}, E {e})")
}

fn configs(experts: usize, k: usize) -> Vec<RouterConfig> {
    // 4 ranks where E allows, else 1 (expand:local then adds every expert).
    let ranks = if experts % 4 == 0 { 4 } else { 1 };
    let mut v = Vec::new();
    let high_seed = Policy::Drop(capmoe::routing::DropRank::Random {
        seed: u64::MAX - 12345,
    });
    for policy in Policy::all()
        .into_iter()
        .chain([high_seed])
        .filter(|p| *p != Policy::RerouteOptimal)
    {
        for (gamma, scope, renorm) in [
            (1.0, CapacityScope::Expert, false),
            (1.5, CapacityScope::Rank, true),
            (0.3, CapacityScope::Expert, true),
        ] {
            let mut c = RouterConfig::new(k, policy)
                .with_ranks(ranks)
                .with_scope(scope)
                .with_renormalize(renorm);
            if policy.has_capacity() {
                c = c.with_capacity_factor(gamma);
            }
            v.push(c);
        }
    }
    v
}

#[test]
fn gpu_plans_are_bit_identical_to_the_oracle() {
    let Some(g) = gpu() else { return };
    let mut checked = 0;
    // Every plan's summary, settled at the end in one download (E varies
    // across the summaries, so their offsets in the read-back do too).
    let (mut summaries, mut wants, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (name, t, e, k, logits) in cases() {
        let l = Logits::new(&logits, t, e).unwrap();
        for cfg in configs(e, k) {
            let want = route(&l, &cfg).unwrap();
            let plan = gpu_plan(&g, &cfg, &logits, t, e);
            let got = plan.to_host().unwrap();
            assert_eq!(got, want, "{name} {cfg:?}");
            summaries.push(plan.into_summary().unwrap());
            wants.push(want.totals());
            names.push(format!("{name} {cfg:?}"));
            checked += 1;
        }
    }
    // capmoe_plan_stats against PlanTotals: integer sums, so bit for bit.
    let totals = capmoe::cuda::settle(g.stream(), &summaries).unwrap();
    assert_eq!(totals.len(), wants.len());
    for ((got, want), name) in totals.iter().zip(&wants).zip(&names) {
        assert_eq!(got.as_ref().unwrap(), want, "{name}: device totals");
    }
    eprintln!("{checked} plans and their device totals bit-identical");
}

/// The router bias is added inside the gating kernel: the plan equals the
/// oracle's on `logits + bias` summed in f32 on the host (the model's
/// `router_logits`), for spread, tied and hot biases.
#[test]
fn gpu_router_bias_is_added_on_the_device() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(11);
    for &(t, e, k) in &[
        (0usize, 8usize, 2usize),
        (1, 8, 8),
        (97, 8, 2),
        (300, 64, 8),
        (40, 256, 8),
    ] {
        let logits: Vec<f32> = (0..t * e).map(|_| rng.normal() as f32).collect();
        let biases = [
            (0..e)
                .map(|_| rng.normal() as f32 * 1.5)
                .collect::<Vec<f32>>(),
            (0..e).map(|i| (i % 3) as f32 * 0.5).collect(),
            (0..e)
                .map(|i| if i == e / 2 { 8.0 } else { -0.25 })
                .collect(),
        ];
        for bias in biases {
            let mut host = logits.clone();
            for (i, v) in host.iter_mut().enumerate() {
                *v += bias[i % e];
            }
            let l = Logits::new(&host, t, e).unwrap();
            let db = g.stream().clone_htod(&bias).unwrap();
            for cfg in configs(e, k) {
                let want = route(&l, &cfg).unwrap();
                let got = GpuRouter::new(&g, cfg.clone())
                    .unwrap()
                    .with_max_rounds(16 * e + 64)
                    .route_biased(&upload(&g, &logits), Some(&db), t, e)
                    .unwrap()
                    .to_host()
                    .unwrap();
                assert_eq!(got, want, "T{t} E{e} k{k} {cfg:?}");
            }
        }
    }
    // A bias of the wrong length is refused before any launch.
    let router = GpuRouter::new(&g, RouterConfig::new(2, Policy::None)).unwrap();
    let short = g.stream().clone_htod(&[0.0f32; 7]).unwrap();
    match router.route_biased(&upload(&g, &[0.0; 16]), Some(&short), 2, 8) {
        Err(GpuError::Shape { what, .. }) => assert!(what.contains("bias"), "{what}"),
        Err(e) => panic!("expected a Shape error, got {e}"),
        Ok(_) => panic!("a 7-long bias for 8 experts was accepted"),
    }
    // A finite logit that the bias pushes to Inf is named like a bad logit.
    let mut logits = vec![0.0f32; 16];
    logits[13] = f32::MAX;
    let bias = g.stream().clone_htod(&[f32::MAX; 8]).unwrap();
    match router
        .route_biased(&upload(&g, &logits), Some(&bias), 2, 8)
        .unwrap()
        .to_host()
    {
        Err(GpuError::Routing(capmoe::RoutingError::NonFiniteLogit {
            token,
            expert,
            value,
        })) => {
            assert_eq!((token, expert), (1, 5));
            assert_eq!(value, f32::INFINITY);
        }
        other => panic!("expected NonFiniteLogit, got {other:?}"),
    }
}

#[test]
fn gpu_dispatch_overflow_and_combine_match_the_oracle() {
    let Some(g) = gpu() else { return };
    let hidden = 16;
    for (name, t, e, k, logits) in cases() {
        let l = Logits::new(&logits, t, e).unwrap();
        for cfg in configs(e, k) {
            let want = route(&l, &cfg).unwrap();
            let plan = gpu_plan(&g, &cfg, &logits, t, e);
            for tile in [1usize, 8, 64] {
                let cpu = DispatchLayout::new(&want, tile).unwrap();
                let d = plan.dispatch(tile).unwrap();
                let host = d.to_host(&plan).unwrap();
                assert_eq!(host, cpu, "{name} {cfg:?} tile {tile}: the whole layout");
                assert_eq!(host.offsets(), cpu.offsets(), "{name} {cfg:?} tile {tile}");
                assert_eq!(
                    host.row_tokens(),
                    cpu.row_tokens(),
                    "{name} {cfg:?} tile {tile}"
                );
                assert_eq!(
                    host.row_weights(),
                    cpu.row_weights(),
                    "{name} {cfg:?} tile {tile}"
                );
                assert_eq!(
                    host.assignment_rows(),
                    cpu.assignment_rows(),
                    "{name} {cfg:?} tile {tile}"
                );
                assert_eq!(
                    plan.overflow_host().unwrap(),
                    cpu.overflow(),
                    "{name} {cfg:?}"
                );
                let abc = [0x1000_0000u64, 0x2000_0000, 0x3000_0000];
                let args = d.gemm_args(&plan, 96, 64, 2, abc).unwrap();
                let want_args = cpu.gemm_args(96, 64, 2, abc[0], abc[1], abc[2]).unwrap();
                assert_eq!(
                    args.to_host(g.stream()).unwrap(),
                    want_args,
                    "{name} {cfg:?}"
                );
                // Expert outputs: row r, column h holds a value derived from both.
                // (At least one value: device buffers are never empty.)
                let y: Vec<f32> = (0..(d.max_rows() * hidden).max(1))
                    .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
                    .collect();
                let dy = g.stream().clone_htod(&y).unwrap();
                let out = g
                    .stream()
                    .clone_dtoh(&plan.combine_f32(&d, &dy, hidden).unwrap())
                    .unwrap();
                let want_out = combine(&want, &cpu, &y[..cpu.rows() * hidden], hidden).unwrap();
                // T = 0 still gets a one-element buffer; compare the T * hidden in use.
                assert_eq!(
                    out[..want_out.len()]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    want_out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{name} {cfg:?}"
                );
            }
        }
    }
}

#[test]
fn gpu_gather_places_token_rows() {
    let Some(g) = gpu() else { return };
    let (t, e, k, hidden) = (100usize, 8usize, 2usize, 32usize);
    let logits = capmoe::trace::synthetic_logits(t, e, k, Skew::Mixtral, 5).unwrap();
    let l = Logits::new(&logits, t, e).unwrap();
    let cfg = RouterConfig::new(k, "drop:score".parse().unwrap()).with_capacity_factor(1.0);
    let want = DispatchLayout::new(&route(&l, &cfg).unwrap(), 16).unwrap();
    let plan = GpuRouter::new(&g, cfg)
        .unwrap()
        .route(&g.stream().clone_htod(&logits).unwrap(), t, e)
        .unwrap();
    let d = plan.dispatch(16).unwrap();
    let x: Vec<u16> = (0..t * hidden).map(|i| i as u16).collect();
    let rows = g
        .stream()
        .clone_dtoh(
            &plan
                .gather_bf16(&d, &g.stream().clone_htod(&x).unwrap(), hidden)
                .unwrap(),
        )
        .unwrap();
    let expect = want.scatter(&x, t, hidden).unwrap();
    assert_eq!(&rows[..expect.len()], &expect[..]);
}

#[test]
fn gpu_combine_bf16_rounds_the_f32_sum_once() {
    let Some(g) = gpu() else { return };
    let (t, e, k, hidden) = (200usize, 8usize, 2usize, 24usize);
    let logits = capmoe::trace::synthetic_logits(t, e, k, Skew::Mixtral, 11).unwrap();
    let l = Logits::new(&logits, t, e).unwrap();
    let cfg = RouterConfig::new(k, "reroute:next-best".parse().unwrap()).with_capacity_factor(1.0);
    let want_plan = route(&l, &cfg).unwrap();
    let cpu = DispatchLayout::new(&want_plan, 8).unwrap();
    let plan = gpu_plan(&g, &cfg, &logits, t, e);
    let d = plan.dispatch(8).unwrap();
    let y: Vec<u16> = (0..d.max_rows() * hidden)
        .map(|i| half::bf16::from_f32(((i * 29) % 97) as f32 * 0.02 - 1.0).to_bits())
        .collect();
    let out = g
        .stream()
        .clone_dtoh(
            &plan
                .combine_bf16(&d, &g.stream().clone_htod(&y).unwrap(), hidden)
                .unwrap(),
        )
        .unwrap();
    let yf: Vec<f32> = y[..cpu.rows() * hidden]
        .iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect();
    let want: Vec<u16> = combine(&want_plan, &cpu, &yf, hidden)
        .unwrap()
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    assert_eq!(out, want);
}

/// A NaN or Inf logit on device input is the oracle's typed error, not
/// out-of-range experts: the gating kernel records the first one and gives
/// its token in-range experts, so every later kernel (and the dispatch)
/// stays in bounds and the context stays usable.
#[test]
fn gpu_non_finite_logits_are_a_typed_error() {
    let Some(g) = gpu() else { return };
    let (t, e, k) = (40, 64, 4);
    for (at, bad) in [
        (0, f32::NAN),
        (37 * 64 + 63, f32::INFINITY),
        (5 * 64 + 33, f32::NEG_INFINITY),
    ] {
        let mut logits: Vec<f32> = (0..t * e).map(|i| (i % 7) as f32 * 0.25).collect();
        logits[at] = bad;
        // A second bad value later: the lowest index is the one reported.
        logits[t * e - 1] = f32::NAN;
        for policy in ["none", "drop:score", "expand:local", "reroute:next-best"] {
            let p: Policy = policy.parse().unwrap();
            let mut cfg = RouterConfig::new(k, p).with_ranks(4);
            if p.has_capacity() {
                cfg = cfg.with_capacity_factor(1.0);
            }
            let router = GpuRouter::new(&g, cfg).unwrap();
            let plan = router.route(&upload(&g, &logits), t, e).unwrap();
            let d = plan.dispatch(16).unwrap();
            match plan.to_host() {
                Err(GpuError::Routing(capmoe::RoutingError::NonFiniteLogit {
                    token,
                    expert,
                    value,
                })) => {
                    assert_eq!((token, expert), (at / e, at % e), "{policy}");
                    assert_eq!(value.to_bits(), bad.to_bits(), "{policy}");
                }
                other => panic!("{policy}: expected NonFiniteLogit, got {other:?}"),
            }
            // The layout of the flagged plan is in range (no sticky device error).
            let host = d.to_host(&plan).unwrap();
            assert!(host.offsets().windows(2).all(|w| w[0] <= w[1]), "{policy}");
            // Deferred, the same error comes back when the summary settles,
            // in the failing summary's own result (the clean one's is Ok).
            let clean = GpuRouter::new(&g, RouterConfig::new(k, Policy::None))
                .unwrap()
                .route(&upload(&g, &vec![0.5; t * e]), t, e)
                .unwrap();
            let summaries = [clean.into_summary().unwrap(), plan.into_summary().unwrap()];
            let settled = capmoe::cuda::settle(g.stream(), &summaries).unwrap();
            assert!(settled[0].is_ok(), "{policy}: the clean summary");
            match &settled[1] {
                Err(GpuError::Routing(capmoe::RoutingError::NonFiniteLogit {
                    token,
                    expert,
                    value,
                })) => {
                    assert_eq!((*token, *expert), (at / e, at % e), "{policy}");
                    assert_eq!(value.to_bits(), bad.to_bits(), "{policy}");
                }
                other => panic!("{policy}: expected summary 1's NonFiniteLogit, got {other:?}"),
            }
        }
    }
    // The context is still usable: a clean batch routes as on the CPU.
    let logits: Vec<f32> = (0..t * e).map(|i| (i % 5) as f32).collect();
    let cfg = RouterConfig::new(k, Policy::None);
    let want = route(&Logits::new(&logits, t, e).unwrap(), &cfg).unwrap();
    let got = GpuRouter::new(&g, cfg)
        .unwrap()
        .route(&upload(&g, &logits), t, e)
        .unwrap();
    assert_eq!(got.to_host().unwrap(), want);
}

/// A next-best plan cut off before it converged is an error both ways: at
/// `to_host` and when its summary settles (the flag travels in the one
/// read-back).
#[test]
fn gpu_unconverged_next_best_is_an_error_when_deferred_too() {
    let Some(g) = gpu() else { return };
    let (t, e, k) = (64, 8, 2);
    // Every token prefers experts 0 and 1: one round cannot place the overflow.
    let logits: Vec<f32> = (0..t * e)
        .map(|i| [4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.0][i % e])
        .collect();
    let cfg = RouterConfig::new(k, Policy::RerouteNextBest).with_capacity_factor(1.0);
    let plan = GpuRouter::new(&g, cfg)
        .unwrap()
        .with_max_rounds(1)
        .route(&upload(&g, &logits), t, e)
        .unwrap();
    assert!(
        matches!(plan.to_host(), Err(GpuError::NotConverged { rounds: 1 })),
        "one round must not converge on this batch"
    );
    match capmoe::cuda::settle(g.stream(), &[plan.into_summary().unwrap()]).as_deref() {
        Ok([Err(GpuError::NotConverged { rounds: 1 })]) => {}
        other => panic!("expected NotConverged from settle, got {other:?}"),
    }
}

#[test]
fn gpu_refuses_what_it_cannot_do() {
    let Some(g) = gpu() else { return };
    let cfg = RouterConfig::new(2, Policy::RerouteOptimal).with_capacity_factor(1.0);
    assert!(GpuRouter::new(&g, cfg).is_err());
    let router = GpuRouter::new(&g, RouterConfig::new(2, Policy::None)).unwrap();
    let d = g.stream().clone_htod(&[0.0f32; 8]).unwrap();
    assert!(
        router.route(&d, 3, 8).is_err(),
        "length mismatch must be an error"
    );
}

#[test]
fn no_gpu_is_an_error_not_a_panic() {
    // On a machine without a driver this must return Err; with one, Ok.
    let r = GpuContext::new(0);
    if let Err(e) = &r {
        assert!(!e.to_string().is_empty());
    }
    // A device ordinal that cannot exist is always an error.
    assert!(GpuContext::new(4096).is_err());
}
