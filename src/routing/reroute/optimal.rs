//! `reroute:optimal`: the capacitated assignment of maximum retained gate mass.
//!
//! Maximise `sum p[t,e]` over served `(t,e)` subject to each bin holding at
//! most its capacity and each token at most `k` distinct experts. As a
//! min-cost flow: token `t` ships `k` units, each along an arc `t -> bin(e)`
//! (capacity 1, cost `-q[t,e]`) or along its drop arc `t -> Z` (cost 0);
//! bin `b` passes at most `cap_b` units on to the sink `Z`.
//!
//! Exactness: `q` is `p` in fixed point (48 fraction bits), so the problem has
//! integer costs. Costs are multiplied by `S = 2(bins + 1) + 1` and solved by
//! cost scaling down to eps = 1 (`flow.rs`). A residual cycle alternates
//! tokens with bins or `Z`, so it has at most `2(bins + 1) < S` arcs; with
//! every reduced cost `>= -1` its scaled cost is `> -S`, so its unscaled cost
//! is `>= 0`: no negative cycle, the flow is optimal for `q`.
//!
//! Candidates: each token starts with its `k + extra` most preferred experts
//! (the arcs outside that set carry no flow). After solving, the dual prices
//! certify the rest: an arc outside the set whose reduced cost is `< -1`
//! joins the set, and scaling resumes from the worst such violation. When no
//! arc violates, the flow is 1-optimal on the full graph, hence optimal.
//!
//! Ties: among plans of equal mass the result is the one this fixed sequence
//! of operations reaches (arcs in token order, each token's candidates in
//! preference order, FIFO active nodes), the same on every run.

use super::flow::{Edge, Net};
use crate::routing::capacity::Bins;
use crate::routing::gate::Gate;
use crate::routing::served::Served;
use crate::routing::RoutingError;

const FRAC_BITS: u32 = 48;
/// Cost scaling factor per refine.
const ALPHA: i128 = 4;

/// The solver's result with its certificate (the tests check it).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Solution {
    pub served: Served,
    /// Node prices: tokens `0..T`, bins `T..T+bins`, then `Z`.
    pub price: Vec<i128>,
    /// The cost multiplier `S`.
    pub scale: i64,
    /// Fixed-point fraction bits of `q`.
    pub frac_bits: u32,
    /// How many times candidates were added.
    pub rounds: usize,
}

pub(crate) fn optimal(gate: &Gate, bins: &Bins) -> Result<Served, RoutingError> {
    let (k, experts) = (gate.top_k(), gate.experts());
    // Arcs are indexed by u32: a token has at most E + 1 arcs (certificate
    // rounds may add any expert), twice with their reverses.
    let per_token = 2 * (experts + 1);
    let max_tokens = (u32::MAX as usize - 2 * bins.count()) / per_token;
    if gate.tokens() > max_tokens {
        return Err(RoutingError::ShapeMismatch {
            what: "reroute:optimal batch (tokens, for its u32-indexed flow network)",
            len: gate.tokens(),
            expected: max_tokens,
        });
    }
    Ok(solve(gate, bins, default_extra(k, experts), 2 * k).served)
}

/// Extra candidates per token beyond its top-k.
pub(crate) fn default_extra(k: usize, experts: usize) -> usize {
    k.min(experts - k)
}

/// `p` in fixed point with `frac` fraction bits (round to nearest).
#[inline]
pub(crate) fn fixed(p: f32, frac: u32) -> i64 {
    (p as f64 * (frac as f64).exp2()).round() as i64
}

/// Fraction bits such that `S * 2^frac` stays below 2^61.
fn frac_bits(scale: i64) -> u32 {
    let bits = 64 - (scale as u64).leading_zeros();
    FRAC_BITS.min(61u32.saturating_sub(bits))
}

/// Each token's `k + extra` most preferred experts, then its best `roomy_max` experts
/// among the bins that plain top-k leaves with room (where overflow goes), so
/// that the certificate rarely has to add any.
fn initial_candidates(gate: &Gate, bins: &Bins, extra: usize, roomy_max: usize) -> Vec<Vec<u32>> {
    let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
    let mut load = vec![0u64; bins.count()];
    for &e in gate.topk_all() {
        load[bins.bin(e as usize)] += 1;
    }
    let roomy: Vec<bool> = (0..experts)
        .map(|e| load[bins.bin(e)] < bins.cap(bins.bin(e)))
        .collect();
    let width = (k + extra).min(experts);
    (0..tokens)
        .map(|t| {
            let pref = gate.preference(t);
            let mut c = pref[..width].to_vec();
            c.extend(
                pref[width..]
                    .iter()
                    .filter(|&&e| roomy[e as usize])
                    .take(roomy_max),
            );
            c
        })
        .collect()
}

