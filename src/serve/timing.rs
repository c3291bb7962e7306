//! What a step costs on the virtual clock: measured wall time with the MoE layers' share
//! replaced by a model of expert parallelism (labelled "modelled EP" in every report), or,
//! under [`StepClock::MeasuredEp`], the measured wall time of the slowest of the real EP ranks
//! the forward ran on (labelled "measured EP").
//!
//! Per forward pass the benchmark measures its wall time and, inside it, each MoE layer's
//! wall time on this machine (all experts in one process). Under EP over `R` ranks a layer
//! waits for its busiest rank, so the modelled layer time is the measured MoE time scaled by
//! the busiest rank's share of the layer's rows (`moe x busiest / total`), plus the two
//! all-to-alls of [`LatencyModel`] when a bandwidth is given. A rank's busy time is the measured
//! MoE time scaled by its own share. The rest of the pass (attention, norms, the LM head) is
//! taken as measured.

use crate::backend::{Backend, BackendError, MoeOutput, MoeWeights};
use crate::ep::LatencyModel;
use crate::model::{Kept, MoeRunner};
use crate::routing::RouterConfig;
use std::time::{Duration, Instant};

/// How a step's duration on the virtual clock is found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepClock {
    /// Measured wall time of each forward pass, its MoE layers modelled under EP (module docs);
    /// `a2a` adds the modelled all-to-alls.
    Measured {
        /// The all-to-all model, if any.
        a2a: Option<LatencyModel>,
    },
    /// Measured on real EP ranks ([`serve_ep`](super::serve_ep)): every forward runs across
    /// the ranks of a communicator, which exchange the rows of every MoE layer, and lasts the
    /// measured wall time of the slowest rank, its waits inside the collectives included. A
    /// rank's busy time is its measured expert FFN time. Nothing is modelled.
    MeasuredEp,
    /// No timing at all: a forward of `T` tokens "takes" `per_forward_s + per_token_s * T`,
    /// half of it in the MoE layers (tests, and runs that must be deterministic).
    Synthetic {
        /// Seconds per forward pass.
        per_forward_s: f64,
        /// Seconds per token of the pass.
        per_token_s: f64,
    },
}

/// Times each MoE layer's work inside a forward pass ([`MoeRunner`]): it keeps the layer's
/// measured [`Duration`].
pub(crate) struct MoeTimer;

impl<B: Backend> MoeRunner<B> for MoeTimer {
    fn run_moe(
        &self,
        backend: &B,
        _layer: usize,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, Option<Kept>), BackendError> {
        let t = Instant::now();
        let m = w.forward(backend, x, router)?;
        Ok((m, Some(Box::new(t.elapsed()))))
    }
}

/// The seconds a kept record holds (0 when it holds no [`Duration`]).
pub(crate) fn kept_seconds(k: Option<&Kept>) -> f64 {
    k.and_then(|k| k.downcast_ref::<Duration>())
        .map_or(0.0, Duration::as_secs_f64)
}

/// One MoE layer of one forward pass, as the clock needs it.
pub(crate) struct LayerCostInput {
    /// Measured MoE seconds on this machine.
    pub moe_s: f64,
    /// Rows per EP rank.
    pub rank_rows: Vec<u64>,
    /// Modelled all-to-all seconds.
    pub a2a_s: f64,
}

/// What one forward pass cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ForwardCost {
    /// Its duration on the virtual clock.
    pub duration_s: f64,
    /// Measured wall time.
    pub wall_s: f64,
    /// Measured MoE time (all experts on this machine).
    pub moe_s: f64,
    /// Modelled EP MoE time (busiest rank, all-to-alls included).
    pub ep_moe_s: f64,
    /// Modelled all-to-all time.
    pub a2a_s: f64,
    /// Modelled busy seconds per rank.
    pub rank_busy_s: Vec<f64>,
    /// Measured seconds per rank inside the dispatch and combine collectives (empty when
    /// modelled).
    pub rank_wait_s: Vec<f64>,
}

/// What one rank measured in one forward pass across EP ranks, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RankForward {
    /// The whole forward on this rank (its waits for the slowest peer included).
    pub wall_s: f64,
    /// Its MoE layers (route, exchange, experts, gather).
    pub moe_s: f64,
    /// Its experts' FFN.
    pub expert_s: f64,
    /// Inside the dispatch and combine all-to-alls.
    pub wait_s: f64,
}

impl RankForward {
    pub const FIELDS: usize = 4;
    pub fn to_array(self) -> [f64; Self::FIELDS] {
        [self.wall_s, self.moe_s, self.expert_s, self.wait_s]
    }
    pub fn from_slice(a: &[f64]) -> Self {
        let at = |i: usize| a.get(i).copied().unwrap_or(0.0);
        Self {
            wall_s: at(0),
            moe_s: at(1),
            expert_s: at(2),
            wait_s: at(3),
        }
    }
}

/// The cost of a forward measured on EP ranks (one record per rank): it lasts the slowest
/// rank's wall time; its MoE time is the slowest rank's; each rank is busy for its expert time.
pub(crate) fn measured_ep_cost(ranks: &[RankForward]) -> ForwardCost {
    let max = |f: fn(&RankForward) -> f64| ranks.iter().map(f).fold(0.0, f64::max);
    let wall = max(|r| r.wall_s);
    let moe = max(|r| r.moe_s);
    ForwardCost {
        duration_s: wall,
        wall_s: wall,
        moe_s: moe,
        ep_moe_s: moe,
        a2a_s: 0.0,
        rank_busy_s: ranks.iter().map(|r| r.expert_s).collect(),
        rank_wait_s: ranks.iter().map(|r| r.wait_s).collect(),
    }
}

/// The cost of a forward of `wall_s` measured seconds with `layers` (see the module docs).
pub(crate) fn forward_cost(wall_s: f64, layers: &[LayerCostInput], ranks: usize) -> ForwardCost {
    let mut c = ForwardCost {
        wall_s,
        rank_busy_s: vec![0.0; ranks],
        ..ForwardCost::default()
    };
    for l in layers {
        let total: u64 = l.rank_rows.iter().sum();
        let busiest = l.rank_rows.iter().copied().max().unwrap_or(0);
        let share = |rows: u64| {
            if total > 0 {
                rows as f64 / total as f64
            } else {
                1.0 / ranks.max(1) as f64
            }
        };
        c.moe_s += l.moe_s;
        c.a2a_s += l.a2a_s;
        c.ep_moe_s += l.moe_s * share(busiest) + l.a2a_s;
        for (b, &r) in c.rank_busy_s.iter_mut().zip(&l.rank_rows) {
            *b += l.moe_s * share(r);
        }
    }
    c.duration_s = (wall_s - c.moe_s).max(0.0) + c.ep_moe_s;
    c
}
