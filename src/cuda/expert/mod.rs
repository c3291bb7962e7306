//! The expert FFN on the GPU: CUTLASS grouped GEMMs (one instantiation per
//! declared variant, see [`variants`]) around a SwiGLU pass, and the MoE
//! layer that chains routing, dispatch, the FFN and combine.
//!
//! Semantics are defined by the CPU twin `capmoe::expert::reference`; the
//! layout (interleaved `W13 [E, 2I, H]`, `W2 [E, H, I]`, bf16) by
//! `capmoe::expert`.

mod expert_ffn;
mod gemm;
mod graph;
mod host_layout;
mod moe_layer;
mod pipeline;
mod select;
mod tune;
pub mod variants;

pub use crate::expert::FfnShape;
pub use expert_ffn::ExpertFfn;
pub use graph::MoeLayerGraph;
pub use moe_layer::MoeLayer;
pub(crate) use moe_layer::{layer_forward, LayerRun};
pub use select::VariantPair;
pub use tune::TuneOutcome;
