//! Who sends which rows where: the index math of one EP MoE layer, computed
//! alike on every rank from the global plan. Pure and host-side, so it is
//! tested without a communicator.

use crate::routing::{Placement, RoutingPlan, PAD};
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

    /// For each of the local layout's `local_rows` rows, its row in the
    /// dispatch receive buffer (`PAD` for a padding row): the inverse of
    /// `recv_to_local`, for a gather.
    pub fn local_sources(&self, local_rows: usize) -> Vec<u32> {
        let mut src = vec![PAD; local_rows];
        for (p, &r) in self.recv_to_local.iter().enumerate() {
            src[r as usize] = p as u32;
        }
        src
    }

    /// The block's plan offsets from 0, padded with empty tokens to
    /// `block_max` tokens (`block_max + 1` entries), and the block's
    /// assignments' range in the plan: with `assignment_slot`, the combine
    /// of the block's rows returned in combine.
    pub fn block_offsets(&self, plan: &RoutingPlan, block_max: usize) -> (Vec<u32>, Range<usize>) {
        let offs = plan.offsets();
        let (first, last) = (offs[self.block.start], offs[self.block.end]);
        let mut rel: Vec<u32> = offs[self.block.start..=self.block.end]
            .iter()
            .map(|&o| o - first)
            .collect();
        rel.resize(block_max.max(self.block.len()) + 1, last - first);
        (rel, first as usize..last as usize)
    }
}

/// For each token in order, its row in the all-gather of every rank's
/// `block_max`-row block of outputs.
pub fn gathered_rows(placement: &Placement, block_max: usize) -> Vec<u32> {
    (0..placement.ranks())
        .flat_map(|r| (0..placement.token_block(r).len()).map(move |j| (r * block_max + j) as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{gathered_rows, Exchange};
    use crate::routing::{route, DispatchLayout, Logits, Placement, Policy, RouterConfig, PAD};

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

    /// The device path's data flow (ep/dist/device.rs) run on the host with its index lists:
    /// gather by `send_tokens`, the all-to-all-v by segments, gather by `local_sources`, an
    /// "expert" per row, gather back by `recv_to_local`, the all-to-all-v back, the block combine
    /// over `block_offsets` and `assignment_slot`, the all-gather, and the gather by
    /// `gathered_rows`: every rank ends with the one-process combine, bit for bit, for 1 to 4
    /// ranks, blocks of unequal and zero size, and plans that drop assignments.
    #[test]
    fn the_device_index_lists_give_the_one_process_combine() {
        const H: usize = 3;
        let expert = |e: usize, x: &[f32]| -> Vec<f32> {
            x.iter()
                .enumerate()
                .map(|(i, v)| v * (e as f32 + 1.5) - i as f32)
                .collect()
        };
        for (tokens, ranks, policy) in [
            (9, 2, "none"),
            (7, 4, "drop:score"),
            (3, 4, "none"),
            (1, 4, "drop:score"),
            (16, 1, "reroute:next-best"),
            (13, 4, "drop:score"),
        ] {
            let l: Vec<f32> = (0..tokens * 8)
                .map(|i| ((i as u32).wrapping_mul(2654435761) % 1000) as f32 / 100.0)
                .collect();
            let mut cfg = RouterConfig::new(2, policy.parse().unwrap());
            if policy != "none" {
                cfg = cfg.with_capacity_factor(0.75);
            }
            let p = route(&Logits::new(&l, tokens, 8).unwrap(), &cfg).unwrap();
            let x: Vec<f32> = (0..tokens * H).map(|i| i as f32 * 0.25 - 2.0).collect();
            // One process: each token's assignments summed in plan order.
            let mut want = vec![0.0f32; tokens * H];
            for t in 0..tokens {
                for i in p.offsets()[t] as usize..p.offsets()[t + 1] as usize {
                    let y = expert(p.expert_ids()[i] as usize, &x[t * H..(t + 1) * H]);
                    for (a, v) in want[t * H..(t + 1) * H].iter_mut().zip(y) {
                        *a += p.weights()[i] * v;
                    }
                }
            }
            let placement = Placement::new(ranks, 8, tokens).unwrap();
            let whole = DispatchLayout::new(&p, 1).unwrap();
            let locals: Vec<DispatchLayout> = (0..ranks)
                .map(|r| whole.for_experts(&p, placement.expert_group(r)).unwrap())
                .collect();
            let ex: Vec<Exchange> = (0..ranks)
                .map(|r| Exchange::new(&p, &placement, r, locals[r].offsets()))
                .collect();
            let gather = |src: &[f32], idx: &[u32]| -> Vec<f32> {
                idx.iter()
                    .flat_map(|&i| {
                        if i == PAD {
                            vec![0.0; H]
                        } else {
                            src[i as usize * H..(i as usize + 1) * H].to_vec()
                        }
                    })
                    .collect()
            };
            // Segment `to` of a rank's rank-ordered buffer.
            let seg = |buf: &[f32], rows: &[usize], to: usize| -> Vec<f32> {
                let start: usize = rows[..to].iter().sum();
                buf[start * H..(start + rows[to]) * H].to_vec()
            };
            let send: Vec<Vec<f32>> = ex.iter().map(|e| gather(&x, &e.send_tokens)).collect();
            let back_send: Vec<Vec<f32>> = (0..ranks)
                .map(|d| {
                    let recv: Vec<f32> = (0..ranks)
                        .flat_map(|s| seg(&send[s], &ex[s].send_rows, d))
                        .collect();
                    let rows = gather(&recv, &ex[d].local_sources(locals[d].rows()));
                    let group = placement.expert_group(d);
                    let offs = locals[d].offsets();
                    let mut y = vec![0.0f32; rows.len()];
                    for (j, e) in group.enumerate() {
                        for r in offs[j] as usize..offs[j + 1] as usize {
                            y[r * H..(r + 1) * H]
                                .copy_from_slice(&expert(e, &rows[r * H..(r + 1) * H]));
                        }
                    }
                    gather(&y, &ex[d].recv_to_local)
                })
                .collect();
            let block_max = tokens.div_ceil(ranks);
            let mut all = Vec::new();
            for s in 0..ranks {
                let back: Vec<f32> = (0..ranks)
                    .flat_map(|d| seg(&back_send[d], &ex[d].recv_rows, s))
                    .collect();
                let (rel, mine) = ex[s].block_offsets(&p, block_max);
                assert_eq!(rel.len(), block_max + 1);
                let w = &p.weights()[mine];
                let mut block = vec![0.0f32; block_max * H];
                for j in 0..block_max {
                    let span = rel[j] as usize..rel[j + 1] as usize;
                    for (&wa, &q) in w[span.clone()].iter().zip(&ex[s].assignment_slot[span]) {
                        let q = q as usize;
                        for (o, v) in block[j * H..(j + 1) * H]
                            .iter_mut()
                            .zip(&back[q * H..(q + 1) * H])
                        {
                            *o += wa * v;
                        }
                    }
                }
                all.extend(block);
            }
            let got = gather(&all, &gathered_rows(&placement, block_max));
            assert_eq!(got, want, "T {tokens}, R {ranks}, {policy}");
        }
    }
}
