//! `expand:local`, the paper's Expanded Drop: each token's candidates are its
//! top-k plus every expert on its own EP rank (no extra all-to-all traffic),
//! then `drop:score` per bin.

use super::capacity::{Bins, Placement};
use super::drop::{keep_per_bin, score_key};
use super::gate::Gate;
use super::served::Served;

pub(crate) fn expand_local(gate: &Gate, bins: &Bins, placement: &Placement) -> Served {
    let mut cands = Vec::new();
    for t in 0..gate.tokens() {
        let topk = gate.topk(t);
        cands.extend(topk.iter().map(|&e| (t as u32, e)));
        let local = placement.expert_group(placement.rank_of_token(t));
        cands.extend(
            local
                .map(|e| e as u32)
                .filter(|e| !topk.contains(e))
                .map(|e| (t as u32, e)),
        );
    }
    let keep = keep_per_bin(&cands, bins, score_key(gate));
    Served::from_kept(gate.tokens(), &cands, &keep)
}
