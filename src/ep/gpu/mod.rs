//! The GPU MoE-layer expert-parallel benchmark (`capmoe bench --device cuda`).
//!
//! One MoE layer of a given shape (Mixtral-8x7B by default) on one GPU, with
//! seeded random bf16 expert weights (`ExpertFfn::random`) and synthetic
//! router logits of a chosen skew. For each batch size `T`, skew, EP size
//! `R` and policy x gamma, the batch is routed on the GPU ([`GpuRouter`]),
//! and then every EP rank's expert work (GEMM1 + SwiGLU + GEMM2 over the rows
//! the plan sends to the rank's experts) is run and timed alone with CUDA
//! events, one rank after another on the otherwise idle GPU. Layer latency of
//! an iteration is the slowest rank plus a modelled all-to-all
//! ([`LatencyModel`](crate::ep::LatencyModel)); the report gives P50/P99 over iterations, the speedup
//! over `none`, the ideal ratio (busiest rank's rows without capacity over
//! with it) and NVML telemetry (utilisation, clocks, power, energy per
//! token).
//!
//! How a rank is timed alone (the numbers rest on this; see
//! [`subbatch`]): the rank's rows (for each of its experts, the tokens the
//! plan gives it, in token order) are copied into a sub-batch and routed
//! with one-hot logits under `none` at k = 1, which reproduces exactly those
//! rows per expert. `ExpertFfn::forward` on that sub-batch runs the same
//! grouped-GEMM kernels with the same per-expert problem sizes for the
//! rank's experts, on the same weights in the same device memory, and
//! `m = 0` for every other expert (no tiles). What differs from a real EP
//! rank: the grouped GEMMs still carry the other experts' empty groups
//! (scheduler work, no tiles), and the timed span includes the FFN's own
//! argument kernels and stream-ordered allocations, which a real rank runs
//! too. The GEMM variants are fixed per `T` to what the whole batch would
//! use (`ExpertFfn::variants_for(T, k)`: a rank's experts average `T k / E`
//! rows each, as the whole layer's do), so policies and ranks compare on the
//! same kernels.
//!
//! [`GpuRouter`]: crate::cuda::GpuRouter

#[cfg(feature = "bench")]
pub mod plot;
pub mod report;
pub mod stats;
pub mod subbatch;
pub mod telemetry;

mod assemble;
mod results;
mod setup;

pub use assemble::{assemble_case, assemble_group, bar_rows, nvml_uuid};
pub use results::{
    method_lines, BarRow, CaseMeasurement, DeviceInfo, GpuBenchReport, GpuCaseReport, GpuSetupInfo,
    GroupReport, Skipped, FIDELITY_NOTE,
};
pub use setup::{
    GpuBenchSetup, LayerShape, BAR, MAX_WARMUP, MIN_CASE_MS_RANGE, TELEMETRY_MS_RANGE,
};

#[cfg(feature = "cuda")]
mod run;
#[cfg(feature = "cuda")]
mod timer;
#[cfg(feature = "cuda")]
pub use run::run;

pub use stats::{ideal_ratio, percentile, Percentiles};
pub use telemetry::{TelemetryInfo, WindowSummary};

#[cfg(test)]
mod tests;
