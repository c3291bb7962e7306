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
//! and its best ones among bins with room (the arcs outside that set carry
//! no flow); on batches of 2048+ tokens `guide.rs` picks them by a
//! sample's bin prices instead. The dual prices certify the rest: an arc outside the set whose
//! reduced cost is `< -1` joins the set. The check runs part way down the
//! descent, which then resumes a little above where it was, and at the end,
//! where violations are repaired by shortest paths when few units are out
//! of place (`repair.rs`) and by scaling from the worst violation
//! otherwise. When no arc violates, the flow is 1-optimal on the full
//! graph, hence optimal.
//!
//! Ties: among plans of equal mass the result is the one this fixed sequence
//! of operations reaches (arcs in token order, each token's candidates in
//! preference order or, guided, top-k then by estimated reduced cost, FIFO
//! active nodes, a fixed sample stride), the same on every run.

use super::flow::{Edge, Net};
use super::guide;
use crate::routing::capacity::Bins;
use crate::routing::gate::{preference_order, Gate};
use crate::routing::served::Served;
use crate::routing::RoutingError;

const FRAC_BITS: u32 = 48;
/// Cost scaling factor per refine.
const ALPHA: i128 = 4;
/// The mid-descent certificate check comes once eps is below the start
/// over `2^MID_CHECK_SHIFT` (7 of the ~28 refines at alpha 4, where the
/// expensive top of the descent is done).
const MID_CHECK_SHIFT: u32 = 14;
/// After the mid-descent check the descent resumes at this multiple of the
/// eps it reached (at most the worst violation).
const MID_RESUME: i128 = 16;
/// The mid-descent check is undone when it adds more than a
/// `1/MID_MAX_SHARE` share of the arcs, or finds a violation above
/// `MID_MAX_OVER` times the eps reached (olmoe skew at gamma 1: 1/22 and
/// 180x; a skew of 20: 5.4x the arcs and 7600x). Only with candidates by
/// preference: a guided check is never undone.
const MID_MAX_SHARE: usize = 8;
const MID_MAX_OVER: i128 = 1024;

/// Units a certificate round may leave out of place and still be repaired by
/// shortest paths (each phase costs about one scan of the network; a resumed
/// scaling, about thirty).
pub(crate) const REPAIR_MAX: i64 = 32;

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
    /// Rounds that shortest paths repaired.
    pub repairs: usize,
    /// Rounds that resumed the scaling.
    pub resumes: usize,
    /// Arcs the mid-descent check added.
    pub mid_arcs: usize,
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
    Ok(guide::solve_guided(gate, bins, &Knobs::new(k, experts)).served)
}

/// How the solver picks its first candidates and restores optimality.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    /// Extra candidates per token beyond its top-k.
    pub extra: usize,
    /// Candidates per token among the bins plain top-k leaves with room.
    pub roomy_max: usize,
    /// Units out of place up to which a certificate round is repaired by
    /// shortest paths rather than by resumed scaling.
    pub repair_max: i64,
    /// Check the certificate once part way down the descent too.
    pub mid_check: bool,
    /// Arcs a certificate check adds per token at most (the most violating):
    /// under extreme skew nearly every arc violates at first, and taking
    /// them all would multiply the network for arcs the optimum never uses.
    pub per_token_max: usize,
}

impl Knobs {
    /// The defaults for top-`k` of `experts`.
    pub fn new(k: usize, experts: usize) -> Self {
        Self {
            extra: k.min(experts - k),
            roomy_max: 2 * k,
            repair_max: REPAIR_MAX,
            mid_check: true,
            per_token_max: 2 * k,
        }
    }
}

/// `p` in fixed point with `frac` fraction bits (round to nearest).
#[cfg(test)]
pub(crate) fn fixed(p: f32, frac: u32) -> i64 {
    fixed_mul(p, (frac as f64).exp2())
}

/// [`fixed`] with the power of two precomputed (exact: `mul` is `2^frac`).
#[inline]
fn fixed_mul(p: f32, mul: f64) -> i64 {
    (p as f64 * mul).round() as i64
}

