//! The end-to-end expert-parallel straggler benchmark (`capmoe bench`).
//!
//! For every policy and capacity factor the benchmark prefills one batch
//! through the whole model (every MoE layer routed under the policy), then
//! replays each MoE layer's expert work one EP rank at a time and times it
//! alone ([`Model::rank_work`], [`Model::run_rank_work`]). The layer's EP
//! latency is modelled as the slowest rank plus the two all-to-alls at a
//! stated bandwidth ([`LatencyModel`]); the EP prefill time adds the
//! measured non-MoE time, split over the ranks. Fidelity is measured against
//! the dropless baseline (`none`) on the same batch: KL divergence of the
//! next-token distributions and top-1 agreement at every position.
//!
//! Written against [`Backend`], so the CUDA backend runs it unchanged.

mod fidelity;
pub mod gpu;
mod latency;
#[cfg(feature = "bench")]
pub mod plot;
pub mod report;

pub use fidelity::{Fidelity, LogProbs};
pub use latency::{a2a_traffic, median, A2aTraffic, LatencyModel};

use crate::backend::Backend;
use crate::model::{argmax, ForwardOptions, LayerRecord, LogitsMode, Model, ModelError, Sequence};
use crate::progress::Progress;
use crate::routing::{Placement, Policy, RouterConfig, RoutingError};
use crate::trace::Rng;
use serde::Serialize;
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

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSetup {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (all prefilled at once: `T = batch * seq_len`).
    pub seq_len: usize,
    /// Expert-parallel ranks (divides E).
    pub ranks: usize,
    /// Policies; `none` (the baseline) runs once, first, whether listed or not.
    pub policies: Vec<Policy>,
    /// gamma values every capacity policy runs at.
    pub capacity_factors: Vec<f64>,
    /// Timed repetitions of each rank's expert work (median taken).
    pub iters: usize,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Seed of the prompt token ids.
    pub seed: u64,
    /// The layer whose per-expert load is drawn.
    pub load_layer: usize,
    /// Labels for the report.
    pub model_label: String,
    pub skew_label: String,
    /// Time every case's own prefill (one batch, logits at the last
    /// positions) and `decode_steps` greedy decode steps after it, on the
    /// one device: prefill and decode tokens/s ([`Throughput`]). Off, only
    /// the baseline's prefill is timed.
    pub throughput: bool,
    /// Decode steps timed after each timed prefill (with `throughput`).
    pub decode_steps: usize,
    /// Interleave the timing rounds over all cases (every case's forward
    /// pass first, its records kept until the end), so that load from other
    /// processes hits all cases alike: right on a shared CPU. Off, each case
    /// is timed right after its forward pass and its records dropped, so
    /// one case's MoE inputs are held at a time: right on a GPU, where a
    /// full model leaves little room.
    pub interleave: bool,
}

impl BenchSetup {
    /// Checks the setup against a model with `experts` experts and `layers` layers.
    pub fn validate(&self, experts: usize, layers: usize) -> Result<(), EpError> {
        for (what, v) in [
            ("--batch", self.batch),
            ("--seq-len", self.seq_len),
            ("--ranks", self.ranks),
            ("--iters", self.iters),
            ("bytes per element", self.elem_bytes),
        ] {
            if v == 0 {
                return Err(EpError::Zero { what });
            }
        }
        if self.policies.is_empty() {
            return Err(EpError::NoPolicies);
        }
        if experts % self.ranks != 0 {
            return Err(EpError::RanksDoNotDivideExperts {
                ranks: self.ranks,
                experts,
            });
        }
        check_policy_numbers(&self.policies, &self.capacity_factors, self.a2a_gbps)?;
        if self.load_layer >= layers {
            return Err(EpError::NoSuchLayer {
                layer: self.load_layer,
                layers,
            });
        }
        Ok(())
    }

    /// The runs in order: see [`cases`].
    pub fn cases(&self) -> Vec<(Policy, Option<f64>)> {
        cases(&self.policies, &self.capacity_factors)
    }
}

