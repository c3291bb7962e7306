//! `reroute:next-best`: token-proposing deferred acceptance.
//!
//! Tokens rank experts by `p` (ties to the lower index); a bin ranks
//! assignments by `p[t,e]` (ties to the lower token, then expert). Every token
//! first proposes to its top-k; a bin holds its best `cap` proposals; each
//! rejected slot proposes to the token's next expert. With strict responsive
//! preferences the result is the token-optimal stable assignment, which does
//! not depend on the order proposals are processed in, so a GPU that runs
//! rounds in parallel (at most E of them) reaches the same plan.

use crate::routing::capacity::Bins;
use crate::routing::gate::Gate;
use crate::routing::served::Served;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Worst-first key of a held proposal: the max-heap top is the bin's worst.
type Worst = (Reverse<u32>, u32, u32);

pub(crate) fn next_best(gate: &Gate, bins: &Bins) -> Served {
    let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
    let worst_key =
        |t: u32, e: u32| -> Worst { (Reverse(gate.p(t as usize, e as usize).to_bits()), t, e) };
    let mut held: Vec<BinaryHeap<Worst>> = vec![BinaryHeap::new(); bins.count()];
    let mut cursor = vec![k as u32; tokens];
    let mut prefs: Vec<Option<Vec<u32>>> = vec![None; tokens];
    let mut queue: VecDeque<(u32, u32)> = (0..tokens)
        .flat_map(|t| gate.topk(t).iter().map(move |&e| (t as u32, e)))
        .collect();

    while let Some((t, e)) = queue.pop_front() {
        let b = bins.bin(e as usize);
        let heap = &mut held[b];
        let key = worst_key(t, e);
        let rejected = if (heap.len() as u64) < bins.cap(b) {
            heap.push(key);
            None
        } else {
            match heap.peek() {
                // A smaller key is a better proposal: evict the worst.
                Some(w) if key < *w => {
                    let (_, wt, _) = heap.pop().expect("peeked");
                    heap.push(key);
                    Some(wt)
                }
                _ => Some(t),
            }
        };
        if let Some(r) = rejected {
            let r = r as usize;
            if (cursor[r] as usize) < experts {
                let pref = prefs[r].get_or_insert_with(|| gate.preference(r));
                queue.push_back((r as u32, pref[cursor[r] as usize]));
                cursor[r] += 1;
            }
        }
    }

    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); tokens];
    for heap in held {
        for (_, t, e) in heap {
            lists[t as usize].push(e);
        }
    }
    Served::from_lists(lists.into_iter())
}
