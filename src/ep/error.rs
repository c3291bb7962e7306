//! The benchmark's errors.

use crate::model::ModelError;
use crate::routing::RoutingError;
use thiserror::Error;

/// Errors from setting up or running the benchmark.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EpError {
    /// A per-layer case the benchmark cannot run.
    #[error("per-layer case `{label}`: {why}; expected a capacity policy with one valid gamma per layer")]
    LayerCase {
        /// The case's label.
        label: String,
        /// What is wrong.
        why: String,
    },
    /// A count (tokens, ranks, iterations, a shape dimension, ...) is 0.
    #[error("{what} is 0; expected at least 1")]
    Zero {
        /// Which count (e.g. `--iters`).
        what: &'static str,
    },
    /// The policy list is empty.
    #[error("no policies to run; expected a comma list such as none,drop:score")]
    NoPolicies,
    /// A capacity policy was asked for, but the capacity-factor list is empty.
    #[error("capacity policies were asked for but no capacity factors; expected e.g. --capacity-factors 1.0,1.5")]
    NoCapacityFactors,
    /// A capacity factor (gamma) is not finite or not in
    /// `(0, MAX]`, MAX = [`MAX_CAPACITY_FACTOR`](crate::routing::MAX_CAPACITY_FACTOR); holds it.
    #[error("capacity factor (gamma) {0:?} is not valid; expected a finite number > 0 and at most {max}", max = crate::routing::MAX_CAPACITY_FACTOR)]
    InvalidCapacityFactor(f64),
    /// The all-to-all bandwidth (GB/s) is not finite or out of
    /// [`MIN_A2A_GBPS`, `MAX_A2A_GBPS`](crate::ep::MIN_A2A_GBPS); holds it.
    #[error("all-to-all bandwidth {0:?} GB/s is not valid; expected a finite number in [{min:e}, {max:e}] GB/s", min = crate::ep::MIN_A2A_GBPS, max = crate::ep::MAX_A2A_GBPS)]
    InvalidBandwidth(f64),
    /// A count is past capmoe's documented bound (or its product overflows).
    #[error("{what} = {value} is too large; expected at most {max} ({why})")]
    TooLarge {
        /// Which count (e.g. `--batch x --seq-len`).
        what: &'static str,
        /// The value given (saturated at u128::MAX when a product overflows).
        value: u128,
        /// The bound.
        max: u128,
        /// Where the bound comes from.
        why: &'static str,
    },
    /// A reported number came out NaN or infinite; names it and its inputs.
    #[error("{what} of case {case} is {value}, not a finite number; computed from {inputs}")]
    NonFinite {
        /// Which number (e.g. `speedup_moe`).
        what: &'static str,
        /// The case (policy and gamma).
        case: String,
        /// The value.
        value: f64,
        /// The inputs it was computed from.
        inputs: String,
    },
    /// A rank count does not divide the expert count.
    #[error("{ranks} EP ranks cannot split {experts} experts into equal groups; expected a divisor of {experts}")]
    RanksDoNotDivideExperts {
        /// Expert-parallel ranks asked for.
        ranks: usize,
        /// Experts in the model.
        experts: usize,
    },
    /// `--experts-per-rank` does not divide the model's expert count.
    #[error("--experts-per-rank {per} does not divide the model's {experts} experts; expected a divisor of {experts}")]
    ExpertsPerRank {
        /// Experts per rank asked for.
        per: usize,
        /// Experts in the model.
        experts: usize,
    },
    /// `--ranks` and `--experts-per-rank` were both given and `ranks * per != experts`.
    #[error(
        "--ranks {ranks} and --experts-per-rank {per} disagree: the model has {experts} experts"
    )]
    RanksDisagree {
        /// Ranks asked for.
        ranks: usize,
        /// Experts per rank asked for.
        per: usize,
        /// Experts in the model.
        experts: usize,
    },
    /// The layer picked for the load figure is not in the model.
    #[error("layer {layer} does not exist for the load figure; the model has {layers} layers")]
    NoSuchLayer {
        /// Layer asked for.
        layer: usize,
        /// Layers in the model.
        layers: usize,
    },
    /// A CUDA benchmark was asked for, but capmoe was built without feature `cuda`.
    #[error("this capmoe was built without CUDA; rebuild with `cargo build --release --features cuda` to run `capmoe bench --device cuda` (the GPU benchmarks: one MoE layer, or the whole model with --e2e)")]
    CudaNotCompiled,
    /// A list argument (e.g. `--tokens`) is empty.
    #[error("{what} is empty; expected a comma list")]
    EmptyList {
        /// Which list.
        what: &'static str,
    },
    /// A number (e.g. `--min-case-ms`) is not finite or is outside its
    /// documented range.
    #[error("{what} = {value} is not valid; expected a finite number in [{min}, {max}]")]
    InvalidNumber {
        /// Which number.
        what: &'static str,
        /// The value given.
        value: f64,
        /// Least value accepted.
        min: f64,
        /// Most value accepted.
        max: f64,
    },
    /// The prompts handed to [`run_prompts`](crate::ep::run_prompts) do not fit the setup
    /// or the model; says how.
    #[error("benchmark prompts: {0}")]
    Prompts(String),
    /// A device call failed (with `cuda`: a `capmoe::cuda::GpuError` inside).
    #[error("device: {0}")]
    Device(#[source] crate::backend::DeviceError),
    /// Reading or writing a routing trace failed.
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    /// Building or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Routing a batch failed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Drawing a figure failed.
    #[error("cannot draw {path}: {message}")]
    Plot {
        /// The figure's file.
        path: String,
        /// The plotting library's message.
        message: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[cfg(feature = "cuda")]
impl From<crate::cuda::GpuError> for EpError {
    fn from(e: crate::cuda::GpuError) -> Self {
        EpError::Device(crate::backend::DeviceError::new(e))
    }
}
