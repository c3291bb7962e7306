use super::*;
use crate::routing::{route, Logits, Placement, Policy, RouterConfig};
use crate::trace::{synthetic_logits, Skew};

fn obs(demand: &[u64], served: &[u64], dropped: u64, kept: f64, ranks: &[u64]) -> LayerObservation {
    LayerObservation {
        tokens: 4,
        top_k: 2,
        demand: demand.to_vec(),
        served: served.to_vec(),
        dropped,
        rerouted: 1,
        gate_mass_kept: kept,
        rank_rows: ranks.to_vec(),
        capacity: None,
    }
}

#[test]
fn window_statistics_equal_hand_computed_values() {
    let mut m = LoadMonitor::new(2, 0.5).unwrap();
    m.observe(0, obs(&[6, 2], &[4, 2], 2, 0.5, &[6])).unwrap();
    m.observe(0, obs(&[4, 4], &[4, 4], 0, 1.0, &[8])).unwrap();
    m.observe(0, obs(&[8, 0], &[4, 0], 4, 0.25, &[4])).unwrap(); // evicts the first
    let s = &m.snapshot()[0];
    assert_eq!(s.forwards, 2);
    assert_eq!(s.mean_demand, vec![6.0, 2.0]);
    assert_eq!(s.mean_served, vec![4.0, 2.0]);
    assert_eq!(s.mean_rank_rows, vec![6.0]);
    assert_eq!(s.balancedness, 3.0 / 4.0); // mean 3 over max 4
    assert_eq!(s.imbalance, 6.0 / 4.0 - 1.0); // max 6 over mean 4
    assert_eq!((s.dropped, s.rerouted), (4, 2));
    assert_eq!(s.gate_mass_kept, 0.625);
    // EMA of the share of expert 0: 0.75, then 0.75 + 0.5 (0.5 - 0.75), then + 0.5 (1 - 0.625).
    assert_eq!(s.demand_share_ema, vec![0.8125, 0.1875]);
    // Sorted shares: 0.75, 0.5, 1 for the hottest expert, whichever it was.
    assert_eq!(s.demand_profile_ema, vec![0.8125, 0.1875]);
}

#[test]
fn memory_is_bounded_by_the_window() {
    let mut m = LoadMonitor::new(4, 0.1).unwrap();
    for i in 0..10_000u64 {
        m.observe(3, obs(&[i, 1], &[1, 1], 0, 1.0, &[2])).unwrap();
    }
    let s = m.snapshot();
    assert_eq!(s.len(), 4);
    assert_eq!(s[3].forwards, 4);
    assert_eq!(s[0].forwards, 0);
    assert_eq!(s[0].balancedness, 1.0);
}

#[test]
fn bad_monitor_input_is_a_typed_error() {
    assert_eq!(
        LoadMonitor::new(0, 0.5).unwrap_err(),
        OnlineError::ZeroWindow
    );
    for w in [0.0, -1.0, 1.5, f64::NAN] {
        assert!(matches!(
            LoadMonitor::new(4, w),
            Err(OnlineError::BadEma(_))
        ));
    }
    let mut m = LoadMonitor::new(4, 0.5).unwrap();
    m.observe(0, obs(&[1, 1], &[1, 1], 0, 1.0, &[2])).unwrap();
    let e = m
        .observe(0, obs(&[1, 1, 1], &[1, 1, 1], 0, 1.0, &[2]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            OnlineError::Shape {
                what: "experts",
                ..
            }
        ),
        "{e}"
    );
    let e = m.observe(0, obs(&[1, 1], &[1], 0, 1.0, &[2])).unwrap_err();
    assert!(matches!(e, OnlineError::Shape { .. }), "{e}");
}

#[test]
fn observations_from_plans_count_demand_and_rank_rows() {
    let (t, e, k) = (64, 8, 2);
    let logits = synthetic_logits(t, e, k, Skew::Mixtral, 3).unwrap();
    let lg = Logits::new(&logits, t, e).unwrap();
    let mut cfg = RouterConfig::new(k, Policy::Drop(crate::routing::DropRank::Score));
    cfg.capacity_factor = Some(1.0);
    let plan = route(&lg, &cfg).unwrap();
    let pl = Placement::new(4, e, t).unwrap();
    let o = LayerObservation::from_plan(&plan, &pl);
    assert_eq!(o.demand.iter().sum::<u64>(), (t * k) as u64);
    assert_eq!(o.served, plan.stats().load);
    assert_eq!(o.rank_rows.iter().sum::<u64>(), plan.stats().served);
    assert_eq!(o.rank_rows[1], plan.stats().load[2] + plan.stats().load[3]);
}

