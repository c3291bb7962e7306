//! `drop:*` and the per-bin selection that `expand:local` shares. CPU twin of
//! the capacity kernels.

use super::capacity::Bins;
use super::gate::Gate;
use super::numerics::splitmix64;
use super::policy::DropRank;
use super::served::Served;
use std::cmp::Reverse;

/// For each bin, keeps the `cap` candidates with the smallest `key(t, e, i)`,
/// `i` being the candidate's index; returns a flag per candidate. Every key
/// ends in `i`, so keys are unique and the result is deterministic: it is what
/// a stable sort of the candidates by the key's leading part gives (the GPU
/// twin's radix sort).
pub(crate) fn keep_per_bin<K: Ord>(
    cands: &[(u32, u32)],
    bins: &Bins,
    key: impl Fn(u32, u32, u32) -> K,
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
            key(t, e, i)
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

/// Score key: larger `p` first, then candidate order. Candidates come token by
/// token, and within a token in decreasing `p` with ties to the lower expert,
/// so this is `(p desc, token, expert)`.
pub(crate) fn score_key(gate: &Gate) -> impl Fn(u32, u32, u32) -> (Reverse<u32>, u32) + '_ {
    move |t, e, i| (Reverse(gate.p(t as usize, e as usize).to_bits()), i)
}

/// The hash that ranks an assignment under `drop:random:SEED`: 52 bits, so a
/// GPU sort key holds it next to a 10-bit bin index.
#[inline]
pub fn random_key(seed: u64, t: u32, e: u32) -> u64 {
    splitmix64(splitmix64(seed) ^ (((t as u64) << 32) | e as u64)) >> 12
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
        // Candidates are in (token, top-k position) order already.
        DropRank::Order => keep_per_bin(&cands, bins, |_, _, i| i),
        DropRank::ReverseOrder => keep_per_bin(&cands, bins, |t, _, i| (Reverse(t), i)),
        DropRank::Random { seed } => {
            keep_per_bin(&cands, bins, |t, e, i| (random_key(seed, t, e), i))
        }
    };
    Served::from_kept(gate.tokens(), &cands, &keep)
}
