//! What a run reports: per-layer, per-case and whole-run results, and the method.

use super::*;
use serde::Serialize;

/// The model the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The model's label.
    pub name: String,
    /// Hidden size.
    pub hidden: usize,
    /// Expert FFN intermediate size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Experts per MoE layer (E).
    pub experts: usize,
    /// Experts per token (k).
    pub top_k: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Total parameter count.
    pub params: u64,
}

/// The setup as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    /// The backend's name ([`crate::backend::Backend::name`]).
    pub device: String,
    /// Threads the backend's expert FFN uses (rayon's pool on the CPU).
    pub threads: usize,
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Tokens prefilled at once (`T = batch * seq_len`).
    pub tokens: usize,
    /// Expert-parallel ranks (R).
    pub ranks: usize,
    /// `E / R`.
    pub experts_per_rank: usize,
    /// Router-skew label (e.g. `uniform`).
    pub skew: String,
    /// Seed of the prompt token ids.
    pub seed: u64,
    /// Timing rounds per case (medians taken).
    pub iters: usize,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Policies run, `none` first, without repeats.
    pub policies: Vec<String>,
    /// gamma values every capacity policy ran at.
    pub capacity_factors: Vec<f64>,
}

/// Times of the dropless baseline that every case shares.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Median wall time of a whole prefill under `none` (logits at the last
    /// position of each sequence, as serving prefill does), ms.
    pub prefill_ms: f64,
    /// Sum over layers and ranks of the `none` expert work, ms (the expert
    /// FFN share of that prefill).
    pub expert_ms: f64,
    /// `prefill_ms - expert_ms` (at least 0): attention, projections, norms,
    /// router, routing, dispatch, combine and the LM head, ms.
    pub non_moe_ms: f64,
    /// `non_moe_ms / ranks`: the non-MoE work split over the ranks (each rank
    /// runs its `T/R` tokens), ms.
    pub non_moe_per_rank_ms: f64,
}

/// One MoE layer of one case.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Layer index, in 0..layers.
    pub layer: usize,
    /// `C` per expert (`None` for `none`).
    pub capacity: Option<u64>,
    /// Assignments served per expert.
    pub load: Vec<u64>,
    /// Largest per-expert load.
    pub max_load: u64,
    /// Mean per-expert load (`T * k / E` when nothing drops).
    pub mean_load: f64,
    /// `max_load / mean_load`.
    pub imbalance: f64,
    /// Assignments served per rank.
    pub rank_load: Vec<u64>,
    /// Token slots lost, and their share of `T * k`.
    pub dropped: u64,
    /// `dropped` as a percentage of `T * k`.
    pub dropped_pct: f64,
    /// Served assignments outside the token's top-k, and their share of `T * k`.
    pub rerouted: u64,
    /// `rerouted` as a percentage of `T * k`.
    pub rerouted_pct: f64,
    /// Served `sum p` over top-k `sum p`.
    pub gate_mass_kept: f64,
    /// Median time of each rank's expert work, ms.
    pub rank_ms: Vec<f64>,
    /// The rank with the largest `rank_ms`, in 0..ranks.
    pub slowest_rank: usize,
    /// Token rows the busiest link moves in one direction.
    pub a2a_rows: u64,
    /// `a2a_rows * hidden * elem_bytes`: bytes on the busiest link, one direction.
    pub a2a_bytes: u64,
    /// Modelled dispatch + combine time, ms.
    pub a2a_ms: f64,
    /// `max(rank_ms) + a2a_ms`.
    pub latency_ms: f64,
    /// Median time of routing this layer (router GEMM, gating, policy), ms;
    /// reported, not part of the latency model.
    pub routing_ms: f64,
}

/// One case's own speed on the one device that ran the benchmark (measured,
/// not modelled; the whole model, no EP split).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Median wall time of the case's prefill of the batch, ms.
    pub prefill_ms: f64,
    /// `T / prefill_ms`, tokens/s.
    pub prefill_tok_s: f64,
    /// Decode steps timed after each prefill (one token per sequence each).
    pub decode_steps: usize,
    /// Median time of one decode step of the whole batch, ms (`None`
    /// without decode steps).
    pub decode_step_ms: Option<f64>,
    /// `batch / decode_step_ms`, tokens/s.
    pub decode_tok_s: Option<f64>,
    /// `T / ep_prefill_ms`: the modelled EP prefill's tokens/s.
    pub ep_prefill_tok_s: f64,
}

