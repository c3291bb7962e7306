//! `reroute:optimal` against the successive-shortest-path oracle, and its
//! optimality certificates: the solver's own dual prices, and an independent
//! negative-cycle search on the full residual graph.

use super::optimal::{fixed, solve, Knobs, Solution, REPAIR_MAX};
use super::ssp::ssp_optimal;
use crate::routing::capacity::{capacity, Bins, CapacityScope, Placement};
use crate::routing::gate::Gate;
use crate::routing::logits::Logits;
use crate::routing::served::Served;
use proptest::prelude::*;

pub(super) struct Case {
    pub gate: Gate,
    pub bins: Bins,
}

pub(super) fn case(
    logits: &[f32],
    t: usize,
    e: usize,
    k: usize,
    gamma: f64,
    ranks: usize,
    rank: bool,
) -> Case {
    let gate = Gate::new(&Logits::new(logits, t, e).unwrap(), k).unwrap();
    let scope = if rank {
        CapacityScope::Rank
    } else {
        CapacityScope::Expert
    };
    let c = capacity(gamma, t, k, e).unwrap();
    let bins = Bins::new(scope, &Placement::new(ranks, e, t).unwrap(), c);
    Case { gate, bins }
}

/// Served mass in the solver's fixed point (exact integer objective).
fn mass(c: &Case, s: &Served, frac: u32) -> i128 {
    (0..c.gate.tokens())
        .flat_map(|t| s.of(t).iter().map(move |&e| (t, e as usize)))
        .map(|(t, e)| fixed(c.gate.p(t, e), frac) as i128)
        .sum()
}

/// Feasibility: distinct experts, at most k per token, bins within capacity.
pub(super) fn check_feasible(c: &Case, s: &Served) {
    let mut load = vec![0u64; c.bins.count()];
    for t in 0..c.gate.tokens() {
        let mut l = s.of(t).to_vec();
        assert!(
            l.len() <= c.gate.top_k(),
            "token {t} holds {} experts",
            l.len()
        );
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), s.of(t).len(), "token {t} holds an expert twice");
        for &e in s.of(t) {
            load[c.bins.bin(e as usize)] += 1;
        }
    }
    for (b, &l) in load.iter().enumerate() {
        assert!(l <= c.bins.cap(b), "bin {b} holds {l} > {}", c.bins.cap(b));
    }
}

/// The solver's certificate: with its prices, every arc of the full graph
/// (all T*E token arcs, drops, bins) has reduced cost >= -1 where it has room
/// and <= 1 where it carries flow, and S exceeds the longest residual cycle.
fn check_dual(c: &Case, sol: &Solution) {
    let (tokens, experts, k) = (c.gate.tokens(), c.gate.experts(), c.gate.top_k());
    let nb = c.bins.count();
    assert!(sol.scale > 2 * (nb as i64 + 1));
    let (p, z) = (&sol.price, tokens + nb);
    let mut load = vec![0i64; nb];
    for t in 0..tokens {
        let held = sol.served.of(t);
        for e in 0..experts {
            let b = c.bins.bin(e);
            let cost = -(fixed(c.gate.p(t, e), sol.frac_bits) as i128) * sol.scale as i128;
            let rc = cost + p[t] - p[tokens + b];
            if held.contains(&(e as u32)) {
                load[b] += 1;
                assert!(rc <= 1, "held arc ({t},{e}) has reduced cost {rc}");
            } else {
                assert!(rc >= -1, "free arc ({t},{e}) has reduced cost {rc}");
            }
        }
        let drops = (k - held.len()) as i64;
        let rc = p[t] - p[z];
        if drops < k as i64 {
            assert!(rc >= -1, "token {t} could drop more: {rc}");
        }
        if drops > 0 {
            assert!(rc <= 1, "token {t} drops at reduced cost {rc}");
        }
    }
    let total = (tokens * k) as u64;
    for (b, &l) in load.iter().enumerate() {
        let rc = p[tokens + b] - p[z];
        if (l as u64) < c.bins.cap(b).min(total) {
            assert!(rc >= -1, "bin {b} has room but reduced cost {rc}");
        }
        if l > 0 {
            assert!(rc <= 1, "bin {b} is used at reduced cost {rc}");
        }
    }
}

