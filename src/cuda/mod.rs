//! The CUDA backend of the routing contract (feature `cuda`).
//!
//! Layered like cudarc: [`sys`] declares the `extern "C"` launchers (generated
//! by bindgen from cuda/include/capmoe_abi.h), [`launch`] and [`model_launch`]
//! wrap each in an `unsafe fn` with its `# Safety` contract and typed errors
//! (result), and [`GpuRouter`], the FFN and the backend are the safe API. Kernels are compile-checked in CI; see
//! bench/results/ for device reports.

pub mod backend;
mod context;
mod error;
pub mod ffi;
pub mod ffn;
pub mod launch;
pub mod model_launch;
mod router;
pub mod sys;

pub use backend::CudaBackend;
pub use context::GpuContext;
pub use error::GpuError;
pub use ffn::{ExpertFfn, FfnShape, MoeLayer, MoeLayerGraph, TuneOutcome, VariantPair};
pub use router::{GpuDispatch, GpuGemmArgs, GpuPlan, GpuRouter, HostDispatch};