pub(crate) fn solve(gate: &Gate, bins: &Bins, extra: usize, roomy_max: usize) -> Solution {
    let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
    let nb = bins.count();
    let scale = 2 * (nb as i64 + 1) + 1;
    let frac = frac_bits(scale);
    let z = tokens + nb;
    let cost = |t: usize, e: usize| -fixed(gate.p(t, e), frac) * scale;
    // Candidate lists in preference order; `on[t][i]` is the flow on the arc.
    let mut cands = initial_candidates(gate, bins, extra, roomy_max);
    let mut on: Vec<Vec<bool>> = cands.iter().map(|c| vec![false; c.len()]).collect();
    let mut drop_flow = vec![0i64; tokens];
    let mut bin_flow = vec![0i64; nb];
    let mut price = vec![0i128; z + 1];
    let total = (tokens as i64).saturating_mul(k as i64);
    let mut supply = vec![k as i64; z + 1];
    supply[tokens..].fill(0);
    supply[z] = -total;
    // A zero flow with zero prices is eps-optimal for eps = the largest |cost|.
    let mut eps0: i128 = cands
        .iter()
        .enumerate()
        .flat_map(|(t, c)| c.iter().map(move |&e| (t, e as usize)))
        .map(|(t, e)| -(cost(t, e) as i128))
        .max()
        .unwrap_or(0);
    let mut rounds = 0;
    loop {
        let mut edges = Vec::with_capacity(cands.iter().map(|c| c.len() + 1).sum::<usize>() + nb);
        for t in 0..tokens {
            for (i, &e) in cands[t].iter().enumerate() {
                edges.push(Edge {
                    from: t as u32,
                    to: (tokens + bins.bin(e as usize)) as u32,
                    cap: 1,
                    cost: cost(t, e as usize),
                    flow: i64::from(on[t][i]),
                });
            }
            edges.push(Edge {
                from: t as u32,
                to: z as u32,
                cap: k as i64,
                cost: 0,
                flow: drop_flow[t],
            });
        }
        for (b, &flow) in bin_flow.iter().enumerate() {
            edges.push(Edge {
                from: (tokens + b) as u32,
                to: z as u32,
                cap: i64::try_from(bins.cap(b)).unwrap_or(i64::MAX).min(total),
                cost: 0,
                flow,
            });
        }
        let mut net = Net::new(&supply, &edges, price);
        net.scale(eps0, ALPHA);
        let mut i = 0;
        for t in 0..tokens {
            for f in on[t].iter_mut() {
                *f = net.flow(i) == 1;
                i += 1;
            }
            drop_flow[t] = net.flow(i);
            i += 1;
        }
        for f in bin_flow.iter_mut() {
            *f = net.flow(i);
            i += 1;
        }
        price = net.price;
        // Certificate: every arc outside the candidates must be 1-optimal.
        eps0 = 0;
        for t in 0..tokens {
            if cands[t].len() == experts {
                continue;
            }
            let mut is_cand = vec![false; experts];
            for &e in &cands[t] {
                is_cand[e as usize] = true;
            }
            for e in 0..experts {
                if is_cand[e] {
                    continue;
                }
                let rc = cost(t, e) as i128 + price[t] - price[tokens + bins.bin(e)];
                if rc < -1 {
                    eps0 = eps0.max(-rc);
                    cands[t].push(e as u32);
                    on[t].push(false);
                }
            }
        }
        if eps0 == 0 {
            break;
        }
        rounds += 1;
    }
    let served = Served::from_lists(cands.iter().zip(&on).map(|(c, f)| {
        c.iter()
            .zip(f)
            .filter(|(_, &f)| f)
            .map(|(&e, _)| e)
            .collect::<Vec<_>>()
    }));
    Solution {
        served,
        price,
        scale,
        frac_bits: frac,
        rounds,
    }
}
