//! The CUDA backend of the routing contract (feature `cuda`).
//!
//! Layered like cudarc: [`sys`] declares the `extern "C"` launchers (generated
//! by bindgen from cuda/include/capmoe_abi.h), [`launch`] and [`model_launch`]
//! wrap each in an `unsafe fn` with its `# Safety` contract and typed errors
//! (result), and [`GpuRouter`], the FFN and the backend are the safe API. Kernels are compile-checked in CI; see
//! bench/results/ for device reports.
//!
//! # On an engine's GPU
//!
//! capmoe runs on the caller's cudarc context and stream and takes the caller's device buffers
//! without copies ([`cudarc`] is re-exported, so both sides use one version):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capmoe::backend::cuda::CudaAct;
//! use capmoe::backend::Backend;
//! use capmoe::cuda::cudarc::driver::CudaContext;
//! use capmoe::cuda::{CudaBackend, GpuContext};
//!
//! // The engine's own context and stream.
//! let ctx = CudaContext::new(0)?;
//! let stream = ctx.new_stream()?;
//! let be = CudaBackend::new(&GpuContext::from_parts(ctx.clone(), stream.clone())?)?;
//!
//! // The engine's bf16 hidden states [4, 64] (raw bits), handed over without a copy.
//! let mut x = CudaAct::from_device(stream.alloc_zeros::<u16>(4 * 64)?, 4, 64)?;
//! let residual = CudaAct::from_device(stream.alloc_zeros::<u16>(4 * 64)?, 4, 64)?;
//! be.add_assign(&mut x, &residual)?; // queued on the engine's stream
//!
//! // ... and handed back.
//! let (hidden, rows, cols) = x.into_device();
//! assert_eq!((hidden.len(), rows, cols), (256, 4, 64));
//! # Ok(()) }
//! ```

pub use cudarc;

mod context;
mod error;
pub mod ffi;
pub mod ffn;
mod fill;
pub mod gate;
pub mod launch;
pub mod model_launch;
pub(crate) mod probe;
mod router;
pub mod sys;

pub use crate::backend::cuda::CudaBackend;
pub use context::GpuContext;
pub use error::GpuError;
pub use ffn::{ExpertFfn, FfnShape, MoeLayer, MoeLayerGraph, TuneOutcome, VariantPair};
pub use fill::hashed_bf16;
pub use router::{GpuDispatch, GpuGemmArgs, GpuPlan, GpuRouter, HostDispatch};
