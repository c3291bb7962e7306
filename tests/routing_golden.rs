//! One hand-checked case per policy. Logits are `ln p`, so the softmax gives
//! back `p` (to rounding) and the expected plans can be worked out by hand.

use capmoe::routing::{
    route, CapacityScope, Logits, Policy, RouterConfig, RoutingError, RoutingPlan,
};

fn ln(p: &[f32]) -> Vec<f32> {
    p.iter().map(|v| v.ln()).collect()
}

fn run(logits: &[f32], experts: usize, cfg: RouterConfig) -> RoutingPlan {
    route(
        &Logits::new(logits, logits.len() / experts, experts).unwrap(),
        &cfg,
    )
    .unwrap()
}

fn experts_of(plan: &RoutingPlan) -> Vec<Vec<u32>> {
    (0..plan.tokens())
        .map(|t| plan.assignments(t).map(|a| a.expert).collect())
        .collect()
}

/// 4 tokens, 2 experts, k = 1; every token prefers expert 0 with
/// p0 = 0.9, 0.8, 0.7, 0.95. gamma = 1 gives C = ceil(4 * 1 / 2) = 2.
fn queue() -> Vec<f32> {
    ln(&[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.95, 0.05])
}

fn capped(policy: &str, gamma: f64) -> RouterConfig {
    RouterConfig::new(1, policy.parse().unwrap()).with_capacity_factor(gamma)
}

#[test]
fn none_is_plain_topk() {
    let p = run(&queue(), 2, RouterConfig::new(1, Policy::None));
    assert_eq!(experts_of(&p), vec![vec![0], vec![0], vec![0], vec![0]]);
    assert_eq!(p.stats().load, vec![4, 0]);
    assert_eq!(p.capacity(), None);
    // k = 1: the renormalised top-1 weight is exactly 1.
    assert!(p.weights().iter().all(|&w| w == 1.0));
}

#[test]
fn drop_score_keeps_the_highest_p() {
    let p = run(&queue(), 2, capped("drop:score", 1.0));
    assert_eq!(p.capacity().unwrap().per_expert, 2);
    // Expert 0 keeps tokens 3 (0.95) and 0 (0.9).
    assert_eq!(experts_of(&p), vec![vec![0], vec![], vec![], vec![0]]);
    assert_eq!((p.stats().dropped, p.stats().rerouted), (2, 0));
    let kept = (0.9 + 0.95) / (0.9 + 0.8 + 0.7 + 0.95);
    assert!((p.stats().gate_mass_kept - kept).abs() < 1e-6);
}

#[test]
fn drop_order_and_reverse_order() {
    let p = run(&queue(), 2, capped("drop:order", 1.0));
    assert_eq!(experts_of(&p), vec![vec![0], vec![0], vec![], vec![]]);
    let p = run(&queue(), 2, capped("drop:reverse-order", 1.0));
    assert_eq!(experts_of(&p), vec![vec![], vec![], vec![0], vec![0]]);
}

#[test]
fn drop_random_is_seeded() {
    let a = run(&queue(), 2, capped("drop:random:1", 1.0));
    assert_eq!(a.stats().load, vec![2, 0]);
    assert_eq!(a, run(&queue(), 2, capped("drop:random:1", 1.0)));
    // Across seeds the kept pair changes (the hash is not token order).
    let kept: std::collections::BTreeSet<Vec<Vec<u32>>> = (0..16)
        .map(|s| experts_of(&run(&queue(), 2, capped(&format!("drop:random:{s}"), 1.0))))
        .collect();
    assert!(
        kept.len() > 2,
        "16 seeds gave only {} distinct subsets",
        kept.len()
    );
}

#[test]
fn next_best_moves_overflow_to_the_second_choice() {
    let p = run(&queue(), 2, capped("reroute:next-best", 1.0));
    assert_eq!(experts_of(&p), vec![vec![0], vec![1], vec![1], vec![0]]);
    assert_eq!((p.stats().dropped, p.stats().rerouted), (0, 2));
    // A rerouted weight keeps the top-k denominator: p1 / p0 for k = 1.
    let w = p.assignments(1).next().unwrap().weight;
    assert!((w - 0.2 / 0.8).abs() < 1e-6, "weight {w}");
}

/// Two tokens, three experts, k = 1, C = ceil(1 * 2 / 3) = 1.
/// t0: p = (0.50, 0.10, 0.40); t1: p = (0.51, 0.01, 0.48).
/// Deferred acceptance gives expert 0 to t1 (0.51 > 0.50) and t0 falls to
/// expert 2 (0.40): mass 0.91. The optimum swaps them: t0 -> 0 (0.50),
/// t1 -> 2 (0.48): mass 0.98.
#[test]
fn optimal_beats_deferred_acceptance() {
    let l = ln(&[0.50, 0.10, 0.40, 0.51, 0.01, 0.48]);
    let nb = run(&l, 3, capped("reroute:next-best", 1.0));
    assert_eq!(experts_of(&nb), vec![vec![2], vec![0]]);
    let opt = run(&l, 3, capped("reroute:optimal", 1.0));
    assert_eq!(experts_of(&opt), vec![vec![0], vec![2]]);
    assert!((opt.stats().served_mass - 0.98).abs() < 1e-6);
    assert!((nb.stats().served_mass - 0.91).abs() < 1e-6);
}