/// Independent check: Bellman-Ford finds no negative cycle in the residual
/// graph of the plan with unscaled fixed-point costs (minimising `-q`).
fn check_no_negative_cycle(c: &Case, s: &Served, frac: u32) {
    let (tokens, experts, k) = (c.gate.tokens(), c.gate.experts(), c.gate.top_k());
    let nb = c.bins.count();
    let z = tokens + nb;
    let mut arcs: Vec<(usize, usize, i128)> = Vec::new();
    let mut load = vec![0u64; nb];
    for t in 0..tokens {
        let held = s.of(t);
        for e in 0..experts {
            let (b, q) = (tokens + c.bins.bin(e), fixed(c.gate.p(t, e), frac) as i128);
            if held.contains(&(e as u32)) {
                arcs.push((b, t, q));
                load[b - tokens] += 1;
            } else {
                arcs.push((t, b, -q));
            }
        }
        if held.len() < k {
            arcs.push((z, t, 0));
        }
        if !held.is_empty() {
            arcs.push((t, z, 0));
        }
    }
    for (b, &l) in load.iter().enumerate() {
        if l < c.bins.cap(b) {
            arcs.push((tokens + b, z, 0));
        }
        if l > 0 {
            arcs.push((z, tokens + b, 0));
        }
    }
    // Distances from a virtual source joined to every node at cost 0.
    let mut d = vec![0i128; z + 1];
    for _ in 0..=z + 1 {
        let mut changed = false;
        for &(u, v, w) in &arcs {
            if d[u] + w < d[v] {
                d[v] = d[u] + w;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
    panic!("the residual graph has a negative cycle: the plan is not optimal");
}

/// The solution is feasible, certified, free of negative cycles and of the
/// oracle's mass.
pub(super) fn check_optimal(c: &Case, sol: &Solution, oracle: &Served) {
    check_feasible(c, &sol.served);
    check_dual(c, sol);
    check_no_negative_cycle(c, &sol.served, sol.frac_bits);
    // The oracle uses 48 fraction bits; so does the solver for these sizes.
    assert_eq!(sol.frac_bits, 48);
    assert_eq!(
        mass(c, &sol.served, 48),
        mass(c, oracle, 48),
        "mass differs from the SSP oracle"
    );
}

/// Top-k alone as candidates, so that the certificate has arcs to add.
fn bare(repair_max: i64, mid_check: bool, per_token_max: usize) -> Knobs {
    Knobs {
        extra: 0,
        roomy_max: 0,
        repair_max,
        mid_check,
        per_token_max,
    }
}

fn full_check(c: &Case) {
    let knobs = Knobs::new(c.gate.top_k(), c.gate.experts());
    let sol = solve(&c.gate, &c.bins, &knobs);
    let old = ssp_optimal(&c.gate, &c.bins);
    check_feasible(c, &old);
    check_optimal(c, &sol, &old);
    // Deterministic.
    let again = solve(&c.gate, &c.bins, &knobs);
    assert_eq!(again.served.offsets, sol.served.offsets);
    assert_eq!(again.served.experts, sol.served.experts);
    // Top-k alone as candidates: the certificate adds the rest, repaired
    // by shortest paths however many units are out of place, or by resumed
    // scaling however few.
    let k = c.gate.top_k();
    for (repair_max, mid_check, per_token) in [
        (i64::MAX, false, usize::MAX),
        (0, false, 1),
        (REPAIR_MAX, true, 2 * k),
    ] {
        let sol = solve(&c.gate, &c.bins, &bare(repair_max, mid_check, per_token));
        check_optimal(c, &sol, &old);
        let other = match repair_max {
            0 => sol.repairs,
            i64::MAX => sol.resumes,
            _ => 0,
        };
        assert_eq!(other, 0, "repair_max {repair_max}");
    }
}

pub(super) fn logits_strategy(n: usize, experts: usize) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-6.0f32..6.0, n),
        prop::collection::vec(prop::sample::select(vec![0.0f32, 0.5, 1.0]), n),
        prop::collection::vec(-2.0f32..2.0, n).prop_map(move |mut v| {
            for (i, x) in v.iter_mut().enumerate() {
                if i % experts < 2 {
                    *x += 6.0;
                }
            }
            v
        }),
        Just(vec![0.0f32; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_ssp_oracle_with_certificates(
        (t, e, k, l, gamma, ranks, rank) in (0usize..48, prop::sample::select(vec![1usize, 2, 3, 4, 8, 16]))
            .prop_flat_map(|(t, e)| {
                let div: Vec<usize> = (1..=e).filter(|r| e % r == 0).collect();
                (Just(t), Just(e), 1..=e, logits_strategy(t * e, e),
                 prop_oneof![0.1f64..2.0, Just(1.0)], prop::sample::select(div), any::<bool>())
            })
    ) {
        full_check(&case(&l, t, e, k, gamma, ranks, rank));
    }
}

/// `logits(tokens, experts, top_k, olmoe, seed)`: a synthetic trace with
/// Mixtral-like skew (OLMoE-like when `olmoe`). `crate::trace` sits above
/// routing, so the tests that need it run from trace's tests.
pub(crate) type TraceFn<'a> = &'a dyn Fn(usize, usize, usize, bool, u64) -> Vec<f32>;

/// Fine-grained shapes (many experts, top-8) with real skew.
pub(crate) fn fine_grained_shapes_match_the_oracle(logits: TraceFn) {
    for (t, e, k, olmoe) in [
        (384usize, 64usize, 8usize, false),
        (256, 64, 8, true),
        (96, 256, 8, false),
    ] {
        let l = logits(t, e, k, olmoe, 7);
        for (gamma, ranks, rank) in [
            (1.0, 1, false),
            (1.5, 8, false),
            (1.0, 8, true),
            (0.5, 4, true),
        ] {
            full_check(&case(&l, t, e, k, gamma, ranks, rank));
        }
    }
}

/// Candidates that are too few must be found by the certificate: with no
/// extra candidates the result is still optimal, whichever way each round
/// restores optimality.
pub(crate) fn certificate_adds_missing_candidates(logits: TraceFn) {
    let (t, e, k) = (200usize, 64usize, 4usize);
    let l = logits(t, e, k, true, 3);
    let c = case(&l, t, e, k, 1.0, 1, false);
    let old = ssp_optimal(&c.gate, &c.bins);
    for (repair_max, mid_check, per_token) in [
        (0, false, usize::MAX),
        (8, false, 1),
        (i64::MAX, false, 2),
        (8, true, usize::MAX),
    ] {
        let sol = solve(&c.gate, &c.bins, &bare(repair_max, mid_check, per_token));
        // Top-k alone: the mid-descent check would add far more than an
        // eighth of the arcs, so it is undone and the end adds them.
        assert_eq!(sol.mid_arcs, 0);
        assert!(sol.rounds > 0, "expected the certificate to add candidates");
        match repair_max {
            0 => assert!(sol.repairs == 0 && sol.resumes > 0),
            i64::MAX => assert!(sol.resumes == 0 && sol.repairs > 0),
            _ => {}
        }
        check_optimal(&c, &sol, &old);
    }
    // The default candidates: here the mid-descent check adds arcs and
    // keeps them.
    let sol = solve(&c.gate, &c.bins, &Knobs::new(k, e));
    assert!(
        sol.mid_arcs > 0,
        "expected the mid-descent check to add candidates"
    );
    check_optimal(&c, &sol, &old);
}
