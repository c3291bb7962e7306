//! `drop:*` and the per-bin selection that `expand:local` shares. CPU twin of
//! the capacity kernels.

use super::capacity::Bins;
use super::gate::Gate;
use super::numerics::splitmix64;
use super::policy::DropRank;
use super::served::Served;
use std::cmp::Reverse;

/// For each bin, keeps the `cap` candidates with the smallest `key`; returns a
/// flag per candidate. Keys must be unique per candidate for a deterministic
/// result (every caller ends its key with `(t, e)`).
pub(crate) fn keep_per_bin<K: Ord>(
    cands: &[(u32, u32)],
    bins: &Bins,
    key: impl Fn(u32, u32) -> K,
) -> Vec<bool> {
    let mut keep = vec![true; cands.len()];
    let mut per_bin: Vec<Vec<u32>> = vec![Vec::new(); bins.count()];
    for (i, &(_, e)) in cands.iter().enumerate() {
        per_bin[bins.bin(e as usize)].push(i as u32);
    }
    for (b, idx) in per_bin.iter_mut().enumerate() {
        let cap = usize::try_from(bins.cap(b)).unwrap_or(usize::MAX);
        if idx.len() <= cap {
            continue;
        }
        let by_key = |&i: &u32| {
            let (t, e) = cands[i as usize];
            key(t, e)
        };
        if cap > 0 {
            idx.select_nth_unstable_by_key(cap - 1, by_key);
        }
        for &i in &idx[cap..] {
            keep[i as usize] = false;
        }
    }
    keep
}

/// Score key: larger `p` first, then lower token, then lower expert.
pub(crate) fn score_key(gate: &Gate) -> impl Fn(u32, u32) -> (Reverse<u32>, u32, u32) + '_ {
    move |t, e| (Reverse(gate.p(t as usize, e as usize).to_bits()), t, e)
}

/// The hash that ranks an assignment under `drop:random:SEED`.
#[inline]
pub fn random_key(seed: u64, t: u32, e: u32) -> u64 {
    splitmix64(splitmix64(seed) ^ (((t as u64) << 32) | e as u64))
}

/// Top-k assignments, in flat `(t, j)` order.
pub(crate) fn topk_candidates(gate: &Gate) -> Vec<(u32, u32)> {
    let k = gate.top_k();
    gate.topk_all()
        .iter()
        .enumerate()
        .map(|(i, &e)| ((i / k) as u32, e))
        .collect()
}

pub(crate) fn drop(gate: &Gate, bins: &Bins, rank: DropRank) -> Served {
    let cands = topk_candidates(gate);
    let keep = match rank {
        DropRank::Score => keep_per_bin(&cands, bins, score_key(gate)),
        DropRank::Order => keep_per_bin(&cands, bins, |t, e| (t, e)),
        DropRank::ReverseOrder => keep_per_bin(&cands, bins, |t, e| (Reverse(t), e)),
        DropRank::Random { seed } => {
            keep_per_bin(&cands, bins, |t, e| (random_key(seed, t, e), t, e))
        }
    };
    Served::from_kept(gate.tokens(), &cands, &keep)
}
