//! The EP MoE layer: one rank's part of every MoE layer, as a
//! [`MoeRunner`] for the model's forward pass.

use super::error::DistError;
use super::exchange::Exchange;
use super::rows::{host_rows, RowJob, Scratch};
use super::stats::LayerTimes;
use crate::backend::{BackendError, MoeOutput, MoeWeights};
use crate::ep::comm::{check_agreement, Communicator};
use crate::ep::EpBackend;
use crate::model::{Kept, MoeRunner};
use crate::routing::{capacity, DispatchLayout, Placement, RouterConfig, RoutingPlan};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

/// Rank `comm.rank()`'s part of every MoE layer of a forward pass, across
/// `comm.size()` ranks (design.md §9):
///
/// 1. the router logits of every token and the global plan, computed alike
///    on every rank (the dense part of the model is replicated, so each rank
///    has every token's hidden state: no routing traffic), then checked
///    equal across ranks by hash;
/// 2. dispatch: an all-to-all-v of this rank's token block's rows to the
///    ranks whose experts serve them, into a receive buffer allocated once,
///    sized from capacity (local experts x C rows; under `none`,
///    `T * min(k, E/R)` rows);
/// 3. the local experts' FFN, each over the rows and order the whole layout
///    gives it;
/// 4. combine: an all-to-all-v of the outputs back to their token's rank,
///    which sums them with their weights in plan order (as
///    [`crate::routing::combine`] does, so results are bit-identical on the CPU);
/// 5. an all-gather of the layer's output, for the replicated dense part.
///
/// The rank's model holds only its experts ([`crate::model::Model::load_expert_group`]).
pub struct EpMoe<'c, C: Communicator + ?Sized> {
    comm: &'c C,
    experts: usize,
    hidden: usize,
    max_tokens: usize,
    bound: usize,
    /// `bound * hidden`: the host receive buffer's length.
    recv_len: usize,
    state: Mutex<State>,
}

struct State {
    /// The host path's dispatch receive buffer, `bound * hidden`, allocated
    /// once, on the host path's first layer.
    recv: Vec<f32>,
    /// The device path's buffers.
    scratch: Scratch,
    /// Layers whose rows moved on the device path.
    device_layers: usize,
    times: Vec<LayerTimes>,
}

impl<'c, C: Communicator + ?Sized> EpMoe<'c, C> {
    /// Rank `comm.rank()` of `comm.size()` over a model of `experts` experts
    /// of width `hidden`, routed under `router`, for forwards of at most
    /// `max_tokens` tokens.
    pub fn new(
        comm: &'c C,
        experts: usize,
        hidden: usize,
        router: &RouterConfig,
        max_tokens: usize,
    ) -> Result<Self, DistError> {
        expert_group(comm.size(), comm.rank(), experts)?;
        if max_tokens == 0 {
            return Err(DistError::Zero("max_tokens"));
        }
        if hidden == 0 {
            return Err(DistError::Zero("hidden"));
        }
        let per = experts / comm.size();
        let bound = match router
            .capacity_factor
            .filter(|_| router.policy.has_capacity())
        {
            Some(gamma) => {
                let c = capacity(gamma, max_tokens, router.top_k, experts)
                    .map_err(|e| DistError::Model(e.into()))?;
                usize::try_from(c).unwrap_or(usize::MAX).saturating_mul(per)
            }
            None => max_tokens.saturating_mul(router.top_k.min(per)),
        }
        .min(max_tokens.saturating_mul(per));
        let len = bound.checked_mul(hidden).ok_or(DistError::TooManyTokens {
            tokens: max_tokens,
            max: usize::MAX / hidden / per.max(1),
        })?;
        Ok(Self {
            comm,
            experts,
            hidden,
            max_tokens,
            bound,
            recv_len: len,
            state: Mutex::new(State {
                recv: Vec::new(),
                scratch: Scratch::default(),
                device_layers: 0,
                times: Vec::new(),
            }),
        })
    }

    /// The communicator.
    pub fn comm(&self) -> &C {
        self.comm
    }

    /// This rank's expert group.
    pub fn group(&self) -> Range<usize> {
        let per = self.experts / self.comm.size();
        self.comm.rank() * per..(self.comm.rank() + 1) * per
    }

    /// Rows the dispatch receive buffer holds (local experts x capacity).
    pub fn bound_rows(&self) -> usize {
        self.bound
    }

    /// MoE layers whose rows moved GPU to GPU ([`EpBackend::device_rows`]:
    /// CUDA over NCCL) rather than through host memory, since this layer was
    /// made.
    pub fn device_layers(&self) -> usize {
        self.lock().device_layers
    }