/// Fraction bits such that `S * 2^frac` stays below 2^61.
fn frac_bits(scale: i64) -> u32 {
    let bits = 64 - (scale as u64).leading_zeros();
    FRAC_BITS.min(61u32.saturating_sub(bits))
}

/// Each token's `k + extra` most preferred experts, then its best `roomy_max`
/// experts among the bins that plain top-k leaves with room (where overflow
/// goes), so that the certificate rarely has to add any. Both parts are in
/// preference order (decreasing `p`, ties to the lower index); only the
/// selected prefixes are sorted.
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
    let mut order: Vec<u32> = Vec::with_capacity(experts);
    (0..tokens)
        .map(|t| {
            let before = preference_order(gate.prob_row(t));
            order.clear();
            order.extend(0..experts as u32);
            select_sorted(&mut order, width, &before);
            let mut c = order[..width].to_vec();
            let rest = &mut order[width..];
            let n = partition(rest, |e| roomy[e as usize]);
            let take = roomy_max.min(n);
            select_sorted(&mut rest[..n], take, &before);
            c.extend_from_slice(&rest[..take]);
            c
        })
        .collect()
}

/// Moves the elements that satisfy `keep` to the front, in no particular
/// order; returns their count.
fn partition(v: &mut [u32], keep: impl Fn(u32) -> bool) -> usize {
    let mut n = 0;
    for i in 0..v.len() {
        if keep(v[i]) {
            v.swap(n, i);
            n += 1;
        }
    }
    n
}

/// Puts the `n` first elements of `v` under the total order `before` into
/// `v[..n]`, sorted.
fn select_sorted(v: &mut [u32], n: usize, before: impl Fn(&u32, &u32) -> std::cmp::Ordering) {
    if n == 0 {
        return;
    }
    if n < v.len() {
        v.select_nth_unstable_by(n - 1, &before);
    }
    v[..n].sort_unstable_by(&before);
}

/// The flow state between refines: candidate arcs and the flow on every arc.
struct State {
    /// Candidate experts per token, in the order their arcs are built.
    cands: Vec<Vec<u32>>,
    /// `on[t][i]`: the arc to `cands[t][i]` carries a unit.
    on: Vec<Vec<bool>>,
    drop_flow: Vec<i64>,
    bin_flow: Vec<i64>,
}

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn solve(gate: &Gate, bins: &Bins, knobs: &Knobs) -> Solution {
    solve_with(gate, bins, knobs, None)
}

