//! Errors of the CUDA backend.

use crate::RoutingError;
use thiserror::Error;

#[derive(Debug, Error)]
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
    #[error(transparent)]
    Routing(#[from] RoutingError),
}
