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
    let mut cursor = vec![k as u32; tokens];
    let mut prefs: Vec<Option<Vec<u32>>> = vec![None; tokens];
    let mut queue: VecDeque<(u32, u32)> = VecDeque::new();
    // Each rejection sends the token's next proposal, if it has experts left.
    let mut reject = |r: usize, queue: &mut VecDeque<(u32, u32)>| {
        if (cursor[r] as usize) < experts {
            let pref = prefs[r].get_or_insert_with(|| gate.preference(r));
            queue.push_back((r as u32, pref[cursor[r] as usize]));
            cursor[r] += 1;
        }
    };

    // Round one in bulk: each bin keeps its best `cap` top-k proposals.
    let mut first: Vec<Vec<Worst>> = vec![Vec::new(); bins.count()];
    for t in 0..tokens {
        for &e in gate.topk(t) {
            first[bins.bin(e as usize)].push(worst_key(t as u32, e));
        }
    }
    let mut held: Vec<BinaryHeap<Worst>> = Vec::with_capacity(bins.count());
    for (b, mut props) in first.into_iter().enumerate() {
        let cap = usize::try_from(bins.cap(b)).unwrap_or(usize::MAX);
        if props.len() > cap {
            if cap > 0 {
                props.select_nth_unstable(cap - 1);
            }
            let mut out: Vec<u32> = props[cap..].iter().map(|&(_, t, _)| t).collect();
            out.sort_unstable();
            for t in out {
                reject(t as usize, &mut queue);
            }
            props.truncate(cap);
        }
        held.push(BinaryHeap::from(props));
    }

    // Later proposals one at a time; the outcome does not depend on order.
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
            reject(r as usize, &mut queue);
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
