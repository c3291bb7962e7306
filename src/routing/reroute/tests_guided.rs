//! `reroute:optimal` with candidates guided by a sample's prices
//! (`guide.rs`), forced onto small batches, against the SSP oracle with the
//! same certificates as the unguided solver.

use super::guide::solve_guided_from;
use super::optimal::Knobs;
use super::ssp::ssp_optimal;
use super::tests::{case, check_feasible, check_optimal, logits_strategy, Case};
use crate::routing::numerics::splitmix64;
use proptest::prelude::*;

/// Guided from 8 tokens on (samples of samples down to 8 tokens), optimal,
/// deterministic.
fn guided_check(c: &Case) {
    let knobs = Knobs::new(c.gate.top_k(), c.gate.experts());
    let sol = solve_guided_from(&c.gate, &c.bins, &knobs, 8);
    let old = ssp_optimal(&c.gate, &c.bins);
    check_feasible(c, &old);
    check_optimal(c, &sol, &old);
    let again = solve_guided_from(&c.gate, &c.bins, &knobs, 8);
    assert_eq!(again.served.offsets, sol.served.offsets);
    assert_eq!(again.served.experts, sol.served.experts);
}

/// Unit-normal-ish noise plus a per-expert bias of std `sd` (the hard skew
/// of issue 23 at `sd = 1.6`), from a fixed stream.
fn biased(t: usize, e: usize, sd: f32, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut draw = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        // Sum of 4 uniforms, centred and scaled to unit variance.
        let u: f32 = (0..4)
            .map(|i| (splitmix64(s ^ i) >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (u - 2.0) * 3.0f32.sqrt()
    };
    let bias: Vec<f32> = (0..e).map(|_| sd * draw()).collect();
    (0..t * e).map(|i| draw() + bias[i % e]).collect()
}

#[test]
fn hard_skew_matches_the_oracle() {
    for (t, e, k) in [(512usize, 64usize, 8usize), (256, 32, 4), (96, 256, 8)] {
        let l = biased(t, e, 1.6, 11);
        for (gamma, ranks, rank) in [(1.0, 1, false), (1.5, 1, false), (1.0, 8, true)] {
            guided_check(&case(&l, t, e, k, gamma, ranks, rank));
        }
    }
}

#[test]
fn edge_cases_match_the_oracle() {
    // T = 0 and T = 1, k = E, every logit tied, one hot expert.
    guided_check(&case(&[], 0, 8, 2, 1.0, 1, false));
    guided_check(&case(&biased(1, 8, 1.6, 1), 1, 8, 3, 1.0, 1, false));
    let l = biased(64, 8, 1.6, 2);
    guided_check(&case(&l, 64, 8, 8, 1.0, 1, false));
    guided_check(&case(&vec![0.0; 64 * 16], 64, 16, 4, 1.0, 1, false));
    let hot: Vec<f32> = (0..64 * 16)
        .map(|i| if i % 16 == 5 { 8.0 } else { 0.0 })
        .collect();
    guided_check(&case(&hot, 64, 16, 2, 1.0, 1, false));
    guided_check(&case(&hot, 64, 16, 2, 1.5, 4, true));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn guided_matches_the_ssp_oracle(
        (t, e, k, l, gamma, ranks, rank) in (8usize..96, prop::sample::select(vec![2usize, 4, 8, 16]))
            .prop_flat_map(|(t, e)| {
                let div: Vec<usize> = (1..=e).filter(|r| e % r == 0).collect();
                (Just(t), Just(e), 1..=e, logits_strategy(t * e, e),
                 prop_oneof![0.1f64..2.0, Just(1.0)], prop::sample::select(div), any::<bool>())
            })
    ) {
        guided_check(&case(&l, t, e, k, gamma, ranks, rank));
    }
}
