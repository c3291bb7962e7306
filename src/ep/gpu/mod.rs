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
//! ([`LatencyModel`]); the report gives P50/P99 over iterations, the speedup
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

#[cfg(feature = "cuda")]
#[cfg(feature = "cuda")]
mod run;
#[cfg(feature = "cuda")]
pub use run::run;

pub use stats::{ideal_ratio, percentile, Percentiles};
pub use telemetry::{TelemetryInfo, WindowSummary};

use super::{A2aTraffic, EpError, LatencyModel};
use crate::routing::Policy;
use crate::trace::Skew;
use serde::Serialize;

/// The layer speedup must reach this share of the ideal ratio (issue 6).
pub const BAR: f64 = 0.95;

/// The MoE layer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerShape {
    /// Experts in the layer (E).
    pub experts: usize,
    /// Hidden size (H).
    pub hidden: usize,
    /// Expert FFN intermediate size (I).
    pub intermediate: usize,
    /// Experts per token (k).
    pub top_k: usize,
}

impl LayerShape {
    /// Mixtral-8x7B's MoE layer: 8 experts, hidden 4096, intermediate
    /// 14336, top-2.
    pub const MIXTRAL_8X7B: LayerShape = LayerShape {
        experts: 8,
        hidden: 4096,
        intermediate: 14336,
        top_k: 2,
    };

    /// FLOPs of `rows` routed rows: `2 rows H 2I + 2 rows I H`.
    pub fn flops(&self, rows: u64) -> f64 {
        6.0 * rows as f64 * self.hidden as f64 * self.intermediate as f64
    }