/// Checks what both benchmarks share: capacity policies need gammas, every
/// gamma is finite and positive, and so is the all-to-all bandwidth.
pub(crate) fn check_policy_numbers(
    policies: &[Policy],
    capacity_factors: &[f64],
    a2a_gbps: f64,
) -> Result<(), EpError> {
    if policies.iter().any(Policy::has_capacity) && capacity_factors.is_empty() {
        return Err(EpError::NoCapacityFactors);
    }
    if let Some(&g) = capacity_factors
        .iter()
        .find(|g| !(g.is_finite() && **g > 0.0))
    {
        return Err(EpError::InvalidCapacityFactor(g));
    }
    if !(a2a_gbps.is_finite() && a2a_gbps > 0.0) {
        return Err(EpError::InvalidBandwidth(a2a_gbps));
    }
    Ok(())
}

/// The runs of a benchmark in order: `none` first, then each capacity policy
/// at each gamma (duplicates removed; policies without capacity other than
/// `none` have nothing to vary and are skipped).
pub fn cases(policies: &[Policy], capacity_factors: &[f64]) -> Vec<(Policy, Option<f64>)> {
    let mut out = vec![(Policy::None, None)];
    for &p in policies {
        if !p.has_capacity() {
            continue;
        }
        for &g in capacity_factors {
            if !out.contains(&(p, Some(g))) {
                out.push((p, Some(g)));
            }
        }
    }
    out
}

/// The model the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub experts: usize,
    pub top_k: usize,
    pub vocab: usize,
    pub params: u64,
}

/// The setup as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    pub device: String,
    /// Threads the backend's expert FFN uses (rayon's pool on the CPU).
    pub threads: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub tokens: usize,
    pub ranks: usize,
    pub experts_per_rank: usize,
    pub skew: String,
    pub seed: u64,
    pub iters: usize,
    pub a2a_gbps: f64,
    pub elem_bytes: usize,
    pub policies: Vec<String>,
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
    pub layer: usize,
    /// `C` per expert (`None` for `none`).
    pub capacity: Option<u64>,
    /// Assignments served per expert.
    pub load: Vec<u64>,
    pub max_load: u64,
    pub mean_load: f64,
    /// `max_load / mean_load`.
    pub imbalance: f64,
    /// Assignments served per rank.
    pub rank_load: Vec<u64>,
    /// Token slots lost, and their share of `T * k`.
    pub dropped: u64,
    pub dropped_pct: f64,
    /// Served assignments outside the token's top-k, and their share of `T * k`.
    pub rerouted: u64,
    pub rerouted_pct: f64,
    /// Served `sum p` over top-k `sum p`.
    pub gate_mass_kept: f64,
    /// Median time of each rank's expert work, ms.
    pub rank_ms: Vec<f64>,
    pub slowest_rank: usize,
    /// Token rows the busiest link moves in one direction.
    pub a2a_rows: u64,
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
    pub dropped_pct: f64,
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
    /// `ep_prefill_ms(none) / ep_prefill_ms`.
    pub speedup_e2e: f64,
    /// `sum_l max rank load(none) / sum_l max rank load`: the speedup if
    /// expert time were exactly proportional to the busiest rank's rows.
    pub ideal_speedup: f64,
    /// Sum over layers of the routing time, ms.
    pub routing_ms: f64,
    pub fidelity: Fidelity,
    /// Measured prefill and decode speed (when the setup asks for it).
    pub throughput: Option<Throughput>,
}

/// One policy at one gamma.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub policy: String,
    pub capacity_factor: Option<f64>,
    /// `C` per expert (the same in every layer: T, k and E are).
    pub capacity: Option<u64>,
    pub summary: CaseSummary,
    pub layers: Vec<LayerReport>,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: ModelInfo,
    pub setup: SetupInfo,
    pub latency_model: LatencyModel,
    /// The formulas, in words.
    pub method: Vec<String>,
    pub baseline: Baseline,
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

