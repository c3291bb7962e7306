//! Candidates chosen by estimated bin prices, for skews where a token's
//! most preferred experts say little about where it ends up.
//!
//! Under hard skew (a per-expert logit bias of std 1.6 on E = 256) most
//! tokens' top experts are the same few hot ones, and the optimum sends
//! them to cold experts far down their preference lists: which cold expert
//! depends on `p[t,e]` against that expert's price in the optimum's duals,
//! not on `p` alone. Candidates by preference then miss most of the arcs the
//! optimum uses, and the certificate needs several rounds, each a resumed
//! descent, to find them.
//!
//! So on large batches the solver first solves a strided sample of the
//! tokens (every `STRIDE`-th, with capacities scaled to the sample, by the
//! same solver, recursively), reads off its bin prices `y[b]` (relative to
//! the sink), and gives each token of the full batch its plain top-k and its
//! `k + extra` best experts by estimated reduced cost `-S q[t,e] - y[bin(e)]`
//! (ties to the lower expert). The estimate only picks candidates: the full
//! solve starts from zero prices as before, and its certificate adds any arc
//! the estimate missed, so the result is exact whatever the sample says.

use super::optimal::{solve_with, Knobs, Solution};
use crate::routing::capacity::Bins;
use crate::routing::gate::Gate;

/// One token in `STRIDE` goes into the sample.
pub(crate) const STRIDE: usize = 8;
/// Batches below this many tokens are solved without a sample.
pub(crate) const MIN_TOKENS: usize = 2048;

/// The solver, with candidates guided by a sample's bin prices on batches
/// of at least [`MIN_TOKENS`] tokens (see the module docs).
pub(crate) fn solve_guided(gate: &Gate, bins: &Bins, knobs: &Knobs) -> Solution {
    solve_guided_from(gate, bins, knobs, MIN_TOKENS)
}

/// [`solve_guided`] with the batch size from which a sample guides (the
/// tests guide small batches).
pub(crate) fn solve_guided_from(
    gate: &Gate,
    bins: &Bins,
    knobs: &Knobs,
    min_tokens: usize,
) -> Solution {
    let hint = (gate.tokens() >= min_tokens.max(STRIDE))
        .then(|| sample(gate, bins))
        .flatten()
        .map(|(g, b)| {
            let s = solve_guided_from(&g, &b, knobs, min_tokens);
            let (ts, nb) = (g.tokens(), b.count());
            let z = s.price[ts + nb];
            s.price[ts..ts + nb]
                .iter()
                .map(|&p| p - z)
                .collect::<Vec<i128>>()
        });
    solve_with(gate, bins, knobs, hint.as_deref())
}

/// The sample of `gate` (tokens `0, STRIDE, 2 STRIDE, ...`) and its bins,
/// each bound scaled by the sample's share of the tokens (rounded up).
pub(crate) fn sample(gate: &Gate, bins: &Bins) -> Option<(Gate, Bins)> {
    let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
    let picked: Vec<usize> = (0..tokens).step_by(STRIDE).collect();
    let n = picked.len();
    let mut probs = Vec::with_capacity(n * experts);
    let mut topk = Vec::with_capacity(n * k);
    let mut topk_sum = Vec::with_capacity(n);
    for &t in &picked {
        probs.extend_from_slice(gate.prob_row(t));
        topk.extend_from_slice(gate.topk(t));
        topk_sum.push(gate.topk_sum(t));
    }
    let g = Gate::from_parts(experts, k, probs, topk, topk_sum).ok()?;
    let caps = (0..bins.count())
        .map(|b| {
            let c = u128::from(bins.cap(b)) * n as u128;
            u64::try_from(c.div_ceil(tokens as u128)).unwrap_or(u64::MAX)
        })
        .collect();
    Some((g, bins.with_caps(caps)))
}

/// Each token's plain top-k, then its best `width` other experts by
/// estimated reduced cost `cost(t, e) - y[bin(e)]` (ties to the lower
/// expert), in that order.
pub(crate) fn guided_candidates(
    gate: &Gate,
    bins: &Bins,
    width: usize,
    y: &[i128],
    cost: &impl Fn(usize, usize) -> i64,
) -> Vec<Vec<u32>> {
    let (tokens, experts) = (gate.tokens(), gate.experts());
    let mut keyed: Vec<(i128, u32)> = Vec::with_capacity(experts);
    let mut top = vec![false; experts];
    (0..tokens)
        .map(|t| {
            let mut c = gate.topk(t).to_vec();
            for &e in &c {
                top[e as usize] = true;
            }
            keyed.clear();
            keyed.extend(
                (0..experts)
                    .filter(|&e| !top[e])
                    .map(|e| (cost(t, e) as i128 - y[bins.bin(e)], e as u32)),
            );
            for &e in &c {
                top[e as usize] = false;
            }
            let w = width.min(keyed.len());
            if w > 0 {
                if w < keyed.len() {
                    keyed.select_nth_unstable(w - 1);
                }
                keyed[..w].sort_unstable();
                c.extend(keyed[..w].iter().map(|&(_, e)| e));
            }
            c
        })
        .collect()
}
