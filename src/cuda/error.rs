//! Errors of the CUDA backend.

use crate::RoutingError;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error("no CUDA driver found (libcuda.so could not be loaded); the CUDA backend needs an NVIDIA GPU and driver")]
    NoDriver,
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("kernel launcher {launcher} failed: {message} (code {code})")]
    Launch {
        launcher: &'static str,
        code: i32,
        message: String,
    },
    #[error("{what} = {value} does not fit the kernels' 32-bit index range")]
    TooLarge { what: &'static str, value: usize },
    #[error("policy `{0}` is not implemented on the GPU yet; route it on the CPU oracle")]
    Unsupported(String),
    #[error("reroute:next-best did not converge within {rounds} rounds on the device; raise GpuRouter::with_max_rounds")]
    NotConverged { rounds: usize },
    #[error("{what}: got {got}, expected {expected}")]
    Shape {
        what: &'static str,
        got: String,
        expected: String,
    },
    #[error("no compiled grouped-GEMM variant runs on compute capability {major}.{minor} (compiled: {compiled}); rebuild with CAPMOE_CUDA_ARCHS covering this GPU (sm_90a variants need exactly 9.0, sm_80 ones 8.0 or newer) and without a CAPMOE_FFN_VARIANTS filter that excludes them")]
    NoKernel {
        major: u32,
        minor: u32,
        compiled: String,
    },
    #[error("grouped-GEMM variant `{name}` is not available here; compiled and runnable on this GPU: {valid}")]
    UnknownVariant { name: String, valid: String },
    #[error(transparent)]
    Expert(#[from] crate::expert::ExpertError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
}
