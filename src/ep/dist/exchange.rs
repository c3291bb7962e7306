//! Who sends which rows where: the index math of one EP MoE layer, computed
//! alike on every rank from the global plan. Pure and host-side, so it is
//! tested without a communicator.

use crate::routing::{Placement, RoutingPlan};
use std::ops::Range;

/// One rank's view of a layer's dispatch and combine.
///
/// Dispatch sends, to each rank `d` in order, the rows of this rank's token
/// block that `d`'s experts serve, expert by expert, tokens ascending. The
/// receiver gets them from each source rank in order; since token blocks are
/// contiguous and ascending, each local expert's rows then come in
/// increasing token order: the rows and order of the whole layout. Combine
/// sends each received row's output back in the order it came, so the
/// source finds its assignments where it sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// This rank's token block.
    pub block: Range<usize>,
    /// Tokens of the rows sent in dispatch, in send order.
    pub send_tokens: Vec<u32>,
    /// Rows sent to each rank in dispatch (received back in combine).
    pub send_rows: Vec<usize>,
    /// Rows received from each rank in dispatch (sent back in combine).
    pub recv_rows: Vec<usize>,
    /// For each received row, its row in the local expert-major layout
    /// (the whole layout's `for_experts` of this rank's group).
    pub recv_to_local: Vec<u32>,
    /// For each served assignment of this rank's tokens (plan order, from
    /// the block's first), the send row that carried it.
    pub assignment_slot: Vec<u32>,
}

impl Exchange {
    /// The exchange of rank `rank` under `placement` (over the plan's tokens
    /// and experts), with the local layout's segment starts `local_offsets`
    /// (`E / R + 1` entries).
    pub fn new(
        plan: &RoutingPlan,
        placement: &Placement,
        rank: usize,
        local_offsets: &[u32],
    ) -> Self {
        let ranks = placement.ranks();
        let group = placement.expert_group(rank);
        let block = placement.token_block(rank);
        let offs = plan.offsets();
        let ids = plan.expert_ids();
        let assigned = |t: usize| offs[t] as usize..offs[t + 1] as usize;

        // Dispatch sends: this block's assignments, grouped by expert.
        let mut by_expert: Vec<Vec<(u32, usize)>> = vec![Vec::new(); plan.experts()];
        for t in block.clone() {
            for i in assigned(t) {
                by_expert[ids[i] as usize].push((t as u32, i));
            }
        }
        let first = offs[block.start] as usize;
        let mut assignment_slot = vec![0u32; offs[block.end] as usize - first];
        let mut send_tokens = Vec::with_capacity(assignment_slot.len());
        let mut send_rows = vec![0usize; ranks];
        for (d, rows) in send_rows.iter_mut().enumerate() {
            for e in placement.expert_group(d) {
                for &(t, i) in &by_expert[e] {
                    assignment_slot[i - first] = send_tokens.len() as u32;
                    send_tokens.push(t);
                    *rows += 1;
                }
            }
        }

        // Dispatch receives: n[s][e] rows of local expert e from rank s.
        let per = group.len();
        let mut n = vec![vec![0usize; per]; ranks];
        for (s, from) in n.iter_mut().enumerate() {
            for t in placement.token_block(s) {
                for i in assigned(t) {
                    let e = ids[i] as usize;
                    if group.contains(&e) {
                        from[e - group.start] += 1;
                    }
                }
            }
        }
        let recv_rows: Vec<usize> = n.iter().map(|from| from.iter().sum()).collect();
        let mut recv_to_local = Vec::with_capacity(recv_rows.iter().sum());
        // Rows of expert e from ranks before s come first in its segment.
        let mut before = vec![0usize; per];
        for from in &n {
            for (e, (&count, seen)) in from.iter().zip(before.iter_mut()).enumerate() {
                let start = local_offsets[e] as usize + *seen;
                recv_to_local.extend((start..start + count).map(|r| r as u32));
                *seen += count;
            }
        }
        Self {
            block,
            send_tokens,
            send_rows,
            recv_rows,
            recv_to_local,
            assignment_slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exchange;
    use crate::routing::{route, DispatchLayout, Logits, Placement, Policy, RouterConfig};

    fn plan(tokens: usize, experts: usize, k: usize, seed: u32) -> crate::routing::RoutingPlan {
        let l: Vec<f32> = (0..tokens * experts)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 100.0)
            .collect();
        route(
            &Logits::new(&l, tokens, experts).unwrap(),
            &RouterConfig::new(k, Policy::None),
        )
        .unwrap()
    }

    /// Every rank's sends, received in rank order, land on the local rows the
    /// whole layout puts those tokens on.
    #[test]
    fn dispatch_lands_each_row_where_the_whole_layout_has_it() {
        for (tokens, ranks) in [(9, 2), (7, 4), (1, 4), (16, 1), (3, 4)] {
            let p = plan(tokens, 8, 2, tokens as u32);
            let placement = Placement::new(ranks, 8, tokens).unwrap();
            let ex: Vec<Exchange> = (0..ranks)
                .map(|r| {
                    let g = DispatchLayout::new(&p, 1)
                        .unwrap()
                        .for_experts(&p, placement.expert_group(r))
                        .unwrap();
                    Exchange::new(&p, &placement, r, g.offsets())
                })
                .collect();
            for (r, me) in ex.iter().enumerate() {
                let g = DispatchLayout::new(&p, 1)
                    .unwrap()
                    .for_experts(&p, placement.expert_group(r))
                    .unwrap();
                // Rows from s to r: s's send segment for r.
                let mut got = Vec::new();
                for (s, src) in ex.iter().enumerate() {
                    let start: usize = src.send_rows[..r].iter().sum();
                    got.extend_from_slice(&src.send_tokens[start..start + src.send_rows[r]]);
                    assert_eq!(me.recv_rows[s], src.send_rows[r]);
                }
                assert_eq!(got.len(), me.recv_to_local.len());
                for (p_, &t) in got.iter().enumerate() {
                    assert_eq!(g.row_tokens()[me.recv_to_local[p_] as usize], t);
                }
                // Each assignment's slot carries its token.
                let first = p.offsets()[me.block.start] as usize;
                for t in me.block.clone() {
                    for i in p.offsets()[t] as usize..p.offsets()[t + 1] as usize {
                        assert_eq!(
                            me.send_tokens[me.assignment_slot[i - first] as usize],
                            t as u32
                        );
                    }
                }
            }
        }
    }
}
