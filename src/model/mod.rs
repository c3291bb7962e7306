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

mod build;
mod config;
mod ep;
mod forward;
mod generate;
mod init;
pub mod names;
pub mod roofline;
mod weights;

pub use build::{Layer, Model};
pub use config::{ConfigError, MixtralConfig, BUILTIN_NAMES};
pub use ep::RankWork;
pub use forward::{ForwardOptions, ForwardOutput, LayerRecord, LogitsMode, Sequence};
pub use generate::{argmax, GenerateOptions};
pub use init::{random_tensor, InitOptions};
pub use weights::{WeightError, WeightFiles};

use crate::backend::BackendError;
use crate::error::RoutingError;
use crate::trace::TraceError;
use thiserror::Error;

/// Errors from building or running a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Skew(#[from] TraceError),
    #[error("empty input: {0}")]
    EmptyInput(&'static str),
    #[error("token id {id} (sequence {sequence}, position {position}) is out of range; the vocabulary has ids 0..{vocab}")]
    TokenOutOfRange {
        sequence: usize,
        position: usize,
        id: u32,
        vocab: usize,
    },
    #[error("{what}: got {got}, expected {expected}")]
    Mismatch {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("layer {layer} does not exist; the model has {layers} layers")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error(
        "layer record {layer} holds no MoE input; run the forward pass with keep_moe_inputs = true"
    )]
    NoMoeInput { layer: usize },
}