/// Prompt ids: `batch` sequences of `seq_len` ids, uniform over the
/// vocabulary, from `seed`.
pub fn prompt_ids(batch: usize, seq_len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed ^ 0xB30C_5EED);
    (0..batch)
        .map(|_| {
            (0..seq_len)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// What one case's forward pass and replay give before the baseline is known.
struct Measured<B: Backend> {
    policy: Policy,
    gamma: Option<f64>,
    layers: Vec<LayerReport>,
    /// The forward pass's per-layer plans and MoE inputs, for the replay.
    records: Vec<LayerRecord<B>>,
    fidelity: Fidelity,
    served_mass: f64,
    topk_mass: f64,
}

/// Runs the benchmark on `model` (with its router skew already applied).
///
/// First every case's forward pass runs once (plans, statistics, fidelity
/// against `none`); then `iters` timing rounds each replay every case's
/// rank work once, and time one baseline prefill, so that load from other
/// processes spreads over all cases alike instead of skewing one. Without
/// [`BenchSetup::interleave`] each case's rounds run right after its forward
/// pass instead (one case's MoE inputs held at a time). With
/// [`BenchSetup::throughput`] every round also times the case's own prefill
/// and decode steps. Every time is taken by [`Backend::timed`]. `progress`
/// ticks once per case in each phase; pass [`NoProgress`](crate::progress::NoProgress) for none.
pub fn run<B: Backend>(
    model: &Model<B>,
    setup: &BenchSetup,
    progress: &dyn Progress,
) -> Result<BenchReport, EpError> {
    let cfg = model.config().clone();
    let (experts, layers) = (cfg.num_local_experts, cfg.num_hidden_layers);
    setup.validate(experts, layers)?;
    let tokens = setup.batch * setup.seq_len;
    let placement = Placement::new(setup.ranks, experts, tokens)?;
    let ranks = setup.ranks;
    let lat = LatencyModel {
        a2a_gbps: setup.a2a_gbps,
        elem_bytes: setup.elem_bytes,
        hidden: cfg.hidden_size,
    };
    let ids = prompt_ids(setup.batch, setup.seq_len, cfg.vocab_size, setup.seed);
    let prompts: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let cases = setup.cases();
    progress.set_length((cases.len() * (1 + setup.iters)) as u64);

    let round = |m: &Measured<B>, t: &mut CaseTimes, ci: usize| -> Result<(), EpError> {
        time_round(model, m, &prompts, setup, ci == 0, t)
    };
    // Phase 1: one forward pass per case (timed at once unless interleaved).
    let mut measured: Vec<Measured<B>> = Vec::with_capacity(cases.len());
    let mut times: Vec<CaseTimes> = Vec::with_capacity(cases.len());
    let mut base_logprobs: Option<LogProbs> = None;
    for (ci, &(policy, gamma)) in cases.iter().enumerate() {
        let label = match gamma {
            Some(g) => format!("{policy} gamma {g}"),
            None => format!("{policy}"),
        };
        progress.set_message(&format!("forward {label}"));
        let mut router = RouterConfig::new(cfg.num_experts_per_tok, policy).with_ranks(ranks);
        router.capacity_factor = gamma;
        let mut m = forward_case(
            model,
            &prompts,
            &router,
            &placement,
            &lat,
            setup.iters,
            &mut base_logprobs,
        )?;
        let mut t = CaseTimes::new(layers, ranks);
        progress.inc(1);
        if !setup.interleave {
            warm_up(model, &m, &prompts, ranks)?;
            for r in 0..setup.iters {
                progress.set_message(&format!("timing {label}: round {}/{}", r + 1, setup.iters));
                round(&m, &mut t, ci)?;
                progress.inc(1);
            }
            m.records.clear();
        }
        measured.push(m);
        times.push(t);
    }

    // Phase 2 (interleaved): timing rounds over every case, after one
    // untimed warm-up of the baseline prefill and of the first rank's work.
    if setup.interleave {
        warm_up(model, &measured[0], &prompts, ranks)?;
        for r in 0..setup.iters {
            for (ci, (m, t)) in measured.iter().zip(times.iter_mut()).enumerate() {
                progress.set_message(&format!(
                    "timing round {}/{}: {}{}",
                    r + 1,
                    setup.iters,
                    m.policy,
                    m.gamma.map_or(String::new(), |g| format!(" gamma {g}"))
                ));
                round(m, t, ci)?;
                progress.inc(1);
            }
        }
    }
    for (m, t) in measured.iter_mut().zip(&times) {
        for (lr, layer_times) in m.layers.iter_mut().zip(&t.rank) {
            lr.rank_ms = layer_times.iter().map(|t| median(t)).collect();
            lr.slowest_rank = (0..ranks)
                .max_by(|&a, &b| lr.rank_ms[a].total_cmp(&lr.rank_ms[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            lr.latency_ms = lr.rank_ms[lr.slowest_rank] + lr.a2a_ms;
        }
        m.records.clear();
    }

    let base = &measured[0];
    let expert_ms: f64 = base.layers.iter().flat_map(|l| l.rank_ms.iter()).sum();
    let prefill_ms = median(&times[0].prefill);
    let non_moe_ms = (prefill_ms - expert_ms).max(0.0);
    let baseline = Baseline {
        prefill_ms,
        expert_ms,
        non_moe_ms,
        non_moe_per_rank_ms: non_moe_ms / setup.ranks as f64,
    };
    let base_moe: f64 = base.layers.iter().map(|l| l.latency_ms).sum();
    let base_rank_max: u64 = base
        .layers
        .iter()
        .map(|l| l.rank_load.iter().copied().max().unwrap_or(0))
        .sum();
    let base_e2e = baseline.non_moe_per_rank_ms + base_moe;
    let report_cases = measured
        .iter()
        .zip(&times)
        .map(|(m, t)| {
            let n = m.layers.len().max(1) as f64;
            let slots = (tokens * cfg.num_experts_per_tok * m.layers.len()) as f64;
            let expert_ms: f64 = m.layers.iter().map(|l| l.rank_ms[l.slowest_rank]).sum();
            let a2a_ms: f64 = m.layers.iter().map(|l| l.a2a_ms).sum();
            let moe_ms: f64 = m.layers.iter().map(|l| l.latency_ms).sum();
            let rank_max: u64 = m
                .layers
                .iter()
                .map(|l| l.rank_load.iter().copied().max().unwrap_or(0))
                .sum();
            let ep_prefill_ms = baseline.non_moe_per_rank_ms + moe_ms;
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let summary = CaseSummary {
                imbalance: m.layers.iter().map(|l| l.imbalance).sum::<f64>() / n,
                rank_imbalance: m
                    .layers
                    .iter()
                    .map(|l| {
                        let total: u64 = l.rank_load.iter().sum();
                        let mean = total as f64 / l.rank_load.len() as f64;
                        ratio(l.rank_load.iter().copied().max().unwrap_or(0) as f64, mean)
                    })
                    .sum::<f64>()
                    / n,
                dropped_pct: 100.0
                    * ratio(
                        m.layers.iter().map(|l| l.dropped).sum::<u64>() as f64,
                        slots,
                    ),
                rerouted_pct: 100.0
                    * ratio(
                        m.layers.iter().map(|l| l.rerouted).sum::<u64>() as f64,
                        slots,
                    ),
                gate_mass_kept: if m.topk_mass > 0.0 {
                    m.served_mass / m.topk_mass
                } else {
                    1.0
                },
                expert_ms,
                a2a_ms,
                moe_ms,
                ep_prefill_ms,
                speedup_moe: ratio(base_moe, moe_ms),
                speedup_e2e: ratio(base_e2e, ep_prefill_ms),
                ideal_speedup: ratio(base_rank_max as f64, rank_max as f64),
                routing_ms: m.layers.iter().map(|l| l.routing_ms).sum(),
                fidelity: m.fidelity,
                throughput: setup
                    .throughput
                    .then(|| t.throughput(setup, tokens, ep_prefill_ms)),
            };
            CaseReport {
                policy: m.policy.to_string(),
                capacity_factor: m.gamma,
                capacity: m.layers.first().and_then(|l| l.capacity),
                summary,
                layers: m.layers.clone(),
            }
        })
        .collect();

    let mut policies: Vec<String> = vec!["none".into()];
    for p in &setup.policies {
        let s = p.to_string();
        if !policies.contains(&s) {
            policies.push(s);
        }
    }
    Ok(BenchReport {
        model: ModelInfo {
            name: setup.model_label.clone(),
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            layers,
            experts,
            top_k: cfg.num_experts_per_tok,
            vocab: cfg.vocab_size,
            params: cfg.param_count(),
        },
        setup: SetupInfo {
            device: model.backend().name().to_string(),
            threads: rayon::current_num_threads(),
            batch: setup.batch,
            seq_len: setup.seq_len,
            tokens,
            ranks: setup.ranks,
            experts_per_rank: experts / setup.ranks,
            skew: setup.skew_label.clone(),
            seed: setup.seed,
            iters: setup.iters,
            a2a_gbps: setup.a2a_gbps,
            elem_bytes: setup.elem_bytes,
            policies,
            capacity_factors: setup.capacity_factors.clone(),
        },
        latency_model: lat,
        method: method_lines(),
        baseline,
        cases: report_cases,
        figures: Vec::new(),
    })
}

/// One case's timings over the rounds.
struct CaseTimes {
    /// `[layer][rank]`: the rank's expert work, ms.
    rank: Vec<Vec<Vec<f64>>>,
    /// The case's prefill (the baseline's always; others with throughput), ms.
    prefill: Vec<f64>,
    /// One decode step each, ms.
    decode: Vec<f64>,
}

impl CaseTimes {
    fn new(layers: usize, ranks: usize) -> Self {
        Self {
            rank: vec![vec![Vec::new(); ranks]; layers],
            prefill: Vec::new(),
            decode: Vec::new(),
        }
    }

    fn throughput(&self, setup: &BenchSetup, tokens: usize, ep_prefill_ms: f64) -> Throughput {
        let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 / ms * 1e3 } else { 0.0 };
        let prefill_ms = median(&self.prefill);
        let step = (!self.decode.is_empty()).then(|| median(&self.decode));
        Throughput {
            prefill_ms,
            prefill_tok_s: per_s(tokens, prefill_ms),
            decode_steps: setup.decode_steps,
            decode_step_ms: step,
            decode_tok_s: step.map(|ms| per_s(setup.batch, ms)),
            ep_prefill_tok_s: per_s(tokens, ep_prefill_ms),
        }
    }
}

/// One untimed run of the baseline prefill and of the first rank's work.
fn warm_up<B: Backend>(
    model: &Model<B>,
    m: &Measured<B>,
    prompts: &[&[u32]],
    ranks: usize,
) -> Result<(), EpError> {
    let opts = ForwardOptions::new(model.default_router()).with_logits(LogitsMode::Last);
    let _ = model.prefill(prompts, &opts)?;
    if let Some(rec) = m.records.first() {
        let _ = model.run_rank_work(&model.rank_work(0, rec, 0, ranks)?)?;
    }
    Ok(())
}

/// One timing round of one case: its prefill (when `baseline` or with
/// throughput) and decode steps, then every layer's rank work, one rank at a
/// time, each timed alone by the backend ([`Backend::timed`]).
fn time_round<B: Backend>(
    model: &Model<B>,
    m: &Measured<B>,
    prompts: &[&[u32]],
    setup: &BenchSetup,
    baseline: bool,
    t: &mut CaseTimes,
) -> Result<(), EpError> {
    let be = model.backend();
    if baseline || setup.throughput {
        let mut router =
            RouterConfig::new(model.config().num_experts_per_tok, m.policy).with_ranks(setup.ranks);
        router.capacity_factor = m.gamma;
        let opts = ForwardOptions::new(router).with_logits(LogitsMode::Last);
        let ((mut seqs, out), ms) = be.timed(|| model.prefill(prompts, &opts))?;
        t.prefill.push(ms);
        if setup.throughput && setup.decode_steps > 0 {
            let mut next = next_tokens(&out.logits, out.vocab);
            drop(out);
            for _ in 0..setup.decode_steps {
                let toks: Vec<[u32; 1]> = next.iter().map(|&id| [id]).collect();
                let tok_refs: Vec<&[u32]> = toks.iter().map(|x| &x[..]).collect();
                let mut refs: Vec<&mut Sequence<B>> = seqs.iter_mut().collect();
                let (step, ms) = be.timed(|| model.forward(&mut refs, &tok_refs, &opts))?;
                t.decode.push(ms);
                next = next_tokens(&step.logits, step.vocab);
            }
        }
    }
    for (l, rec) in m.records.iter().enumerate() {
        for (r, times) in t.rank[l].iter_mut().enumerate() {
            let work = model.rank_work(l, rec, r, setup.ranks)?;
            let (y, ms) = be.timed(|| model.run_rank_work(&work))?;
            times.push(ms);
            drop(y);
        }
    }
    Ok(())
}

/// The greedy next token of every logits row.
fn next_tokens(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab.max(1))
        .map(|row| argmax(row).unwrap_or(0) as u32)
        .collect()
}

/// Prefills the batch under `router`: plans, statistics, all-to-all traffic,
/// routing time and fidelity (the first case, `none`, sets the baseline
/// distributions). Rank times are filled in by the timing rounds.
fn forward_case<B: Backend>(
    model: &Model<B>,
    prompts: &[&[u32]],
    router: &RouterConfig,
    placement: &Placement,
    lat: &LatencyModel,
    iters: usize,
    base_logprobs: &mut Option<LogProbs>,
) -> Result<Measured<B>, EpError> {
    let opts = ForwardOptions::new(router.clone())
        .with_logits(LogitsMode::All)
        .with_moe_inputs(true);
    let (_seqs, out) = model.prefill(prompts, &opts)?;
    let logprobs = LogProbs::new(&out.logits, out.vocab);
    let fidelity = match base_logprobs {
        Some(base) => Fidelity::compare(base, &logprobs),
        None => {
            let f = Fidelity::compare(&logprobs, &logprobs);
            *base_logprobs = Some(logprobs);
            f
        }
    };
    let ranks = placement.ranks();
    let slots = (prompts.iter().map(|p| p.len()).sum::<usize>() * router.top_k).max(1) as f64;
    let (mut served_mass, mut topk_mass) = (0.0, 0.0);
    let mut layers = Vec::with_capacity(out.layers.len());
    for (l, rec) in out.layers.iter().enumerate() {
        let plan = &rec.plan;
        let s = plan.stats();
        served_mass += s.served_mass;
        topk_mass += s.topk_mass;
        let rank_load = (0..ranks)
            .map(|r| placement.expert_group(r).map(|e| s.load[e]).sum::<u64>())
            .collect();
        let traffic = a2a_traffic(plan, placement);
        let routing_ms = match &rec.moe_input {
            Some(x) => {
                let moe = &model.layers()[l].moe;
                let mut times = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let (p, ms) = model.backend().timed(|| {
                        moe.route(model.backend(), x, router)
                            .map_err(ModelError::from)
                    })?;
                    times.push(ms);
                    drop(p);
                }
                median(&times)
            }
            None => 0.0,
        };
        let a2a_ms = lat.a2a_seconds(&traffic) * 1e3;
        layers.push(LayerReport {
            layer: l,
            capacity: plan.capacity().map(|c| c.per_expert),
            load: s.load.clone(),
            max_load: s.max_load,
            mean_load: s.mean_load,
            imbalance: s.imbalance(),
            rank_load,
            dropped: s.dropped,
            dropped_pct: 100.0 * s.dropped as f64 / slots,
            rerouted: s.rerouted,
            rerouted_pct: 100.0 * s.rerouted as f64 / slots,
            gate_mass_kept: s.gate_mass_kept,
            rank_ms: vec![0.0; ranks],
            slowest_rank: 0,
            a2a_rows: traffic.busiest(),
            a2a_bytes: lat.a2a_bytes(&traffic),
            a2a_ms,
            latency_ms: a2a_ms,
            routing_ms,
        });
    }
    Ok(Measured {
        policy: router.policy,
        gamma: router.capacity_factor,
        layers,
        records: out.layers,
        fidelity,
        served_mass,
        topk_mass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> BenchSetup {
        BenchSetup {
            batch: 1,
            seq_len: 8,
            ranks: 2,
            policies: vec![Policy::None, "drop:score".parse().unwrap()],
            capacity_factors: vec![1.0, 1.0, 2.0],
            iters: 1,
            a2a_gbps: 10.0,
            elem_bytes: 2,
            seed: 0,
            load_layer: 0,
            model_label: "tiny".into(),
            skew_label: "uniform".into(),
            throughput: false,
            decode_steps: 0,
            interleave: true,
        }
    }

    #[test]
    fn cases_put_none_first_and_drop_duplicates() {
        let s = BenchSetup {
            policies: vec!["drop:score".parse().unwrap()],
            ..setup()
        };
        let c = s.cases();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], (Policy::None, None));
        assert_eq!(c[2].1, Some(2.0));
    }

    #[test]
    fn validation_names_the_bad_value() {
        assert!(setup().validate(4, 2).is_ok());
        let bad = BenchSetup {
            capacity_factors: vec![0.0],
            ..setup()
        };
        assert!(matches!(
            bad.validate(4, 2),
            Err(EpError::InvalidCapacityFactor(_))
        ));
        assert!(matches!(
            BenchSetup {
                ranks: 3,
                ..setup()
            }
            .validate(4, 2),
            Err(EpError::RanksDoNotDivideExperts { .. })
        ));
        assert!(matches!(
            BenchSetup {
                iters: 0,
                ..setup()
            }
            .validate(4, 2),
            Err(EpError::Zero { .. })
        ));
        assert!(matches!(
            BenchSetup {
                a2a_gbps: f64::NAN,
                ..setup()
            }
            .validate(4, 2),
            Err(EpError::InvalidBandwidth(_))
        ));
    }

    #[test]
    fn next_tokens_take_each_rows_argmax() {
        assert_eq!(next_tokens(&[0.1, 0.9, 0.0, 2.0, 1.0, 3.0], 3), vec![1, 2]);
        assert!(next_tokens(&[], 3).is_empty());
    }

    #[test]
    fn throughput_is_tokens_over_median_time() {
        let s = BenchSetup {
            batch: 4,
            decode_steps: 2,
            throughput: true,
            ..setup()
        };
        let t = CaseTimes {
            rank: Vec::new(),
            prefill: vec![30.0, 10.0, 20.0],
            decode: vec![2.0, 2.0, 4.0],
        };
        let th = t.throughput(&s, 32, 8.0);
        assert_eq!(th.prefill_ms, 20.0);
        assert!((th.prefill_tok_s - 1600.0).abs() < 1e-9);
        assert_eq!(th.decode_step_ms, Some(2.0));
        assert!((th.decode_tok_s.unwrap() - 2000.0).abs() < 1e-9);
        assert!((th.ep_prefill_tok_s - 4000.0).abs() < 1e-9);
        let none = CaseTimes {
            decode: Vec::new(),
            ..t
        };
        assert_eq!(none.throughput(&s, 32, 8.0).decode_tok_s, None);
    }

    /// Timing each case right after its forward pass (the GPU's order)
    /// gives the same plans and fidelity as the interleaved rounds, and
    /// throughput fills every case.
    #[test]
    fn per_case_timing_matches_interleaved_and_reports_throughput() {
        use crate::backend::CpuBackend;
        use crate::model::{InitOptions, MixtralConfig};
        let cfg = MixtralConfig::builtin("tiny").unwrap();
        let model = Model::random(
            CpuBackend,
            cfg,
            &InitOptions::new(2).with_skew(crate::trace::Skew::Ratio(1.6)),
        )
        .unwrap();
        let a = run(&model, &setup(), &crate::progress::NoProgress).unwrap();
        let s = BenchSetup {
            throughput: true,
            decode_steps: 2,
            interleave: false,
            ..setup()
        };
        let b = run(&model, &s, &crate::progress::NoProgress).unwrap();
        assert_eq!(a.cases.len(), b.cases.len());
        for (x, y) in a.cases.iter().zip(&b.cases) {
            assert!(x.summary.throughput.is_none());
            let t = y.summary.throughput.as_ref().unwrap();
            assert!(t.prefill_tok_s > 0.0 && t.decode_tok_s.unwrap() > 0.0);
            assert_eq!(t.decode_steps, 2);
            assert_eq!(x.summary.fidelity.kl, y.summary.fidelity.kl);
            assert_eq!(x.summary.fidelity.top1, y.summary.fidelity.top1);
            for (lx, ly) in x.layers.iter().zip(&y.layers) {
                assert_eq!(lx.load, ly.load);
                assert_eq!(lx.dropped, ly.dropped);
                assert!(ly.rank_ms.iter().all(|v| v.is_finite() && *v >= 0.0));
            }
        }
        let mut md = Vec::new();
        report::write_markdown(&mut md, &b).unwrap();
        let md = String::from_utf8(md).unwrap();
        assert!(md.contains("## Throughput"), "{md}");
        let mut md = Vec::new();
        report::write_markdown(&mut md, &a).unwrap();
        assert!(!String::from_utf8(md).unwrap().contains("## Throughput"));
    }
}
