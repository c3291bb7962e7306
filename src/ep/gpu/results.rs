//! What the GPU layer benchmark reports: per case, per group, the bar rows and the device.

use super::*;
use crate::ep::{A2aTraffic, LatencyModel};
use serde::Serialize;

/// What one case measured, before it is compared with `none`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseMeasurement {
    /// The policy, as its CLI string (e.g. `drop:score`).
    pub policy: String,
    /// gamma (`None` for `none`).
    pub capacity_factor: Option<f64>,
    /// `C` per expert.
    pub capacity: Option<u64>,
    /// Assignments served per expert.
    pub load: Vec<u64>,
    /// Token slots the plan dropped.
    pub dropped: u64,
    /// Served assignments outside their token's top-k.
    pub rerouted: u64,
    /// Served over top-k gate mass (`sum p`), in 0..=1.
    pub gate_mass_kept: f64,
    /// Token rows each rank sends and receives in the all-to-all.
    pub traffic: A2aTraffic,
    /// `rank_ms[i][r]`: rank `r`'s expert time in timed iteration `i`, ms.
    pub rank_ms: Vec<Vec<f64>>,
    /// The whole layer's expert FFN in one grouped GEMM per GEMM (every
    /// expert on one GPU), per iteration, ms: the method's cross-check.
    pub full_ms: Vec<f64>,
    /// Routing of the whole batch (GpuRouter::route + dispatch layout), ms.
    pub routing_ms: Vec<f64>,
    /// Host time to enqueue one rank's FFN, microseconds (mean).
    pub host_enqueue_us: f64,
    /// Telemetry over the timed rank iterations.
    pub telemetry: Option<WindowSummary>,
    /// Times the launch gate's watchdog had to open the gate.
    pub gate_timeouts: usize,
}

/// One policy at one gamma, for one (T, skew, R) group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuCaseReport {
    /// The policy, as its CLI string.
    pub policy: String,
    /// gamma (`None` for `none`).
    pub capacity_factor: Option<f64>,
    /// `C` per expert (`None` for `none`).
    pub capacity: Option<u64>,
    /// Assignments served per expert.
    pub load: Vec<u64>,
    /// Assignments served per rank.
    pub rank_load: Vec<u64>,
    /// Largest entry of `rank_load`.
    pub max_rank_load: u64,
    /// Busiest expert over the mean expert load.
    pub imbalance: f64,
    /// Busiest rank over the mean rank load.
    pub rank_imbalance: f64,
    /// `dropped` as a percentage of `T * k`.
    pub dropped_pct: f64,
    /// `rerouted` as a percentage of `T * k`.
    pub rerouted_pct: f64,
    /// Served over top-k gate mass, in 0..=1.
    pub gate_mass_kept: f64,
    /// Timed iterations.
    pub iterations: usize,
    /// Each rank's P50 expert time, ms.
    pub rank_ms_p50: Vec<f64>,
    /// The rank with the largest P50.
    pub slowest_rank: usize,
    /// Per iteration, the slowest rank's expert time, ms.
    pub expert_ms: Percentiles,
    /// Token rows the busiest link moves in one direction.
    pub a2a_rows: u64,
    /// `a2a_rows * hidden * elem_bytes`.
    pub a2a_bytes: u64,
    /// Modelled dispatch + combine time, ms.
    pub a2a_ms: f64,
    /// Per iteration, `max_r rank_ms + a2a_ms`, ms.
    pub latency_ms: Percentiles,
    /// Sum over ranks of the P50s: all the layer's expert work, rank by rank, ms.
    pub sum_rank_ms_p50: f64,
    /// The whole layer in one grouped GEMM per GEMM, ms.
    pub full_layer_ms: Percentiles,
    /// `sum_rank_ms_p50 / full_layer_ms.p50`: about 1 when splitting the
    /// layer into ranks adds nothing but the launches.
    pub split_overhead: Option<f64>,
    /// The whole layer's FFN rate at its P50, TFLOP/s.
    pub full_tflops: Option<f64>,
    /// The weights of every expert that got a row, read once, over the
    /// whole layer's P50, GB/s (the decode roofline).
    pub full_weight_gbps: Option<f64>,
    /// Routing of the whole batch (route + dispatch layout), ms; not part of the latency model.
    pub routing_ms: Percentiles,
    /// Host time to enqueue one rank's FFN, us (mean).
    pub host_enqueue_us: f64,
    /// `latency(none) / latency(policy)` at P50 and at P99.
    pub speedup_p50: Option<f64>,
    /// `latency(none) / latency(policy)` at P99.
    pub speedup_p99: Option<f64>,
    /// The same without the all-to-all (slowest rank only), P50.
    pub speedup_expert_p50: Option<f64>,
    /// `max_rank_load(none) / max_rank_load(policy)`.
    pub ideal: Option<f64>,
    /// `speedup_p50 / ideal` (the bar: >= 0.95).
    pub efficiency: Option<f64>,
    /// `speedup_expert_p50 / ideal`.
    pub efficiency_expert: Option<f64>,
    /// Whether `efficiency >= BAR`.
    pub meets_bar: Option<bool>,
    /// NVML summary over the timed rank iterations (`None` without NVML).
    pub telemetry: Option<WindowSummary>,
    /// Energy of the timed rank iterations over their tokens, J per token:
    /// the layer's expert FFN work, all ranks together (not the idle
    /// waiting of the faster ranks, nor the all-to-all).
    pub energy_j_per_token: Option<f64>,
    /// Times the launch gate's watchdog had to open the gate.
    pub gate_timeouts: usize,
}

