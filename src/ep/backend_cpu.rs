//! [`EpBackend`] for the CPU backend: host layout and rows kept.

use super::backend::EpBackend;
use crate::backend::{Backend, BackendError, CpuBackend, HostRankLayer, MoeOutput, MoeWeights};
use crate::routing::{DispatchLayout, RouterConfig};
use std::ops::Range;

impl EpBackend for CpuBackend {
    type RankLayer = HostRankLayer<CpuBackend>;

    fn moe_kept(
        &self,
        w: &MoeWeights<Self>,
        x: &<Self as Backend>::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<Self>, Self::RankLayer), BackendError> {
        w.forward_host_kept(self, x, router)
    }

    fn rank_layout(layer: &Self::RankLayer) -> &DispatchLayout {
        &layer.layout
    }

    fn rank_ffn(
        &self,
        layer: &Self::RankLayer,
        experts: &<Self as Backend>::Experts,
        range: Range<usize>,
    ) -> Result<<Self as Backend>::Act, BackendError> {
        layer.ffn(self, experts, range)
    }
}
