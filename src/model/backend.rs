//! What the model may ask of a backend beyond [`Backend`]: capabilities
//! with defaults, so that a backend written elsewhere takes them all with
//! an empty `impl ModelBackend for MyBackend {}` (the backend knows no
//! model; the CUDA impl lives here, in `backend_cuda.rs`).

use super::build::Model;
use super::decode::{Decoder, EagerDecoder};
use super::forward::Sequence;
use super::ModelError;
use crate::backend::{
    random_host_tensor, Backend, BackendError, CpuBackend, ExpertsShape, HostExpert, RandomInit,
};
use crate::routing::RouterConfig;

/// A backend's model-level capabilities: how it steps a [`Decoder`] and
/// how it draws random weights ([`Model::random`]).
pub trait ModelBackend: Backend {
    /// A [`Decoder`] of greedy steps over `seqs`, at most `steps` of them
    /// ([`Model::decoder`] checked their positions). The default steps by
    /// forward passes ([`EagerDecoder`]); the CUDA backend replays one
    /// captured CUDA graph per batch size over a static KV cache.
    fn decoder<'m>(
        model: &'m Model<Self>,
        seqs: Vec<Sequence<Self>>,
        pending: Vec<u32>,
        steps: usize,
        router: &RouterConfig,
    ) -> Result<Box<dyn Decoder + 'm>, ModelError>
    where
        Self: 'm,
    {
        let _ = steps;
        Ok(Box::new(EagerDecoder::new(model, seqs, pending, router)?))
    }

    /// A seeded random weight matrix `name` of `shape` `[out, in]`
    /// ([`Model::random`]). The default draws it on the host
    /// ([`random_host_tensor`]) and takes it with [`Backend::mat`]; a device
    /// backend may draw on the device instead, with other values (random
    /// models differ between backends).
    fn random_mat(
        &self,
        name: &str,
        shape: [usize; 2],
        init: &RandomInit,
    ) -> Result<Self::Mat, BackendError> {
        self.mat(random_host_tensor(name, &shape, init))
    }

    /// Seeded random experts of layer `layer`; `name(j, m)` is the weight
    /// name of expert `j`'s matrix `m` ("w1", "w2", "w3"). The default draws
    /// every expert's matrices on the host by name, as a checkpoint would
    /// hold them, and takes them with [`Backend::experts`].
    fn random_experts(
        &self,
        layer: usize,
        shape: ExpertsShape,
        name: &dyn Fn(usize, &str) -> String,
        init: &RandomInit,
    ) -> Result<Self::Experts, BackendError> {
        let _ = layer;
        let (h, i) = (shape.hidden, shape.intermediate);
        let host = (0..shape.experts)
            .map(|j| {
                Ok(HostExpert {
                    w1: CpuBackend.mat(random_host_tensor(&name(j, "w1"), &[i, h], init))?,
                    w2: CpuBackend.mat(random_host_tensor(&name(j, "w2"), &[h, i], init))?,
                    w3: CpuBackend.mat(random_host_tensor(&name(j, "w3"), &[i, h], init))?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        self.experts(host)
    }
}

impl ModelBackend for CpuBackend {}