/// One case's totals (sums over layers, or means where stated).
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// Mean over layers of max/mean load.
    pub imbalance: f64,
    /// Mean over layers of the busiest rank's load over the mean rank load.
    pub rank_imbalance: f64,
    /// Token slots dropped over all layers, % of `T * k * layers`.
    pub dropped_pct: f64,
    /// Rerouted assignments over all layers, % of `T * k * layers`.
    pub rerouted_pct: f64,
    /// Served over top-k gate mass, all layers together.
    pub gate_mass_kept: f64,
    /// Sum over layers of the slowest rank's expert time, ms.
    pub expert_ms: f64,
    /// Sum over layers of the modelled all-to-all time, ms.
    pub a2a_ms: f64,
    /// Sum over layers of the EP layer latency, ms.
    pub moe_ms: f64,
    /// `non_moe_per_rank_ms + moe_ms`, ms.
    pub ep_prefill_ms: f64,
    /// `moe_ms(none) / moe_ms`.
    pub speedup_moe: f64,
    /// The MoE speedup of each timing round (`none`'s round over this case's): min, median, max.
    pub speedup_moe_spread: [f64; 3],
    /// Whether the median MoE speedup is more than 2% above [`CaseSummary::ideal_speedup`]:
    /// noise (a loaded machine, a slow baseline round), not capacity.
    pub above_ideal: bool,
    /// `ep_prefill_ms(none) / ep_prefill_ms`.
    pub speedup_e2e: f64,
    /// `sum_l max rank load(none) / sum_l max rank load`: the speedup if
    /// expert time were exactly proportional to the busiest rank's rows.
    pub ideal_speedup: f64,
    /// Sum over layers of the routing time, ms.
    pub routing_ms: f64,
    /// KL divergence from and top-1 agreement with the `none` baseline.
    pub fidelity: Fidelity,
    /// Measured prefill and decode speed (when the setup asks for it).
    pub throughput: Option<Throughput>,
}

/// One policy at one gamma.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The policy, as its CLI string (e.g. `drop:score`).
    pub policy: String,
    /// gamma (`None` for `none`).
    pub capacity_factor: Option<f64>,
    /// `C` per expert (the same in every layer: T, k and E are).
    pub capacity: Option<u64>,
    /// Totals over layers.
    pub summary: CaseSummary,
    /// Each MoE layer, in order.
    pub layers: Vec<LayerReport>,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The model that ran.
    pub model: ModelInfo,
    /// The setup that ran.
    pub setup: SetupInfo,
    /// The all-to-all latency model's constants.
    pub latency_model: LatencyModel,
    /// The formulas, in words.
    pub method: Vec<String>,
    /// The `none` baseline's times.
    pub baseline: Baseline,
    /// `none` first, then each capacity policy at each gamma.
    pub cases: Vec<CaseReport>,
    /// Figures written (paths), filled in by the caller.
    pub figures: Vec<String>,
}

impl BenchReport {
    /// The case for `policy` at `gamma`.
    pub fn case(&self, policy: &str, gamma: Option<f64>) -> Option<&CaseReport> {
        self.cases
            .iter()
            .find(|c| c.policy == policy && c.capacity_factor == gamma)
    }
}

/// The method, stated in the report itself.
pub fn method_lines() -> Vec<String> {
    [
        "rank_ms[l][r]: median over --iters timing rounds of one EP rank's expert FFN work for layer l (its experts on the rows the plan sends them), timed alone on the whole device (the CPU backend's FFN uses every rayon thread); each round replays every case once, so load from other processes spreads over all cases",
        "a2a_ms[l] = 2 * max_r max(send_r, recv_r) * hidden * elem_bytes / (a2a_gbps * 1e9) * 1e3: dispatch and combine; a token goes once to each other rank that serves one of its experts; ranks' links run in parallel",
        "latency_ms[l] = max_r rank_ms[l][r] + a2a_ms[l]",
        "moe_ms = sum_l latency_ms[l]; speedup_moe = moe_ms(none) / moe_ms",
        "non_moe_ms = prefill_ms(none) - sum_l sum_r rank_ms(none)[l][r]; each rank runs T/R tokens of it: non_moe_per_rank_ms = non_moe_ms / R",
        "ep_prefill_ms = non_moe_per_rank_ms + moe_ms; speedup_e2e = ep_prefill_ms(none) / ep_prefill_ms",
        "fidelity: mean over all T positions of KL(none || policy) of the next-token distributions (nats), and top-1 (greedy token) agreement",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