/// The solver; `hint`, estimated bin prices (relative to the sink), picks
/// the first candidates by estimated reduced cost instead of by preference.
pub(crate) fn solve_with(
    gate: &Gate,
    bins: &Bins,
    knobs: &Knobs,
    hint: Option<&[i128]>,
) -> Solution {
    let (tokens, k) = (gate.tokens(), gate.top_k());
    let nb = bins.count();
    let scale = 2 * (nb as i64 + 1) + 1;
    let frac = frac_bits(scale);
    let mul = (frac as f64).exp2();
    let cost = |t: usize, e: usize| -fixed_mul(gate.p(t, e), mul) * scale;
    let z = tokens + nb;
    let cands = match hint {
        Some(y) => guide::guided_candidates(gate, bins, k + knobs.extra, y, &cost),
        None => initial_candidates(gate, bins, knobs.extra, knobs.roomy_max),
    };
    let mut st = State {
        on: cands.iter().map(|c| vec![false; c.len()]).collect(),
        cands,
        drop_flow: vec![0; tokens],
        bin_flow: vec![0; nb],
    };
    let total = (tokens as i64).saturating_mul(k as i64);
    let mut supply = vec![k as i64; z + 1];
    supply[tokens..].fill(0);
    supply[z] = -total;
    // A zero flow with zero prices is eps-optimal for eps = the largest |cost|.
    let eps: i128 = st
        .cands
        .iter()
        .enumerate()
        .flat_map(|(t, c)| c.iter().map(move |&e| (t, e as usize)))
        .map(|(t, e)| -(cost(t, e) as i128))
        .max()
        .unwrap_or(0);
    let mut net = build(gate, bins, &st, &supply, &cost, vec![0; z + 1]);
    let (mut rounds, mut repairs, mut resumes) = (0, 0, 0);
    // One certificate check part way down: by then the prices show where
    // overflow is worth placing (on olmoe-like skew at gamma 1, thousands
    // of cold bins' arcs), and the rest of the descent takes the new arcs
    // in at a few times the current eps instead of a second descent from
    // the worst violation at the end. Prices still far from settled (many
    // arcs, or violations far above eps: extreme skew) would flood the
    // network and start price wars: then the check is undone.
    let floor = if knobs.mid_check {
        eps >> MID_CHECK_SHIFT
    } else {
        1
    };
    let e = net.scale_until(eps, ALPHA, floor);
    let mut mid_arcs = 0;
    if e > 1 {
        read_back(&net, &mut st);
        let old_len: Vec<usize> = st.cands.iter().map(|c| c.len()).collect();
        let before: usize = old_len.iter().sum();
        let worst = certify(gate, bins, &mut st, &net.price, &cost, knobs.per_token_max);
        let added = st.cands.iter().map(Vec::len).sum::<usize>() - before;
        // With candidates guided by a sample's prices (`guide.rs`) the check
        // is kept whatever it adds: its arcs are the ones the estimate missed
        // (hard skew at gamma 1: 95k on 393k at 530x eps; undone, the final
        // round resumed from the worst violation, 0.5 s more; skew 20: 261k
        // on 393k, 2.0 s kept against 2.5 s undone).
        let undo = hint.is_none()
            && (added > before / MID_MAX_SHARE || worst > e.saturating_mul(MID_MAX_OVER));
        if undo {
            for ((c, on), &n) in st.cands.iter_mut().zip(&mut st.on).zip(&old_len) {
                c.truncate(n);
                on.truncate(n);
            }
            net.scale(e, ALPHA);
        } else {
            mid_arcs = added;
            if worst > 0 {
                let mut price = std::mem::take(&mut net.price);
                raise_prices(gate, bins, &st, &mut price, &cost, &old_len);
                drop(net);
                net = build(gate, bins, &st, &supply, &cost, price);
            }
            net.scale(e.max(worst.min(e.saturating_mul(MID_RESUME))), ALPHA);
        }
    }
    loop {
        read_back(&net, &mut st);
        let old_len: Vec<usize> = st.cands.iter().map(|c| c.len()).collect();
        let worst = certify(gate, bins, &mut st, &net.price, &cost, knobs.per_token_max);
        if worst == 0 {
            break;
        }
        // Violating arcs joined: rebuild, then restore 1-optimality.
        rounds += 1;
        let mut price = std::mem::take(&mut net.price);
        raise_prices(gate, bins, &st, &mut price, &cost, &old_len);
        drop(net);
        net = build(gate, bins, &st, &supply, &cost, price);
        let units = net.violation_units(knobs.repair_max);
        if units == 0 {
            // The raise alone restored 1-optimality.
            continue;
        }
        if units <= knobs.repair_max && net.repair() {
            repairs += 1;
        } else {
            // Resume scaling from the worst violation (a smaller start
            // starves the refines into price wars).
            resumes += 1;
            net.scale(worst, ALPHA);
        }
    }
    let served = Served::from_lists(st.cands.iter().zip(&st.on).map(|(c, f)| {
        c.iter()
            .zip(f)
            .filter(|(_, &f)| f)
            .map(|(&e, _)| e)
            .collect::<Vec<_>>()
    }));
    Solution {
        served,
        price: net.price,
        scale,
        frac_bits: frac,
        rounds,
        repairs,
        resumes,
        mid_arcs,
    }
}

