//! The GPU MoE-layer expert-parallel benchmark (`capmoe bench --device cuda`).
//!
//! One MoE layer of a given shape (Mixtral-8x7B by default) on one GPU, with
//! seeded random bf16 expert weights (`ExpertFfn::random`) and synthetic
//! router logits of a chosen skew. For each batch size `T`, skew, EP size
//! `R` and policy x gamma, the batch is routed on the GPU (`cuda::GpuRouter`),
//! and then every EP rank's expert work (GEMM1 + SwiGLU + GEMM2 over the rows
//! the plan sends to the rank's experts) is run and timed alone with CUDA
//! events, one rank after another on the otherwise idle GPU. Layer latency of
//! an iteration is the slowest rank plus a modelled all-to-all
//! ([`LatencyModel`](crate::ep::LatencyModel)); the report gives P50/P99 over iterations, the speedup
//! over `none`, the ideal ratio (busiest rank's rows without capacity over
//! with it) and NVML telemetry (utilisation, clocks, power, energy per
//! token).
//!
//! How a rank is timed alone (the numbers rest on this): the whole batch is
//! routed, dispatched (tile 1) and gathered once; a rank's work is then
//! `ExpertFfn::forward_experts` over the rank's experts and their span of the
//! layout's rows (`offsets[first]..offsets[last + 1]`), the call the EP
//! replay's device composition makes for a rank. The grouped GEMMs run the
//! rank's groups only, with the per-expert problem sizes `m = load[e]`, on the
//! same weights in the same device memory. What differs from a real EP rank:
//! its rows sit in the whole batch's buffer instead of a receive buffer of its
//! own (same layout, same order), and the timed span includes the FFN's own
//! argument kernels and stream-ordered allocations, which a real rank runs
//! too. The GEMM variants are fixed per `T` to what the whole batch uses
//! (`ExpertFfn::variants_for(T, k)`), so policies and ranks compare on the same
//! kernels.

#[cfg(feature = "bench")]
pub mod plot;
pub mod report;
pub mod stats;
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