/// 4 tokens, 4 experts, 2 ranks, k = 1, C = 1. Tokens 0-1 sit on rank 0
/// (experts 0-1), tokens 2-3 on rank 1 (experts 2-3). All prefer expert 0
/// (logit 5, 4, 6, 3), others 0.
#[test]
fn expand_local_adds_the_tokens_own_rank() {
    let l = [
        5.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0,
    ];
    let p = run(&l, 4, capped("expand:local", 1.0).with_ranks(2));
    // Expert 0 keeps t2 (logit 6); expert 1 takes the better local candidate t1;
    // experts 2 and 3 both take t3, whose non-top p is higher than t2's.
    assert_eq!(experts_of(&p), vec![vec![], vec![1], vec![0], vec![2, 3]]);
    assert_eq!((p.stats().dropped, p.stats().rerouted), (1, 3));
}

#[test]
fn rank_scope_shares_capacity_within_a_rank() {
    // 4 tokens, 2 experts, 1 rank: the rank holds 2 * C = 4, so nothing drops.
    let cfg = capped("drop:score", 1.0).with_scope(CapacityScope::Rank);
    let p = run(&queue(), 2, cfg);
    assert_eq!(p.stats().load, vec![4, 0]);
    assert_eq!(p.stats().dropped, 0);
}

#[test]
fn renormalize_rescales_served_weights() {
    // k = 2 over 3 experts; drop:score at C = ceil(0.5 * 2 * 2 / 3) = 1.
    let l = ln(&[0.6, 0.3, 0.1, 0.5, 0.4, 0.1]);
    let cfg = RouterConfig::new(2, "drop:score".parse().unwrap())
        .with_capacity_factor(0.5)
        .with_renormalize(true);
    let p = run(&l, 3, cfg);
    assert_eq!(experts_of(&p), vec![vec![0], vec![1]]);
    assert!(p.weights().iter().all(|&w| w == 1.0));
}

/// A token rerouted only to experts whose `p` underflows to 0 has no mass to
/// renormalise: its weights are 0, never 0/0 (issue 11).
#[test]
fn renormalize_over_zero_mass_gives_zero_weights() {
    // 2 tokens, 2 experts, k = 1, C = ceil(0.5 * 2 / 2) = 1; expert 1's
    // p = exp(-1000) = 0, so the second token lands there with no mass.
    let l = [0.0f32, -1000.0, 0.0, -1000.0];
    let cfg = capped("reroute:next-best", 0.5).with_renormalize(true);
    let p = run(&l, 2, cfg.clone());
    assert_eq!(experts_of(&p), vec![vec![0], vec![1]]);
    assert_eq!(p.weights(), &[1.0, 0.0]);
    assert_eq!(p, run(&l, 2, cfg), "deterministic");
}

#[test]
fn empty_batch_is_an_empty_plan() {
    let p = run(&[], 8, capped("reroute:optimal", 1.5));
    assert_eq!(p.tokens(), 0);
    assert!(p.is_empty());
    assert_eq!(p.stats().gate_mass_kept, 1.0);
    assert_eq!(p.capacity().unwrap().per_expert, 0);
}

#[test]
fn bad_input_is_a_typed_error() {
    let l = [0.0f32; 8];
    let logits = Logits::new(&l, 2, 4).unwrap();
    let err = |cfg: RouterConfig| route(&logits, &cfg).unwrap_err();
    assert_eq!(
        err(RouterConfig::new(0, Policy::None)),
        RoutingError::ZeroTopK
    );
    assert_eq!(
        err(RouterConfig::new(5, Policy::None)),
        RoutingError::TopKExceedsExperts { k: 5, experts: 4 }
    );
    assert_eq!(
        err(capped("drop:score", 0.0)),
        RoutingError::InvalidCapacityFactor(0.0)
    );
    assert!(matches!(
        err(capped("drop:score", f64::NAN)),
        RoutingError::InvalidCapacityFactor(_)
    ));
    assert_eq!(
        err(capped("drop:score", 1e308)),
        RoutingError::InvalidCapacityFactor(1e308)
    );
    // The largest factor accepted still routes (and can no longer bind).
    assert!(route(
        &logits,
        &capped("drop:score", capmoe::routing::MAX_CAPACITY_FACTOR)
    )
    .is_ok());
    assert_eq!(
        err(RouterConfig::new(1, "drop:score".parse().unwrap())),
        RoutingError::MissingCapacityFactor("drop:score".into())
    );
    assert_eq!(
        err(RouterConfig::new(1, Policy::None).with_capacity_factor(1.0)),
        RoutingError::CapacityFactorWithoutCapacity(1.0)
    );
    assert_eq!(
        err(capped("expand:local", 1.0).with_ranks(3)),
        RoutingError::RanksDoNotDivideExperts {
            ranks: 3,
            experts: 4
        }
    );
    assert_eq!(
        err(capped("drop:score", 1.0).with_ranks(0)),
        RoutingError::ZeroRanks
    );
    assert!(matches!(
        Logits::new(&[0.0, f32::INFINITY], 1, 2),
        Err(RoutingError::NonFiniteLogit {
            token: 0,
            expert: 1,
            ..
        })
    ));
    assert!(matches!(
        Logits::new(&[0.0; 5], 2, 2),
        Err(RoutingError::LogitsLength { .. })
    ));
    assert_eq!(
        Logits::new(&[0.0; 513], 1, 513).unwrap_err(),
        RoutingError::TooManyExperts { experts: 513 }
    );
    assert_eq!(Logits::new(&[], 0, 0).unwrap_err(), RoutingError::NoExperts);
    // Messages say what was expected.
    assert!(RoutingError::TopKExceedsExperts { k: 5, experts: 4 }
        .to_string()
        .contains("expected 1..=4"));
}
