//! Errors of the CUDA kernel layer, and the one size check every launcher
//! needs ([`to_i32`]).

use crate::RoutingError;
use thiserror::Error;

/// Why a CUDA-backend call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error("no CUDA driver found (libcuda.so could not be loaded); the CUDA backend needs an NVIDIA GPU and driver")]
    /// libcuda.so could not be loaded.
    NoDriver,
    #[error("CUDA driver call failed: {0}")]
    /// A CUDA driver API call failed.
    Driver(#[from] cudarc::driver::DriverError),
    #[error("kernel launcher {launcher} failed: {message} (code {code})")]
    /// A C-ABI launcher returned an error status.
    Launch {
        /// The launcher's C name.
        launcher: &'static str,
        /// Its status code (`sys::CAPMOE_STATUS_*`).
        code: i32,
        /// The status message.
        message: String,
    },
    #[error("{what} = {value} does not fit the kernels' 32-bit index range")]
    /// A size does not fit the kernels' 32-bit indices.
    TooLarge {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: usize,
    },
    #[error("policy `{0}` is not implemented on the GPU yet; route it on the CPU oracle")]
    /// The policy (held, as spelled) has no GPU implementation.
    Unsupported(String),
    #[error("reroute:next-best did not converge within {rounds} rounds on the device; raise GpuRouter::with_max_rounds")]
    /// `reroute:next-best` was still proposing after the round limit.
    NotConverged {
        /// The round limit.
        rounds: usize,
    },
    #[error("{what}: got {got}, expected {expected}")]
    /// A buffer or argument has the wrong shape.
    Shape {
        /// Which argument.
        what: &'static str,
        /// Its shape or length.
        got: String,
        /// The expected one.
        expected: String,
    },
    #[error("no compiled grouped-GEMM variant runs on compute capability {major}.{minor} (compiled: {compiled}); rebuild with CAPMOE_CUDA_ARCHS covering this GPU (sm_90a variants need exactly 9.0, sm_80 ones 8.0 or newer) and without a CAPMOE_FFN_VARIANTS filter that excludes them")]
    /// No compiled grouped-GEMM variant runs on this GPU.
    NoKernel {
        /// Compute capability, major.
        major: u32,
        /// Compute capability, minor.
        minor: u32,
        /// The compiled variants, comma-separated.
        compiled: String,
    },
    #[error("grouped-GEMM variant `{name}` is not available here; compiled and runnable on this GPU: {valid}")]
    /// A named grouped-GEMM variant is not compiled or not runnable here.
    UnknownVariant {
        /// The name asked for.
        name: String,
        /// The names that would work, comma-separated.
        valid: String,
    },
    #[error(transparent)]
    /// Expert weights or shapes were rejected.
    Expert(#[from] crate::expert::ExpertError),
    #[error(transparent)]
    /// The routing configuration or input was rejected.
    Routing(#[from] RoutingError),
}

/// `v` as one of the kernels' 32-bit sizes or indices, or
/// [`GpuError::TooLarge`] naming `what`. The one place this check lives.
pub(crate) fn to_i32(what: &'static str, v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::TooLarge { what, value: v })
}