fn skewed_monitor(shape: MoeShape, seed: u64) -> LoadMonitor {
    let mut m = LoadMonitor::new(8, 0.5).unwrap();
    let pl = Placement::new(shape.ranks, shape.experts, 256).unwrap();
    for f in 0..4 {
        let plans: Vec<_> = (0..shape.layers)
            .map(|l| {
                // OLMoE-like skew needs E/k > 7.
                let skew = if l % 2 == 0 && shape.experts / shape.top_k > 7 {
                    Skew::Olmoe
                } else if l % 2 == 0 {
                    Skew::Mixtral
                } else {
                    Skew::Uniform
                };
                let x = synthetic_logits(
                    256,
                    shape.experts,
                    shape.top_k,
                    skew,
                    seed + f * 31 + l as u64,
                )
                .unwrap();
                route(
                    &Logits::new(&x, 256, shape.experts).unwrap(),
                    &RouterConfig::new(shape.top_k, Policy::None),
                )
                .unwrap()
            })
            .collect();
        m.observe_forward(&plans, &pl).unwrap();
    }
    m
}

#[test]
fn budget_stays_within_budget_and_drops_no_more_than_uniform_gamma_at_equal_cost() {
    let shape = MoeShape {
        layers: 4,
        experts: 64,
        top_k: 8,
        ranks: 8,
    };
    let m = skewed_monitor(shape, 11);
    let ms_model = CostModel {
        unit: "ms".into(),
        ..CostModel::rows(4)
    };
    let mut improved = false;
    for gamma in [1.0, 1.25, 1.5, 2.0] {
        let fixed = ControllerSpec::Fixed(gamma)
            .build(shape, ms_model.clone())
            .unwrap()
            .plan(256, &m)
            .unwrap();
        let mut b = ControllerSpec::BudgetMs(fixed.cost)
            .build(shape, ms_model.clone())
            .unwrap();
        let plan = b.plan(256, &m).unwrap();
        assert!(
            plan.cost <= fixed.cost,
            "gamma {gamma}: {} > {}",
            plan.cost,
            fixed.cost
        );
        let (bd, fd): (f64, f64) = (
            plan.predicted_dropped.iter().sum(),
            fixed.predicted_dropped.iter().sum(),
        );
        assert!(
            bd <= fd + 1e-12,
            "gamma {gamma}: budget drops {bd}, uniform {fd}"
        );
        improved |= bd < fd - 1e-9;
    }
    assert!(
        improved,
        "spending by predicted load never beat a uniform gamma"
    );
}

#[test]
fn the_row_bound_holds_for_routed_plans() {
    let (t, e, k, r) = (512, 16, 4, 4);
    for skew in [Skew::Uniform, Skew::Mixtral] {
        let x = synthetic_logits(t, e, k, skew, 5).unwrap();
        let lg = Logits::new(&x, t, e).unwrap();
        for policy in Policy::all().into_iter().filter(|p| p.has_capacity()) {
            let mut cfg = RouterConfig::new(k, policy);
            cfg.capacity_factor = Some(1.25);
            cfg.ranks = r;
            let plan = route(&lg, &cfg).unwrap();
            let c = plan.capacity().unwrap().per_expert;
            let pl = Placement::new(r, e, t).unwrap();
            let busiest = *LayerObservation::from_plan(&plan, &pl)
                .rank_rows
                .iter()
                .max()
                .unwrap();
            let bound = rank_rows_bound(c, e / r, t, k);
            // expand:local may serve more than k per token, but never more than capacity.
            assert!(busiest <= ((e / r) as u64) * c, "{policy}: {busiest}");
            if !matches!(policy, Policy::ExpandLocal) {
                assert!(busiest <= bound, "{policy}: {busiest} > {bound}");
            }
        }
    }
}