/// All cases of one batch size, skew and EP size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    /// Tokens routed together (T).
    pub tokens: usize,
    /// Router-logit skew label.
    pub skew: String,
    /// EP ranks (R).
    pub ranks: usize,
    /// `E / R`.
    pub experts_per_rank: usize,
    /// The grouped-GEMM variants every case of the group ran.
    pub gemm1: String,
    /// GEMM2's variant name (`gemm1` is GEMM1's).
    pub gemm2: String,
    /// `none` first, then each capacity policy at each gamma.
    pub cases: Vec<GpuCaseReport>,
}

impl GroupReport {
    /// The case for `policy` at `gamma`.
    pub fn case(&self, policy: &str, gamma: Option<f64>) -> Option<&GpuCaseReport> {
        self.cases
            .iter()
            .find(|c| c.policy == policy && c.capacity_factor == gamma)
    }
}

/// A run that did not happen, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// The batch size, if the skip is that narrow.
    pub tokens: Option<usize>,
    /// The skew, if the skip is that narrow.
    pub skew: Option<String>,
    /// The EP size, if the skip is that narrow.
    pub ranks: Option<usize>,
    /// The policy, if one case was skipped.
    pub policy: Option<String>,
    /// Its gamma.
    pub capacity_factor: Option<f64>,
    /// Why it did not run.
    pub reason: String,
}

/// The device the benchmark ran on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: String,
    /// Compute capability as `"{major}{minor}"`, e.g. `"90"`.
    pub compute_capability: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Grouped-GEMM variants compiled and runnable here.
    pub variants: Vec<String>,
}

/// The setup as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSetupInfo {
    /// Batch sizes run.
    pub tokens: Vec<usize>,
    /// EP sizes run.
    pub ranks: Vec<usize>,
    /// Skew labels run.
    pub skews: Vec<String>,
    /// Policies run, `none` first, without repeats.
    pub policies: Vec<String>,
    /// gamma values run.
    pub capacity_factors: Vec<f64>,
    /// Timed iterations per case, at least.
    pub iters: usize,
    /// Untimed iterations before each case.
    pub warmup: usize,
    /// Least GPU time of each case's rank block, ms.
    pub min_case_ms: f64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Seed of the weights, logits and activations.
    pub seed: u64,
    /// Whether the FFN autotuner ran first.
    pub tuned: bool,
    /// Whether launches were queued behind a gate before each timed chunk
    /// (see the method), and why not when they were not.
    pub gated: bool,
    /// Why launches were not gated (`None` when `gated`).
    pub gate_note: Option<String>,
}

/// One row of the bar check: a capacity case at the gamma nearest 1.5.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BarRow {
    /// Tokens (T).
    pub tokens: usize,
    /// Skew label.
    pub skew: String,
    /// EP ranks (R).
    pub ranks: usize,
    /// The capacity policy.
    pub policy: String,
    /// gamma (the one nearest 1.5 in the run).
    pub capacity_factor: f64,
    /// `latency(none) / latency(policy)` at P50.
    pub speedup_p50: Option<f64>,
    /// `max_rank_load(none) / max_rank_load(policy)`.
    pub ideal: Option<f64>,
    /// `speedup_p50 / ideal`.
    pub efficiency: Option<f64>,
    /// Whether `efficiency >= BAR`.
    pub meets_bar: Option<bool>,
}

