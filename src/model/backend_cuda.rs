//! The CUDA backend's model capabilities: decode graphs
//! ([`super::graph_decode`]) and weights drawn on the device.

use super::backend::ModelBackend;
use super::build::Model;
use super::decode::Decoder;
use super::forward::Sequence;
use super::ModelError;
use crate::backend::cuda::{CudaExperts, CudaMat};
use crate::backend::{BackendError, CudaBackend, ExpertsShape, RandomInit};
use crate::routing::RouterConfig;

impl ModelBackend for CudaBackend {
    /// One CUDA graph per batch size over a static KV cache (see
    /// `model::graph_decode`); `reroute:optimal`, which routes on the
    /// host, steps eagerly.
    fn decoder<'m>(
        model: &'m Model<CudaBackend>,
        seqs: Vec<Sequence<CudaBackend>>,
        pending: Vec<u32>,
        steps: usize,
        router: &RouterConfig,
    ) -> Result<Box<dyn Decoder + 'm>, ModelError>
    where
        Self: 'm,
    {
        super::graph_decode::decoder(model, seqs, pending, steps, router)
    }

    /// Hashed bf16 drawn on the device (not the CPU backend's values).
    fn random_mat(
        &self,
        name: &str,
        shape: [usize; 2],
        init: &RandomInit,
    ) -> Result<CudaMat, BackendError> {
        self.random_mat_device(name, shape, init)
    }

    /// One layer's experts drawn whole on the device.
    fn random_experts(
        &self,
        layer: usize,
        shape: ExpertsShape,
        name: &dyn Fn(usize, &str) -> String,
        init: &RandomInit,
    ) -> Result<CudaExperts, BackendError> {
        self.random_experts_device(layer, shape, name, init)
    }
}