#[test]
fn prediction_recovers_within_ten_forwards_after_a_skew_shift() {
    // The controller predicts from the demand profile (sorted shares). A shift of which
    // experts are hot leaves it unchanged; a shift of how skewed the layer is decays
    // geometrically (weight 0.25: below a tenth of the jump within 10 forwards, 0.75^9 < 0.1).
    let mut m = LoadMonitor::new(16, 0.25).unwrap();
    let a = [60u64, 20, 10, 10];
    for _ in 0..20 {
        m.observe(0, obs(&a, &a, 0, 1.0, &[100])).unwrap();
    }
    let err = |m: &LoadMonitor, want: [f64; 4]| -> f64 {
        let p = m.demand_profile(0).unwrap();
        p.iter().zip(want).map(|(s, x)| (s - x).abs()).sum()
    };
    let moved = [10u64, 10, 20, 60];
    m.observe(0, obs(&moved, &moved, 0, 1.0, &[100])).unwrap();
    assert!(
        err(&m, [0.6, 0.2, 0.1, 0.1]) < 1e-12,
        "hot experts moved, profile must not"
    );
    let b = [30u64, 30, 20, 20];
    let want = [0.3, 0.3, 0.2, 0.2];
    let before = err(&m, want);
    let mut after = Vec::new();
    for _ in 0..10 {
        m.observe(0, obs(&b, &b, 0, 1.0, &[100])).unwrap();
        after.push(err(&m, want));
    }
    assert!(after.windows(2).all(|w| w[1] < w[0]), "{after:?}");
    assert!(after[9] < 0.1 * before, "{} vs {before}", after[9]);
}

#[test]
fn controller_spellings_and_bad_budgets() {
    assert_eq!(
        "fixed:1.5".parse::<ControllerSpec>().unwrap(),
        ControllerSpec::Fixed(1.5)
    );
    assert_eq!(
        "budget:35ms".parse::<ControllerSpec>().unwrap(),
        ControllerSpec::BudgetMs(35.0)
    );
    assert_eq!(
        "budget:1.2x".parse::<ControllerSpec>().unwrap(),
        ControllerSpec::BudgetRatio(1.2)
    );
    for bad in [
        "budget:0x",
        "budget:-1ms",
        "budget:nanx",
        "budget:infms",
        "budget:5",
        "fixed:0",
        "fixed:1e9",
        "gamma:1",
        "",
    ] {
        assert!(
            matches!(bad.parse::<ControllerSpec>(), Err(OnlineError::Parse(_))),
            "{bad}"
        );
    }
    let shape = MoeShape {
        layers: 2,
        experts: 8,
        top_k: 2,
        ranks: 2,
    };
    let m = LoadMonitor::new(4, 0.5).unwrap();
    let e = ControllerSpec::BudgetRatio(0.001)
        .build(shape, CostModel::rows(2))
        .unwrap()
        .plan(1024, &m)
        .unwrap_err();
    assert!(matches!(e, OnlineError::BudgetInfeasible { .. }), "{e}");
    assert!(
        ControllerSpec::BudgetMs(5.0)
            .build(shape, CostModel::rows(2))
            .is_err(),
        "ms needs a calibrated model"
    );
    assert!(
        ControllerSpec::Fixed(1.0)
            .build(shape, CostModel::rows(3))
            .is_err(),
        "layers disagree"
    );
    let bad = MoeShape { ranks: 3, ..shape };
    assert!(ControllerSpec::Fixed(1.0)
        .build(bad, CostModel::rows(2))
        .is_err());
    let mut nan = CostModel::rows(2);
    nan.layers[1].per_row = f64::NAN;
    assert!(ControllerSpec::Fixed(1.0).build(shape, nan).is_err());
}

#[test]
fn expositions_render_every_layer() {
    let shape = MoeShape {
        layers: 2,
        experts: 8,
        top_k: 2,
        ranks: 2,
    };
    let m = skewed_monitor(shape, 2);
    let snap = m.snapshot();
    let text = prometheus(&snap);
    assert!(text.contains("# TYPE capmoe_moe_balancedness gauge"));
    assert!(text.contains("capmoe_moe_expert_demand{layer=\"1\",expert=\"7\"}"));
    let lines = json_lines(9, &snap);
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["forward"], 9);
    assert_eq!(rows[1]["layer"], 1);
}

#[test]
fn gamma_for_capacity_hits_every_capacity_exactly() {
    for (t, k, e) in [
        (1, 1, 1),
        (3, 2, 8),
        (4096, 2, 8),
        (16384, 8, 256),
        (7, 3, 5),
        (1000, 6, 60),
    ] {
        for c in [1u64, 2, 3, 7, 100, 1536, 4096, 131_072] {
            match gamma_for_capacity(c, t, k, e) {
                Some(g) => assert_eq!(
                    crate::routing::capacity(g, t, k, e).unwrap(),
                    c,
                    "{t} {k} {e} {c}"
                ),
                None => assert!(
                    c as f64 > crate::routing::MAX_CAPACITY_FACTOR * (t * k) as f64 / e as f64
                ),
            }
        }
    }
    assert_eq!(gamma_for_capacity(0, 8, 2, 8), None);
    assert_eq!(gamma_for_capacity(3, 0, 2, 8), None);
}