    /// The layer times measured since the last call, in call order (one per
    /// MoE layer run).
    pub fn take_times(&self) -> Vec<LayerTimes> {
        std::mem::take(&mut self.lock().times)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another forward panicked; the buffers are
        // rewritten before every use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn layer<B: EpBackend>(
        &self,
        backend: &B,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<MoeOutput<B>, DistError> {
        let (comm, h) = (self.comm, self.hidden);
        let (tokens, cols) = backend.act_shape(x);
        if tokens > self.max_tokens {
            return Err(DistError::TooManyTokens {
                tokens,
                max: self.max_tokens,
            });
        }
        let group = self.group();
        if w.num_experts() != group.len() || cols != h {
            return Err(DistError::WrongGroup {
                rank: comm.rank(),
                held: 0..w.num_experts(),
                expected: group,
            });
        }
        let mut t = LayerTimes::default();

        let clock = Instant::now();
        let router = router.clone().with_ranks(comm.size());
        let plan = w.route(backend, x, &router)?;
        check_agreement(comm, "the layer's routing plan", plan_hash(&plan))?;
        let tile = backend.dispatch_tile();
        let layout = DispatchLayout::new(&plan, tile).map_err(|e| DistError::Model(e.into()))?;
        let local = layout
            .for_experts(&plan, group.clone())
            .map_err(|e| DistError::Model(e.into()))?;
        let placement = Placement::new(comm.size(), self.experts, tokens)
            .map_err(|e| DistError::Model(e.into()))?;
        let ex = Exchange::new(&plan, &placement, comm.rank(), local.offsets());
        t.route_ms = ms(clock);

        let rows_in = ex.recv_to_local.len();
        if rows_in > self.bound {
            return Err(DistError::Overfull {
                rank: comm.rank(),
                rows: rows_in,
                bound: self.bound,
            });
        }
        let job = RowJob {
            x,
            experts: &w.experts,
            plan: &plan,
            local: &local,
            ex: &ex,
            placement: &placement,
            hidden: h,
            bound: self.bound,
        };
        let mut state = self.lock();
        let state = &mut *state;
        let out = match backend.device_rows(comm, &job, &mut state.scratch, &mut t) {
            Some(out) => {
                let out = out?;
                state.device_layers += 1;
                out
            }
            None => {
                // The host receive buffer, allocated at its bound on first use.
                if state.recv.len() < self.recv_len {
                    state.recv = vec![0.0; self.recv_len];
                }
                host_rows(backend, comm, &job, &mut state.recv, &mut t)?
            }
        };

        t.rows = rows_in as f64;
        state.times.push(t);
        Ok(MoeOutput { out, plan, layout })
    }
}

impl<B: EpBackend, C: Communicator + ?Sized> MoeRunner<B> for EpMoe<'_, C> {
    fn run_moe(
        &self,
        backend: &B,
        _layer: usize,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, Option<Kept>), BackendError> {
        match self.layer(backend, w, x, router) {
            Ok(m) => Ok((m, None)),
            Err(e) => {
                // Peers must not wait for this rank: tell them why it left.
                if !matches!(e, DistError::Comm(_)) {
                    self.comm.abort(&e.to_string());
                }
                Err(e.into())
            }
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Rank `rank`'s expert group of `experts` split over `ranks` equal groups; a typed error
/// unless `ranks` divides `experts` (so `1 <= ranks <= experts`).
pub fn expert_group(ranks: usize, rank: usize, experts: usize) -> Result<Range<usize>, DistError> {
    if ranks == 0 || ranks > experts || experts % ranks != 0 || rank >= ranks {
        return Err(DistError::Placement { ranks, experts });
    }
    let per = experts / ranks;
    Ok(rank * per..(rank + 1) * per)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continued from `h`.
fn fnv(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// FNV-1a over the plan's assignments: equal on every rank that routed alike.
fn plan_hash(plan: &RoutingPlan) -> u64 {
    let words = plan
        .offsets()
        .iter()
        .chain(plan.expert_ids())
        .copied()
        .chain(plan.weights().iter().map(|w| w.to_bits()));
    fnv(FNV_OFFSET, words.flat_map(u32::to_le_bytes))
}

/// FNV-1a of what every rank must agree on before an EP run (model config,
/// router, rank count), for [`check_agreement`].
pub fn agreement_hash(what: &str) -> u64 {
    fnv(FNV_OFFSET, what.bytes())
}
