//! What EP rank replay and the benchmark ask of a backend beyond the model's
//! needs: an extension of [`Backend`] that the CPU and CUDA backends
//! implement here (`backend_cpu.rs`, `backend_cuda.rs`), so a backend
//! written elsewhere need not.

use crate::backend::{BackendError, MoeOutput, MoeWeights};
use crate::ep::comm::Communicator;
use crate::ep::dist::{DistError, LayerTimes, RowJob, Scratch};
use crate::model::ModelBackend;
use crate::routing::{DispatchLayout, RouterConfig};
use std::ops::Range;
use std::time::Instant;

/// EP rank replay and benchmark hooks of a backend.
pub trait EpBackend: ModelBackend {
    /// What [`EpBackend::moe_kept`] keeps of one layer for EP rank replay
    /// ([`crate::ep::RankReplay::rank_work`]): the CPU keeps the host layout
    /// and rows ([`crate::backend::HostRankLayer`]); CUDA keeps its device
    /// plan, layout and rows.
    type RankLayer: Send + Sync + 'static;

    /// [`crate::backend::Backend::moe`] with its plan, also keeping what replaying one EP
    /// rank's experts needs. Same output and plan as `moe`.
    fn moe_kept(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<Self>, Self::RankLayer), BackendError>;

    /// The host dispatch layout of a kept layer.
    fn rank_layout(layer: &Self::RankLayer) -> &DispatchLayout;

    /// The FFN of experts `range` on a kept layer: one EP rank's expert
    /// work, as [`crate::backend::Backend::expert_ffn`] on the layer's rows. Returns the rows
    /// `offsets[range.start] .. offsets[range.end]` of its layout, `[those
    /// rows, hidden]`; padding rows are zero on the CPU and unwritten on
    /// CUDA's device layout.
    fn rank_ffn(
        &self,
        layer: &Self::RankLayer,
        experts: &Self::Experts,
        range: Range<usize>,
    ) -> Result<Self::Act, BackendError>;

    /// Routing alone, the plan discarded: what a layer pays to route `x`
    /// (router GEMM, bias, the policy), for the benchmark's routing time.
    /// The default is [`MoeWeights::route`] (on the host); CUDA routes on the
    /// device.
    fn route_only(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<(), BackendError> {
        w.route(self, x, router).map(drop)
    }

    /// Moves one EP layer's rows on the device when this backend can over
    /// `comm`: dispatch, the local experts, combine and the all-gather of the
    /// layer's output, returning the output (every token), with the times
    /// and bytes in `t`. `None`, the default, leaves the layer to the host
    /// path, which stages rows through host memory over any communicator.
    /// CUDA over NCCL (feature `nccl`) moves rows GPU to GPU. `scratch` keeps
    /// the backend's buffers from layer to layer.
    fn device_rows<C: Communicator + ?Sized>(
        &self,
        comm: &C,
        job: &RowJob<'_, Self>,
        scratch: &mut Scratch,
        t: &mut LayerTimes,
    ) -> Option<Result<Self::Act, DistError>> {
        let _ = (comm, job, scratch, t);
        None
    }

    /// Runs `f` and returns its value with the time it took, ms. The default
    /// is host wall time, right for a backend whose operations are done when
    /// they return (the CPU). A device backend waits for the work queued
    /// before, then times what `f` queued to its end (CUDA: events on its
    /// stream, then a sync).
    fn timed<T, E: From<BackendError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, f64), E> {
        let t0 = Instant::now();
        let v = f()?;
        Ok((v, t0.elapsed().as_secs_f64() * 1e3))
    }
}

/// Keeps what [`EpBackend::moe_kept`] keeps, for the model's forward pass
/// ([`crate::model::MoeRunner`]).
pub(crate) struct RankKeep;

impl<B: EpBackend> crate::model::MoeRunner<B> for RankKeep {
    fn run_moe(
        &self,
        backend: &B,
        _layer: usize,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, Option<crate::model::Kept>), BackendError> {
        let (m, kept) = backend.moe_kept(w, x, router)?;
        Ok((m, Some(Box::new(kept))))
    }
}
