//! The benchmark's errors.

use crate::model::ModelError;
use crate::routing::RoutingError;
use thiserror::Error;

/// Errors from setting up or running the benchmark.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EpError {
    #[error("{what} is 0; expected at least 1")]
    Zero { what: &'static str },
    #[error("no policies to run; expected a comma list such as none,drop:score")]
    NoPolicies,
    #[error("capacity policies were asked for but no capacity factors; expected e.g. --capacity-factors 1.0,1.5")]
    NoCapacityFactors,
    #[error("capacity factor (gamma) {0} is not valid; expected a finite number > 0")]
    InvalidCapacityFactor(f64),
    #[error("all-to-all bandwidth {0} GB/s is not valid; expected a finite number > 0")]
    InvalidBandwidth(f64),
    #[error("{ranks} EP ranks cannot split {experts} experts into equal groups; expected a divisor of {experts}")]
    RanksDoNotDivideExperts { ranks: usize, experts: usize },
    #[error("--experts-per-rank {per} does not divide the model's {experts} experts; expected a divisor of {experts}")]
    ExpertsPerRank { per: usize, experts: usize },
    #[error(
        "--ranks {ranks} and --experts-per-rank {per} disagree: the model has {experts} experts"
    )]
    RanksDisagree {
        ranks: usize,
        per: usize,
        experts: usize,
    },
    #[error("layer {layer} does not exist for the load figure; the model has {layers} layers")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error("this capmoe was built without CUDA; rebuild with `cargo build --release --features cuda` to run `capmoe bench --device cuda` (the GPU benchmarks: one MoE layer, or the whole model with --e2e)")]
    CudaNotCompiled,
    #[error("{what} is empty; expected a comma list")]
    EmptyList { what: &'static str },
    #[error("{what} = {value} is not valid; expected a finite number >= 0")]
    InvalidNumber { what: &'static str, value: f64 },
    /// A device call failed (with `cuda`: a `capmoe::cuda::GpuError` inside).
    #[error("device: {0}")]
    Device(#[source] crate::backend::DeviceError),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("cannot draw {path}: {message}")]
    Plot { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[cfg(feature = "cuda")]
impl From<crate::cuda::GpuError> for EpError {
    fn from(e: crate::cuda::GpuError) -> Self {
        EpError::Device(crate::backend::DeviceError::new(e))
    }
}
