//! The end-to-end expert-parallel straggler benchmark (`capmoe bench`).
//!
//! For every policy and capacity factor the benchmark prefills one batch
//! through the whole model (every MoE layer routed under the policy), then
//! replays each MoE layer's expert work one EP rank at a time and times it
//! alone ([`RankReplay::rank_work`], [`RankReplay::run_rank_work`]). The layer's EP
//! latency is modelled as the slowest rank plus the two all-to-alls at a
//! stated bandwidth ([`LatencyModel`]); the EP prefill time adds the
//! measured non-MoE time, split over the ranks. Fidelity is measured against
//! the dropless baseline (`none`) on the same batch: KL divergence of the
//! next-token distributions and top-1 agreement at every position.
//!
//! Written against [`EpBackend`] (the backend trait plus the replay and
//! timing hooks), so the CUDA backend runs it unchanged.

mod backend;
mod backend_cpu;
#[cfg(feature = "cuda")]
mod backend_cuda;
pub mod comm;
pub mod dist;
mod error;
mod fidelity;
pub mod gpu;
mod latency;
#[cfg(feature = "bench")]
pub mod plot;
mod replay;
pub mod report;
mod results;
mod rounds;
mod run;
mod setup;
pub mod sim;
mod summary;
#[cfg(test)]
mod tests;

pub use backend::EpBackend;
pub use error::EpError;
pub use fidelity::{Fidelity, LogProbs};
pub use latency::{a2a_traffic, median, A2aTraffic, LatencyModel};
pub use replay::{RankReplay, RankWork};
pub use results::{
    method_lines, Baseline, BenchReport, CaseReport, CaseSummary, LayerReport, ModelInfo,
    SetupInfo, Throughput,
};
pub use run::{prompt_ids, run, run_prompts};
pub use setup::{
    cases, check_bandwidth, BenchSetup, LayerCase, MAX_A2A_GBPS, MAX_BENCH_ITERS, MAX_BENCH_TOKENS,
    MIN_A2A_GBPS,
};
pub(crate) use setup::{check_at_most, check_policy_numbers};