#[test]
fn the_cost_fit_recovers_a_line_and_refuses_what_cannot_be_fitted() {
    use super::fit_layer_cost;
    let pts: Vec<(f64, f64)> = [100.0, 150.0, 220.0, 300.0]
        .iter()
        .map(|&r| (r, 0.4 + 0.01 * r))
        .collect();
    let (c, r2) = fit_layer_cost(&pts).unwrap();
    assert!(
        (c.fixed - 0.4).abs() < 1e-9 && (c.per_row - 0.01).abs() < 1e-12,
        "{c:?}"
    );
    assert!((r2 - 1.0).abs() < 1e-9);
    // A negative intercept is clamped, the slope refitted through the origin.
    let (c, _) = fit_layer_cost(&[(100.0, 0.5), (200.0, 1.6)]).unwrap();
    assert_eq!(c.fixed, 0.0);
    assert!(
        (c.per_row - (100.0 * 0.5 + 200.0 * 1.6) / (100.0f64.powi(2) + 200.0f64.powi(2))).abs()
            < 1e-12
    );
    assert!(fit_layer_cost(&[(100.0, 1.0), (100.0, 2.0)]).is_err());
    assert!(fit_layer_cost(&[(100.0, 1.0)]).is_err());
    assert!(fit_layer_cost(&[(100.0, f64::NAN), (200.0, 1.0)]).is_err());
    assert!(fit_layer_cost(&[(100.0, 2.0), (200.0, 1.0)]).is_err());
}

/// Two layers of 2 experts, one per rank, k = 1, each seen once routing 100 tokens at capacity
/// 50 with demand `hot` / `100 - hot` (so `hot - 50` slots dropped), keeping `kept[l]` of its mass.
fn two_layers_seen_at_50(hot: u64, kept: [f64; 2]) -> (MoeShape, LoadMonitor) {
    let shape = MoeShape {
        layers: 2,
        experts: 2,
        top_k: 1,
        ranks: 2,
    };
    let mut m = LoadMonitor::new(4, 0.5).unwrap();
    for (l, kept) in kept.into_iter().enumerate() {
        let o = LayerObservation {
            tokens: 100,
            top_k: 1,
            demand: vec![hot, 100 - hot],
            served: vec![50, 100 - hot],
            dropped: hot - 50,
            rerouted: 0,
            gate_mass_kept: kept,
            rank_rows: vec![50, 100 - hot],
            capacity: Some(50),
        };
        m.observe(l, o).unwrap();
    }
    (shape, m)
}

/// A layer whose marginal dropped slots were cheap (drop:score cut only its smallest p) is not
/// starved below the capacity it was seen at: slots under it are valued as average slots.
#[test]
fn budget_does_not_starve_a_layer_whose_marginal_drops_were_cheap() {
    // Both layers demand 70 / 30; layer 0's 20 dropped slots carried 1% of its mass (0.05 of
    // an average slot each), layer 1's 15% (0.75 of an average slot).
    let (shape, m) = two_layers_seen_at_50(70, [0.99, 0.85]);
    let mut ctl = ControllerSpec::BudgetRatio(1.0)
        .build(shape, CostModel::rows(2))
        .unwrap();
    let plan = ctl.plan(100, &m).unwrap();
    // Balanced capacity is 50 for both; the budget is their rows. Layer 0 keeps its 50.
    assert!(plan.capacity[0] >= 50, "{:?}", plan.capacity);
    assert!(plan.cost <= plan.budget.unwrap() + 1e-9);
}

/// Under a reroute policy a budget that affords the balanced capacity keeps every layer at or
/// above it (below it slots are lost whatever the reroute does); under drop:score it may not.
#[test]
fn budget_for_reroute_keeps_every_layer_at_the_balanced_capacity() {
    let (shape, m) = two_layers_seen_at_50(90, [0.99, 0.5]);
    let plan = |p: &str| {
        ControllerSpec::BudgetRatio(1.0)
            .build_for(shape, CostModel::rows(2), p.parse().unwrap())
            .unwrap()
            .plan(100, &m)
            .unwrap()
    };
    let reroute = plan("reroute:next-best");
    assert!(
        reroute.capacity.iter().all(|&c| c >= 50),
        "{:?}",
        reroute.capacity
    );
    assert!(reroute.cost <= reroute.budget.unwrap() + 1e-9);
    // drop:score spends layer 0's share on layer 1, whose drops carry more mass.
    let drop = plan("drop:score");
    assert!(
        drop.capacity[1] > 50 && drop.capacity[0] < 50,
        "{:?}",
        drop.capacity
    );
}