    /// Bytes of bf16 weights `experts` experts read: `3 H I` each.
    pub fn weight_bytes(&self, experts: usize) -> f64 {
        6.0 * experts as f64 * self.hidden as f64 * self.intermediate as f64
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBenchSetup {
    /// Name of the shape for the report.
    pub label: String,
    /// The layer's shape.
    pub shape: LayerShape,
    /// Batch sizes (tokens routed together).
    pub tokens: Vec<usize>,
    /// EP sizes (each divides E).
    pub ranks: Vec<usize>,
    /// Router-logit skews to run.
    pub skews: Vec<Skew>,
    /// Policies; `none` (the baseline) runs first whether listed or not.
    pub policies: Vec<Policy>,
    /// gamma values every capacity policy runs at.
    pub capacity_factors: Vec<f64>,
    /// Timed iterations per case, at least (more when `min_case_ms` asks).
    pub iters: usize,
    /// Untimed iterations before each case's timed ones.
    pub warmup: usize,
    /// Each case's rank block runs at least this long (GPU time), so that
    /// telemetry has samples and P99 has iterations.
    pub min_case_ms: f64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Seed of the weights, the logits and the activations.
    pub seed: u64,
    /// NVML sampling period, ms.
    pub telemetry_ms: f64,
    /// Run the FFN autotuner for every `T` first.
    pub tune: bool,
    /// Fixed (GEMM1, GEMM2) variant names instead of the per-`T` choice.
    pub variants: Option<(String, String)>,
    /// Hold each rank's launches behind a launch gate (stream memory operations) so that they
    /// start together; off, each launch is timed as it is queued (`capmoe bench` turns it off
    /// with `CAPMOE_NO_GATE=1`).
    pub launch_gate: bool,
    /// Tuning results to start from (the CLI loads its cache file); `None`: an empty in-memory
    /// cache. The benchmark never writes it.
    pub tune_cache: Option<crate::expert::TuneCache>,
}

impl GpuBenchSetup {
    /// Checks everything that can be checked without a GPU.
    pub fn validate(&self) -> Result<(), EpError> {
        let s = &self.shape;
        for (what, v) in [
            ("--iters", self.iters),
            ("experts", s.experts),
            ("hidden size", s.hidden),
            ("intermediate size", s.intermediate),
            ("top-k", s.top_k),
            ("bytes per element", self.elem_bytes),
        ] {
            if v == 0 {
                return Err(EpError::Zero { what });
            }
        }
        for (what, list) in [("--tokens", &self.tokens), ("--ranks", &self.ranks)] {
            if list.is_empty() {
                return Err(EpError::EmptyList { what });
            }
            if list.contains(&0) {
                return Err(EpError::Zero { what });
            }
        }
        if self.skews.is_empty() {
            return Err(EpError::EmptyList { what: "--skew" });
        }
        if self.policies.is_empty() {
            return Err(EpError::NoPolicies);
        }
        if let Some(&r) = self.ranks.iter().find(|&&r| s.experts % r != 0) {
            return Err(EpError::RanksDoNotDivideExperts {
                ranks: r,
                experts: s.experts,
            });
        }
        crate::ep::check_policy_numbers(&self.policies, &self.capacity_factors, self.a2a_gbps)?;
        for (what, v) in [
            ("--min-case-ms", self.min_case_ms),
            ("--telemetry-ms", self.telemetry_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(EpError::InvalidNumber { what, value: v });
            }
        }
        Ok(())
    }

    /// The runs of one group in order (see [`crate::ep::cases`]).
    pub fn cases(&self) -> Vec<(Policy, Option<f64>)> {
        crate::ep::cases(&self.policies, &self.capacity_factors)
    }
}

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
        "a rank is timed alone: its rows, expert by expert in token order, form a sub-batch routed with one-hot logits (none, k = 1), which reproduces exactly the rank's rows per expert; ExpertFfn::forward on it runs GEMM1 + SwiGLU + GEMM2 with the rank's problem sizes on the same weights and m = 0 (no tiles) for the other experts; CUDA events bracket it on the otherwise idle GPU, ranks one after another",
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

/// Serves `a / b` as a finite ratio or nothing.
fn ratio(a: f64, b: f64) -> Option<f64> {
    stats::ratio(a, b)
}

/// One case's report from its measurement; speedups are filled in by
/// [`assemble_group`].
pub fn assemble_case(
    m: &CaseMeasurement,
    shape: &LayerShape,
    ranks: usize,
    tokens: usize,
    lat: &LatencyModel,
) -> GpuCaseReport {
    let per = shape.experts / ranks.max(1);
    let rank_load: Vec<u64> = (0..ranks)
        .map(|r| m.load[r * per..(r + 1) * per].iter().sum())
        .collect();
    let max_rank_load = rank_load.iter().copied().max().unwrap_or(0);
    let served: u64 = m.load.iter().sum();
    let slots = (tokens * shape.top_k).max(1) as f64;
    let max_load = m.load.iter().copied().max().unwrap_or(0);
    let a2a_ms = lat.a2a_seconds(&m.traffic) * 1e3;
    let per_rank = stats::per_rank(&m.rank_ms, ranks);
    let rank_ms_p50: Vec<f64> = per_rank.iter().map(|v| Percentiles::of(v).p50).collect();
    let slowest_rank = (0..ranks)
        .max_by(|&a, &b| rank_ms_p50[a].total_cmp(&rank_ms_p50[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    let expert: Vec<f64> = stats::layer_latencies(&m.rank_ms, 0.0);
    let latency = stats::layer_latencies(&m.rank_ms, a2a_ms);
    let full = Percentiles::of(&m.full_ms);
    let sum_rank_ms_p50: f64 = rank_ms_p50.iter().sum();
    let active = m.load.iter().filter(|&&l| l > 0).count();
    let full_s = full.p50 / 1e3;
    let iterations = m.rank_ms.len();
    GpuCaseReport {
        policy: m.policy.clone(),
        capacity_factor: m.capacity_factor,
        capacity: m.capacity,
        load: m.load.clone(),
        rank_load: rank_load.clone(),
        max_rank_load,
        imbalance: ratio(max_load as f64, served as f64 / shape.experts as f64).unwrap_or(0.0),
        rank_imbalance: ratio(max_rank_load as f64, served as f64 / ranks.max(1) as f64)
            .unwrap_or(0.0),
        dropped_pct: 100.0 * m.dropped as f64 / slots,
        rerouted_pct: 100.0 * m.rerouted as f64 / slots,
        gate_mass_kept: m.gate_mass_kept,
        iterations,
        rank_ms_p50,
        slowest_rank,
        expert_ms: Percentiles::of(&expert),
        a2a_rows: m.traffic.busiest(),
        a2a_bytes: lat.a2a_bytes(&m.traffic),
        a2a_ms,
        latency_ms: Percentiles::of(&latency),
        sum_rank_ms_p50,
        full_layer_ms: full,
        split_overhead: ratio(sum_rank_ms_p50, full.p50),
        full_tflops: ratio(shape.flops(served), full_s * 1e12),
        full_weight_gbps: ratio(shape.weight_bytes(active), full_s * 1e9),
        routing_ms: Percentiles::of(&m.routing_ms),
        host_enqueue_us: m.host_enqueue_us,
        speedup_p50: None,
        speedup_p99: None,
        speedup_expert_p50: None,
        ideal: None,
        efficiency: None,
        efficiency_expert: None,
        meets_bar: None,
        energy_j_per_token: m
            .telemetry
            .as_ref()
            .and_then(|t| t.energy_j)
            .and_then(|j| ratio(j, (iterations * tokens) as f64)),
        telemetry: m.telemetry.clone(),
        gate_timeouts: m.gate_timeouts,
    }
}

/// A group's report: every case assembled, speedups and ideal ratios
/// against the group's `none` case (its first `none`).
#[allow(clippy::too_many_arguments)]
pub fn assemble_group(
    tokens: usize,
    skew: String,
    ranks: usize,
    shape: &LayerShape,
    lat: &LatencyModel,
    gemm: (String, String),
    measured: &[CaseMeasurement],
) -> GroupReport {
    let mut cases: Vec<GpuCaseReport> = measured
        .iter()
        .map(|m| assemble_case(m, shape, ranks, tokens, lat))
        .collect();
    if let Some(base) = cases.iter().find(|c| c.policy == "none").cloned() {
        for c in &mut cases {
            c.speedup_p50 = ratio(base.latency_ms.p50, c.latency_ms.p50);
            c.speedup_p99 = ratio(base.latency_ms.p99, c.latency_ms.p99);
            c.speedup_expert_p50 = ratio(base.expert_ms.p50, c.expert_ms.p50);
            c.ideal = ideal_ratio(base.max_rank_load, c.max_rank_load);
            c.efficiency = c.speedup_p50.zip(c.ideal).and_then(|(s, i)| ratio(s, i));
            c.efficiency_expert = c
                .speedup_expert_p50
                .zip(c.ideal)
                .and_then(|(s, i)| ratio(s, i));
            c.meets_bar = c.efficiency.map(|e| e >= BAR);
        }
    }
    GroupReport {
        tokens,
        skew,
        ranks,
        experts_per_rank: shape.experts / ranks.max(1),
        gemm1: gemm.0,
        gemm2: gemm.1,
        cases,
    }
}

/// The bar rows: every capacity case at the gamma nearest 1.5 (the paper's).
pub fn bar_rows(groups: &[GroupReport], gammas: &[f64]) -> Vec<BarRow> {
    let Some(g) = gammas
        .iter()
        .copied()
        .min_by(|a, b| (a - 1.5).abs().total_cmp(&(b - 1.5).abs()))
    else {
        return Vec::new();
    };
    groups
        .iter()
        .flat_map(|gr| {
            gr.cases
                .iter()
                .filter(move |c| c.capacity_factor == Some(g))
                .map(move |c| BarRow {
                    tokens: gr.tokens,
                    skew: gr.skew.clone(),
                    ranks: gr.ranks,
                    policy: c.policy.clone(),
                    capacity_factor: g,
                    speedup_p50: c.speedup_p50,
                    ideal: c.ideal,
                    efficiency: c.efficiency,
                    meets_bar: c.meets_bar,
                })
        })
        .collect()
}

/// NVML's spelling of a CUDA device UUID: `GPU-` and the 16 bytes as
/// 8-4-4-4-12 hex digits.
pub fn nvml_uuid(bytes: &[u8; 16]) -> String {
    let h: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

#[cfg(test)]
mod tests;