/// Everything the GPU benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuBenchReport {
    /// Name of the layer shape.
    pub label: String,
    /// The layer's shape.
    pub shape: LayerShape,
    /// The GPU that ran.
    pub device: DeviceInfo,
    /// The setup that ran.
    pub setup: GpuSetupInfo,
    /// The all-to-all latency model's constants.
    pub latency_model: LatencyModel,
    /// The formulas, in words.
    pub method: Vec<String>,
    /// Fidelity available without the model, and what is not.
    pub fidelity_note: String,
    /// Whether NVML telemetry was available, and its constants.
    pub telemetry: TelemetryInfo,
    /// One report per (T, skew, R), in run order.
    pub groups: Vec<GroupReport>,
    /// Runs that did not happen, and why.
    pub skipped: Vec<Skipped>,
    /// The bar (speedup >= 95% of ideal) at the gamma nearest 1.5.
    pub bar: Vec<BarRow>,
    /// Figures written (paths), filled in by the caller.
    pub figures: Vec<String>,
}

impl GpuBenchReport {
    /// The group of batch size `tokens`, skew label `skew` and EP size `ranks`.
    pub fn group(&self, tokens: usize, skew: &str, ranks: usize) -> Option<&GroupReport> {
        self.groups
            .iter()
            .find(|g| g.tokens == tokens && g.skew == skew && g.ranks == ranks)
    }
}

/// The method, stated in the report itself.
pub fn method_lines() -> Vec<String> {
    [
        "one MoE layer on one GPU: bf16 expert weights drawn on the device from a seeded hash (ExpertFfn::random), bf16 activations and synthetic router logits (trace::synthetic_logits at the chosen skew) from --seed; the batch is routed on the GPU (GpuRouter) under each policy",
        "rank r of R owns experts rE/R..(r+1)E/R and tokens floor(rT/R)..floor((r+1)T/R); its work is the rows the plan sends to its experts",
        "a rank is timed alone: ExpertFfn::forward_experts runs GEMM1 + SwiGLU + GEMM2 over the rank's experts only, on their span of the whole batch's dispatch rows (the call the EP replay's device composition makes per rank), with the rank's per-expert problem sizes on the same weights; CUDA events bracket it on the otherwise idle GPU, ranks one after another",
        "launch gate: each chunk of iterations is queued behind a cuStreamWaitValue32 on a device flag and released at once, so the events time GPU work, not host launch gaps (a watchdog opens the gate after 2 s if the host ever stalls; gate_timeouts counts that)",
        "the GEMM variants are fixed per T to ExpertFfn::variants_for(T, k) of the whole batch (a rank's experts average T k / E rows, as the layer's do), unless --gemm-variants names them",
        "latency_ms[i] = max_r rank_ms[i][r] + a2a_ms; P50/P99 over the timed iterations (linear interpolation between order statistics)",
        "a2a_ms = 2 * max_r max(send_r, recv_r) * hidden * elem_bytes / (a2a_gbps * 1e9) * 1e3: dispatch and combine; a token goes once to each other rank serving one of its experts",
        "speedup_p50 = latency_p50(none) / latency_p50(policy); ideal = max_r rank rows(none) / max_r rank rows(policy); efficiency = speedup_p50 / ideal (bar: >= 0.95)",
        "full_layer_ms: the whole layer's FFN (every expert, one grouped GEMM per GEMM) on the same plan; split_overhead = sum over ranks of the P50s / its P50",
        "routing_ms: GpuRouter::route of the whole batch plus the dispatch layout; reported, not part of the latency model",
        "telemetry: NVML sampled every --telemetry-ms over each case's timed rank iterations; energy from the total-energy counter read at the window's edges (else integrated power); energy_j_per_token = energy / (iterations * T)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What the report says about fidelity.
pub const FIDELITY_NOTE: &str = "gate mass kept (served sum p over top-k sum p), dropped and rerouted shares are measured on the GPU plans; this one-layer benchmark has no model, so it measures no KL divergence or top-1 agreement: `capmoe bench --device cuda --e2e` measures those on the whole GPU model, and the CPU bench on the CPU model";
