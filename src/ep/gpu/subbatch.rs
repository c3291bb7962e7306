//! One EP rank's share of a routed batch, as a batch of its own.
//!
//! The GPU benchmark times each rank's expert FFN alone. The rank's work is
//! the rows the plan sends to its experts: for each of its experts `e`, the
//! tokens `e` serves, in token order. [`rank_rows`] lists them from the
//! policy's plan; [`one_hot_logits`] gives router logits under which plain
//! top-1 routing (`none`, k = 1) sends row `i` to exactly `owner[i]`. Routed
//! that way, the sub-batch's dispatch holds, expert by expert, the same
//! token rows in the same order as the full batch's dispatch (within an
//! expert's segment tokens ascend in both), so the FFN's grouped GEMMs see
//! the same per-expert problem sizes `m = load[e]` for the rank's experts and
//! `m = 0` for every other expert.

use crate::routing::{Placement, RoutingPlan};
use std::ops::Range;

/// The logit of a row's own expert in [`one_hot_logits`] (every other
/// expert's is 0): large enough that top-1 is never in doubt, small enough
/// that the softmax stays far from overflow.
pub const OWNER_LOGIT: f32 = 16.0;

/// The rows one rank's experts process, in dispatch order.
#[derive(Debug, Clone, PartialEq)]
pub struct RankRows {
    /// The EP rank, in 0..R.
    pub rank: usize,
    /// The rank's experts.
    pub experts: Range<usize>,
    /// Token of each row: expert by expert, tokens ascending.
    pub tokens: Vec<u32>,
    /// Expert of each row.
    pub owner: Vec<u32>,
    /// Rows per expert, over all `E` experts (0 outside the rank).
    pub load: Vec<u64>,
}

impl RankRows {
    /// Rows the rank processes (a token once per expert of the rank that serves it).
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
}

/// Every rank's rows under `placement` (rank `r` owns experts
/// `rE/R..(r+1)E/R`). A token served by two experts of one rank appears
/// twice (once per expert), as it does in the dispatch.
pub fn rank_rows(plan: &RoutingPlan, placement: &Placement) -> Vec<RankRows> {
    let experts = plan.experts();
    let mut per_expert: Vec<Vec<u32>> = vec![Vec::new(); experts];
    for t in 0..plan.tokens() {
        for a in plan.assignments(t) {
            per_expert[a.expert as usize].push(t as u32);
        }
    }
    (0..placement.ranks())
        .map(|r| {
            let group = placement.expert_group(r);
            let mut tokens = Vec::new();
            let mut owner = Vec::new();
            let mut load = vec![0u64; experts];
            for e in group.clone() {
                tokens.extend_from_slice(&per_expert[e]);
                owner.extend(std::iter::repeat_n(e as u32, per_expert[e].len()));
                load[e] = per_expert[e].len() as u64;
            }
            RankRows {
                rank: r,
                experts: group,
                tokens,
                owner,
                load,
            }
        })
        .collect()
}

/// `[rows, experts]` logits: [`OWNER_LOGIT`] at each row's owner, 0
/// elsewhere. Routed with `none` at k = 1 they reproduce `owner` exactly.
pub fn one_hot_logits(owner: &[u32], experts: usize) -> Vec<f32> {
    let mut l = vec![0.0f32; owner.len() * experts];
    for (i, &e) in owner.iter().enumerate() {
        l[i * experts + e as usize] = OWNER_LOGIT;
    }
    l
}

/// Copies the rows of `x` (`[T, hidden]`, row-major) named by `tokens`.
pub fn gather_rows<T: Copy>(x: &[T], hidden: usize, tokens: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(tokens.len() * hidden);
    for &t in tokens {
        let s = t as usize * hidden;
        out.extend_from_slice(&x[s..s + hidden]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{route, DispatchLayout, Logits, Policy, RouterConfig};
    use crate::trace::{synthetic_logits, Skew};

    fn plan(policy: &str, gamma: Option<f64>, tokens: usize) -> RoutingPlan {
        let l = synthetic_logits(tokens, 8, 2, Skew::Mixtral, 3).unwrap();
        let mut cfg = RouterConfig::new(2, policy.parse().unwrap()).with_ranks(4);
        cfg.capacity_factor = gamma;
        route(&Logits::new(&l, tokens, 8).unwrap(), &cfg).unwrap()
    }

    #[test]
    fn ranks_partition_the_served_assignments() {
        for (p, g) in [
            ("none", None),
            ("drop:score", Some(1.0)),
            ("expand:local", Some(1.25)),
        ] {
            let plan = plan(p, g, 300);
            let rows = rank_rows(&plan, &Placement::new(4, 8, 300).unwrap());
            let total: usize = rows.iter().map(RankRows::rows).sum();
            assert_eq!(total, plan.len(), "{p}");
            let mut load = vec![0u64; 8];
            for r in &rows {
                for (e, &n) in r.load.iter().enumerate() {
                    assert!(n == 0 || r.experts.contains(&e));
                    load[e] += n;
                }
            }
            assert_eq!(load, plan.stats().load, "{p}");
        }
    }

    /// The method the GPU timing rests on: routing a rank's rows with
    /// one-hot logits (none, k = 1) gives the same per-expert row counts and
    /// the same row order as the full batch's dispatch of those experts.
    #[test]
    fn one_hot_subbatch_reproduces_the_rank_dispatch() {
        let plan = plan("drop:score", Some(1.25), 257);
        let full = DispatchLayout::new(&plan, 1).unwrap();
        for r in rank_rows(&plan, &Placement::new(4, 8, 257).unwrap()) {
            let l = one_hot_logits(&r.owner, 8);
            let sub = route(
                &Logits::new(&l, r.rows(), 8).unwrap(),
                &RouterConfig::new(1, Policy::None),
            )
            .unwrap();
            assert_eq!(sub.stats().load, r.load);
            let d = DispatchLayout::new(&sub, 1).unwrap();
            for e in r.experts.clone() {
                let (a, b) = (full.offsets()[e] as usize, full.offsets()[e + 1] as usize);
                let (c, d2) = (d.offsets()[e] as usize, d.offsets()[e + 1] as usize);
                let full_tokens = &full.row_tokens()[a..b];
                let sub_tokens: Vec<u32> = d.row_tokens()[c..d2]
                    .iter()
                    .map(|&i| r.tokens[i as usize])
                    .collect();
                assert_eq!(full_tokens, &sub_tokens[..], "rank {} expert {e}", r.rank);
            }
        }
    }

    #[test]
    fn gathered_rows_follow_the_token_list() {
        let x: Vec<u16> = (0..12).collect();
        assert_eq!(
            gather_rows(&x, 3, &[2, 0, 2]),
            vec![6, 7, 8, 0, 1, 2, 6, 7, 8]
        );
        assert!(one_hot_logits(&[], 8).is_empty());
        assert_eq!(one_hot_logits(&[1], 2), vec![0.0, OWNER_LOGIT]);
    }
}
