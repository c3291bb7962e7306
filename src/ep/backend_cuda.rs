//! [`EpBackend`] for the CUDA backend: the device plan, layout and rows
//! kept; routing and timing on the device.

use super::backend::EpBackend;
use crate::backend::cuda::{moe, CudaAct, CudaExperts, CudaRankLayer};
use crate::backend::{BackendError, CudaBackend, MoeOutput, MoeWeights};
use crate::ep::comm::Communicator;
use crate::ep::dist::{DistError, LayerTimes, RowJob, Scratch};
use crate::routing::{DispatchLayout, Policy, RouterConfig};
use std::ops::Range;

impl EpBackend for CudaBackend {
    type RankLayer = CudaRankLayer;

    /// Routes on the device as [`crate::backend::Backend::moe`] does and
    /// keeps the device plan, layout and rows; host-routed layers
    /// (`reroute:optimal`, an empty batch) keep the host ones.
    fn moe_kept(
        &self,
        w: &MoeWeights<Self>,
        x: &CudaAct,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<Self>, CudaRankLayer), BackendError> {
        if router.policy == Policy::RerouteOptimal || x.rows == 0 {
            let (m, kept) = w.forward_host_kept(self, x, router)?;
            return Ok((m, CudaRankLayer::Host(Box::new(kept))));
        }
        moe::forward_kept(self, w, x, router)
    }

    fn rank_layout(layer: &CudaRankLayer) -> &DispatchLayout {
        match layer {
            CudaRankLayer::Host(h) => &h.layout,
            CudaRankLayer::Device(d) => &d.layout,
        }
    }

    /// One rank's experts on the kept device layout: no upload, the
    /// range's groups of the device-made GEMM arguments.
    fn rank_ffn(
        &self,
        layer: &CudaRankLayer,
        experts: &CudaExperts,
        range: Range<usize>,
    ) -> Result<CudaAct, BackendError> {
        moe::rank_ffn(self, layer, experts, range)
    }

    /// The router GEMM and the device router (the host oracle for
    /// `reroute:optimal`), nothing read back.
    fn route_only(
        &self,
        w: &MoeWeights<Self>,
        x: &CudaAct,
        router: &RouterConfig,
    ) -> Result<(), BackendError> {
        if router.policy == Policy::RerouteOptimal || x.rows == 0 {
            return w.route(self, x, router).map(drop);
        }
        moe::route_only(self, w, x, router)
    }

    /// Rows GPU to GPU over NCCL when `comm` has it (feature `nccl`); the
    /// host path otherwise.
    fn device_rows<C: Communicator + ?Sized>(
        &self,
        comm: &C,
        job: &RowJob<'_, Self>,
        scratch: &mut Scratch,
        t: &mut LayerTimes,
    ) -> Option<Result<CudaAct, DistError>> {
        #[cfg(feature = "nccl")]
        if let Some(nccl) = comm.nccl() {
            return Some(crate::ep::dist::nccl_rows(self, nccl, job, scratch, t));
        }
        let _ = (comm, job, scratch, t);
        None
    }

    /// CUDA events around what `f` queues on the backend's stream, after a
    /// sync so that earlier work is not counted.
    fn timed<T, E: From<BackendError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, f64), E> {
        self.timed_events(f)
    }
}