/// The network of the candidate arcs with their flows, arcs in token order.
fn build(
    gate: &Gate,
    bins: &Bins,
    st: &State,
    supply: &[i64],
    cost: &impl Fn(usize, usize) -> i64,
    price: Vec<i128>,
) -> Net {
    let (tokens, k, nb) = (gate.tokens(), gate.top_k(), bins.count());
    let z = (tokens + nb) as u32;
    let total = -supply[z as usize];
    let mut edges = Vec::with_capacity(st.cands.iter().map(|c| c.len() + 1).sum::<usize>() + nb);
    for t in 0..tokens {
        for (&e, &on) in st.cands[t].iter().zip(&st.on[t]) {
            edges.push(Edge {
                from: t as u32,
                to: (tokens + bins.bin(e as usize)) as u32,
                cap: 1,
                cost: cost(t, e as usize),
                flow: i64::from(on),
            });
        }
        edges.push(Edge {
            from: t as u32,
            to: z,
            cap: k as i64,
            cost: 0,
            flow: st.drop_flow[t],
        });
    }
    for (b, &flow) in st.bin_flow.iter().enumerate() {
        edges.push(Edge {
            from: (tokens + b) as u32,
            to: z,
            cap: i64::try_from(bins.cap(b)).unwrap_or(i64::MAX).min(total),
            cost: 0,
            flow,
        });
    }
    Net::new(supply, &edges, price)
}

/// Copies the flow on every arc (in [`build`]'s order) into `st`.
fn read_back(net: &Net, st: &mut State) {
    let mut i = 0;
    for (on, drop) in st.on.iter_mut().zip(st.drop_flow.iter_mut()) {
        for f in on.iter_mut() {
            *f = net.flow(i) == 1;
            i += 1;
        }
        *drop = net.flow(i);
        i += 1;
    }
    for f in st.bin_flow.iter_mut() {
        *f = net.flow(i);
        i += 1;
    }
}

/// Adds the arcs outside the candidates whose reduced cost is below -1 (they
/// would break 1-optimality), at most `per_token` per token (the most
/// violating); returns the worst violation added, 0 when there is none.
fn certify(
    gate: &Gate,
    bins: &Bins,
    st: &mut State,
    price: &[i128],
    cost: &impl Fn(usize, usize) -> i64,
    per_token: usize,
) -> i128 {
    let (tokens, experts) = (gate.tokens(), gate.experts());
    let mut is_cand = vec![false; experts];
    let mut found: Vec<(i128, u32)> = Vec::new();
    let mut worst = 0;
    for t in 0..tokens {
        if st.cands[t].len() == experts {
            continue;
        }
        for &e in &st.cands[t] {
            is_cand[e as usize] = true;
        }
        found.clear();
        for (e, cand) in is_cand.iter().enumerate() {
            if *cand {
                continue;
            }
            let rc = cost(t, e) as i128 + price[t] - price[tokens + bins.bin(e)];
            if rc < -1 {
                found.push((rc, e as u32));
            }
        }
        for &e in &st.cands[t] {
            is_cand[e as usize] = false;
        }
        if found.len() > per_token.max(1) {
            let per_token = per_token.max(1);
            // The most violating ones (ties to the lower expert), in expert order.
            found.select_nth_unstable(per_token - 1);
            found.truncate(per_token);
            found.sort_unstable_by_key(|&(_, e)| e);
        }
        for &(rc, e) in &found {
            worst = worst.max(-rc);
            st.cands[t].push(e);
            st.on[t].push(false);
        }
    }
    worst
}

/// Before a certificate round's repair: a token whose new arcs break
/// 1-optimality keeps at most as many of them violating as it drops units
/// (what those units can use), and its price rises until the rest reach
/// reduced cost -1. The raise makes its drop arc's reverse violate, so its
/// dropped units come back: the excess left lands on bins and the sink, a
/// short way from where it is needed, instead of one unit per new arc.
fn raise_prices(
    gate: &Gate,
    bins: &Bins,
    st: &State,
    price: &mut [i128],
    cost: &impl Fn(usize, usize) -> i64,
    old_len: &[usize],
) {
    let tokens = gate.tokens();
    let mut rcs: Vec<i128> = Vec::new();
    for t in 0..tokens {
        let new = &st.cands[t][old_len[t]..];
        if new.is_empty() {
            continue;
        }
        rcs.clear();
        rcs.extend(new.iter().map(|&e| {
            cost(t, e as usize) as i128 + price[t] - price[tokens + bins.bin(e as usize)]
        }));
        rcs.sort_unstable();
        let j = usize::try_from(st.drop_flow[t]).unwrap_or(usize::MAX);
        if let Some(&r) = rcs.get(j) {
            price[t] += -1 - r;
        }
    }
}
