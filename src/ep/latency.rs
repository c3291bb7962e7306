//! The expert-parallel latency model: the slowest rank's measured expert work
//! plus an all-to-all modelled at a stated bandwidth.

use crate::routing::{Placement, RoutingPlan};
use serde::Serialize;

/// All-to-all traffic of one MoE layer under EP placement (design.md §3:
/// rank `r` owns token block `floor(rT/R)..floor((r+1)T/R)` and experts
/// `rE/R..(r+1)E/R`).
///
/// A token is sent once to every *other* rank that serves at least one of its
/// experts (one copy per destination rank, however many of that rank's
/// experts it uses, as EP dispatch kernels deduplicate); the combine sends the
/// same rows back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct A2aTraffic {
    /// Token rows rank `r` sends to other ranks in the dispatch.
    pub send: Vec<u64>,
    /// Token rows rank `r` receives from other ranks in the dispatch.
    pub recv: Vec<u64>,
    /// Token rows crossing ranks in one direction, all ranks together.
    pub total: u64,
}

impl A2aTraffic {
    /// The busiest rank's rows in one direction: `max_r max(send[r], recv[r])`.
    pub fn busiest(&self) -> u64 {
        self.send
            .iter()
            .zip(&self.recv)
            .map(|(&s, &r)| s.max(r))
            .max()
            .unwrap_or(0)
    }
}

/// Counts the rows each rank sends and receives in `plan`'s dispatch.
pub fn a2a_traffic(plan: &RoutingPlan, placement: &Placement) -> A2aTraffic {
    let r = placement.ranks();
    let mut send = vec![0u64; r];
    let mut recv = vec![0u64; r];
    let mut seen = vec![usize::MAX; r];
    for t in 0..plan.tokens() {
        let src = placement.rank_of_token(t);
        for a in plan.assignments(t) {
            let dst = placement.rank_of_expert(a.expert as usize);
            if dst != src && seen[dst] != t {
                seen[dst] = t;
                send[src] += 1;
                recv[dst] += 1;
            }
        }
    }
    let total = send.iter().sum();
    A2aTraffic { send, recv, total }
}

/// The constants of the latency model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyModel {
    /// Bandwidth of each rank's link, per direction, GB/s (10^9 bytes/s).
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire (2: bf16, as deployed).
    pub elem_bytes: usize,
    /// Model hidden size: elements per token row on the wire.
    pub hidden: usize,
}

impl LatencyModel {
    /// Bytes the busiest rank moves in one direction of one all-to-all.
    pub fn a2a_bytes(&self, traffic: &A2aTraffic) -> u64 {
        traffic.busiest() * (self.hidden * self.elem_bytes) as u64
    }

    /// Modelled time of the layer's two all-to-alls (dispatch, then combine),
    /// seconds: `2 * max_r max(send_r, recv_r) * hidden * elem_bytes / bw`.
    /// Ranks' links run in parallel, so the busiest link sets the time.
    pub fn a2a_seconds(&self, traffic: &A2aTraffic) -> f64 {
        2.0 * self.a2a_bytes(traffic) as f64 / (self.a2a_gbps * 1e9)
    }
}

/// The median of `v` (upper median for even lengths); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{route, Logits, Policy, RouterConfig};

    #[test]
    fn traffic_counts_one_copy_per_remote_rank() {
        // 4 tokens, 4 experts, top-2; 2 ranks: tokens 0,1 and experts 0,1 on rank 0.
        #[rustfmt::skip]
        let logits = [
            5.0f32, 4.0, 0.0, 0.0, // t0 -> e0, e1: both local
            5.0, 0.0, 4.0, 0.0,    // t1 -> e0, e2: one copy to rank 1
            0.0, 0.0, 5.0, 4.0,    // t2 -> e2, e3: local to rank 1
            5.0, 4.0, 0.0, 0.0,    // t3 -> e0, e1: one copy to rank 0 (not two)
        ];
        let plan = route(
            &Logits::new(&logits, 4, 4).unwrap(),
            &RouterConfig::new(2, Policy::None),
        )
        .unwrap();
        let t = a2a_traffic(&plan, &Placement::new(2, 4, 4).unwrap());
        assert_eq!(t.send, vec![1, 1]);
        assert_eq!(t.recv, vec![1, 1]);
        assert_eq!(t.total, 2);
        let m = LatencyModel {
            a2a_gbps: 1.0,
            elem_bytes: 2,
            hidden: 500,
        };
        assert_eq!(m.a2a_bytes(&t), 1000);
        assert!((m.a2a_seconds(&t) - 2e-6).abs() < 1e-15);
    }

    #[test]
    fn median_is_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
