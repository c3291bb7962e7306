//! The CUDA backend of the routing contract (feature `cuda`).
//!
//! Layered like cudarc: [`ffi`] declares the `extern "C"` launchers of
//! cuda/routing/ (sys), [`launch`] wraps each in an `unsafe fn` with its
//! `# Safety` contract and typed errors (result), and [`GpuRouter`] is the
//! safe API (safe). Kernels are compile-checked in CI; see
//! bench/results/ for device reports.

pub mod backend;
mod context;
mod error;
pub mod ffi;
pub mod ffn;
pub mod launch;
pub mod model_ffi;
pub mod model_launch;
mod router;

pub use backend::CudaBackend;
pub use context::GpuContext;
pub use error::GpuError;
pub use ffn::{ExpertFfn, FfnShape, MoeLayer, MoeLayerGraph, TuneOutcome, VariantPair};
pub use router::{GpuDispatch, GpuGemmArgs, GpuPlan, GpuRouter, HostDispatch};
