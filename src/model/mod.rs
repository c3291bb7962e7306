//! A complete Mixtral forward pass, written once against [`Backend`]
//! (design.md §2): embeddings, RMSNorm, RoPE, GQA attention with a KV cache
//! (sliding window when configured), the sparse MoE block driven by the
//! routing contract (every policy, every gamma), the LM head, batched
//! prefill and greedy generation.
//!
//! ```
//! use capmoe::backend::CpuBackend;
//! use capmoe::model::{ForwardOptions, InitOptions, MixtralConfig, Model};
//! let cfg = MixtralConfig::builtin("tiny").unwrap();
//! let model = Model::random(CpuBackend, cfg, &InitOptions::new(7)).unwrap();
//! let opts = ForwardOptions::new(model.default_router());
//! let (_seqs, out) = model.prefill(&[&[1, 2, 3]], &opts).unwrap();
//! assert_eq!(out.logits.len(), 3 * 128);
//! assert_eq!(out.layers.len(), 2); // one routing plan per layer
//! ```
//!
//! [`Backend`]: crate::backend::Backend

mod backend;
#[cfg(feature = "cuda")]
mod backend_cuda;
mod build;
mod config;
mod decode;
mod forward;
mod generate;
#[cfg(feature = "cuda")]
mod graph_decode;
mod init;
pub mod names;
mod record;
pub mod roofline;
mod weights;

pub use backend::ModelBackend;
pub use build::{Layer, Model};
pub use config::{ConfigError, MixtralConfig, BUILTIN_NAMES};
pub use decode::{greedy_rows, Decoder, EagerDecoder};
#[cfg(feature = "cuda")]
pub(crate) use forward::LayerIo;
pub use forward::{
    ForwardOptions, ForwardOutput, Kept, LayerRecord, LogitsMode, MoeRunner, Sequence,
};
pub use generate::{argmax, GenerateOptions};
pub use init::{random_tensor, InitOptions};
pub use record::{RecordedForward, RouterRecorder};
pub use weights::{WeightError, WeightFiles};

use crate::backend::BackendError;
use crate::routing::RoutingError;
use crate::trace::TraceError;
use thiserror::Error;

/// Errors from building or running a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The config cannot be read, does not parse or is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The checkpoint cannot be read, or a tensor is missing, extra, or of the wrong shape or dtype.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Routing a batch failed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Applying the synthetic router skew failed.
    #[error(transparent)]
    Skew(#[from] TraceError),
    /// An input that must not be empty is (no sequences, an empty sequence or prompt, no logits); says which.
    #[error("empty input: {0}")]
    EmptyInput(&'static str),
    /// A token id is not below the vocabulary size.
    #[error("token id {id} (sequence {sequence}, position {position}) is out of range; the vocabulary has ids 0..{vocab}")]
    TokenOutOfRange {
        /// The sequence, in 0..sequences.
        sequence: usize,
        /// The token's position in the sequence (cached positions included).
        position: usize,
        /// The token id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Two counts that must agree do not (e.g. sequences vs token lists).
    #[error("{what}: got {got}, expected {expected}")]
    Mismatch {
        /// Which counts.
        what: &'static str,
        /// The count given.
        got: usize,
        /// The count expected.
        expected: usize,
    },
    /// A layer index is not below the layer count.
    #[error("layer {layer} does not exist; the model has {layers} layers")]
    NoSuchLayer {
        /// Layer asked for.
        layer: usize,
        /// Layers in the model.
        layers: usize,
    },
    /// A forward pass produced a NaN or infinite output logit (e.g. from a
    /// weight with huge values); names the row and vocabulary column.
    #[error("output logit at row {row}, token id {column} is {value}; the weights or inputs overflow f32 (outputs must be finite)")]
    NonFiniteOutput {
        /// The logit row.
        row: usize,
        /// The vocabulary column.
        column: usize,
        /// The value.
        value: f32,
    },
    /// A layer record holds no MoE input: the forward pass ran without `keep_moe_inputs`.
    #[error(
        "layer record {layer} holds no MoE input; run the forward pass with keep_moe_inputs = true"
    )]
    NoMoeInput {
        /// The layer.
        layer: usize,
    },
    /// A layer record holds no routing plan: the forward pass ran without `keep_plans`.
    #[error(
        "layer record {layer} holds no routing plan; run the forward pass with keep_plans = true"
    )]
    NoPlan {
        /// The layer.
        layer: usize,
    },
    /// The model holds only some experts (an EP rank's group) and was run
    /// without a [`MoeRunner`] that brings in the others.
    #[error("this model holds experts {start}..{end} of {experts} only (an EP rank's group); run it through the EP forward (capmoe::ep::dist), or load every expert")]
    PartialExperts {
        /// First expert held.
        start: usize,
        /// One past the last expert held.
        end: usize,
        /// Experts in the config.
        experts: usize,
    },
    /// An expert group that is empty or not inside the config's experts.
    #[error("expert group {start}..{end} is empty or not inside 0..{experts}")]
    ExpertGroup {
        /// First expert asked for.
        start: usize,
        /// One past the last expert asked for.
        end: usize,
        /// Experts in the config.
        experts: usize,
    },
}

#[cfg(feature = "cuda")]
impl From<crate::cuda::GpuError> for ModelError {
    fn from(e: crate::cuda::GpuError) -> Self {
        Self::Backend(e.into())
    }
}

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for ModelError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Self::Backend(e.into())
    }
}
