//! Running the benchmark: every case's forward pass, the timing rounds of each rank's
//! expert work, and the summary against the baseline.

use super::backend::EpBackend;
use super::replay::RankReplay;
use super::rounds::{time_round, warm_up, CaseTimes};
use super::summary::{check_finite, round_moe_ms, spread};
use super::*;
use crate::model::{ForwardOptions, LayerRecord, LogitsMode, Model, ModelError};
use crate::progress::Progress;
use crate::routing::{Placement, Policy, RouterConfig};
use crate::trace::Rng;

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

fn check_prompts(prompts: &[Vec<u32>], setup: &BenchSetup, vocab: usize) -> Result<(), EpError> {
    let bad = |why: String| Err(EpError::Prompts(why));
    if prompts.len() != setup.batch {
        return bad(format!(
            "{} sequences given; expected --batch = {}",
            prompts.len(),
            setup.batch
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.len() != setup.seq_len {
            return bad(format!(
                "sequence {i} has {} ids; expected --seq-len = {}",
                p.len(),
                setup.seq_len
            ));
        }
        if let Some(&id) = p.iter().find(|&&id| id as usize >= vocab) {
            return bad(format!(
                "sequence {i} holds id {id}; expected ids below the vocabulary size {vocab}"
            ));
        }
    }
    Ok(())
}

/// What one case's forward pass and replay give before the baseline is known.
pub(super) struct Measured<B: EpBackend> {
    /// The report's policy label.
    pub(super) label: String,
    /// gamma (a per-layer case: the mean over layers).
    pub(super) gamma: Option<f64>,
    /// The case's routers: one for every layer, or one per layer.
    pub(super) router: RouterConfig,
    pub(super) layer_routers: Vec<RouterConfig>,
    pub(super) layers: Vec<LayerReport>,
    /// The forward pass's per-layer plans and MoE inputs, for the replay.
    pub(super) records: Vec<LayerRecord<B>>,
    pub(super) fidelity: Fidelity,
    pub(super) served_mass: f64,
    pub(super) topk_mass: f64,
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
/// and decode steps. Every time is taken by [`EpBackend::timed`]. `progress`
/// ticks once per case in each phase; pass [`NoProgress`](crate::progress::NoProgress) for none.
pub fn run<B: EpBackend>(
    model: &Model<B>,
    setup: &BenchSetup,
    progress: &dyn Progress,
) -> Result<BenchReport, EpError> {
    setup.validate(
        model.config().num_local_experts,
        model.config().num_hidden_layers,
    )?;
    let ids = prompt_ids(
        setup.batch,
        setup.seq_len,
        model.config().vocab_size,
        setup.seed,
    );
    run_prompts(model, setup, &ids, progress)
}

/// [`run`] on given prompts instead of seeded uniform ids: real text, so that
/// a trained router shows the load skew it learned. `prompts` must hold
/// `setup.batch` sequences of `setup.seq_len` ids, each below the vocabulary
/// size ([`EpError::Prompts`] otherwise).
pub fn run_prompts<B: EpBackend>(
    model: &Model<B>,
    setup: &BenchSetup,
    prompts: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<BenchReport, EpError> {
    let cfg = model.config().clone();
    let (experts, layers) = (cfg.num_local_experts, cfg.num_hidden_layers);
    setup.validate(experts, layers)?;
    // Every prompt, and each decode step after it, within the model's positions.
    cfg.check_positions(0, setup.seq_len)
        .map_err(ModelError::from)?;
    if setup.throughput {
        cfg.check_positions(setup.seq_len, setup.decode_steps)
            .map_err(ModelError::from)?;
    }
    let tokens = setup.batch * setup.seq_len; // bounded by validate
    let placement = Placement::new(setup.ranks, experts, tokens)?;
    let ranks = setup.ranks;
    let lat = LatencyModel {
        a2a_gbps: setup.a2a_gbps,
        elem_bytes: setup.elem_bytes,
        hidden: cfg.hidden_size,
    };
    check_prompts(prompts, setup, cfg.vocab_size)?;
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let n_cases = setup.cases().len() + setup.layer_cases.len();
    progress.set_length((n_cases * (1 + setup.iters)) as u64);

    let round = |m: &Measured<B>, t: &mut CaseTimes, ci: usize| -> Result<(), EpError> {
        time_round(model, m, &prompts, setup, ci == 0, t)
    };
    // Phase 1: one forward pass per case (timed at once unless interleaved).
    let mut measured: Vec<Measured<B>> = Vec::with_capacity(n_cases);
    let mut times: Vec<CaseTimes> = Vec::with_capacity(n_cases);
    let mut base_logprobs: Option<LogProbs> = None;
    for (ci, spec) in case_specs(setup, &cfg).into_iter().enumerate() {
        let label = match spec.gamma {
            Some(g) if spec.layer_routers.is_empty() => format!("{} gamma {g}", spec.label),
            Some(g) => format!("{} (mean gamma {g:.3})", spec.label),
            None => spec.label.clone(),
        };
        progress.set_message(&format!("forward {label}"));
        let mut m = forward_case(
            model,
            &prompts,
            spec,
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
                    m.label,
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
    let base_rounds = round_moe_ms(&measured[0], &times[0]);
    let report_cases: Vec<CaseReport> = measured
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
                speedup_moe_spread: spread(
                    &base_rounds
                        .iter()
                        .zip(round_moe_ms(m, t))
                        .map(|(&b, c)| ratio(b, c))
                        .collect::<Vec<_>>(),
                ),
                above_ideal: ratio(base_moe, moe_ms)
                    > 1.02 * ratio(base_rank_max as f64, rank_max as f64),
                speedup_e2e: ratio(base_e2e, ep_prefill_ms),
                ideal_speedup: ratio(base_rank_max as f64, rank_max as f64),
                routing_ms: m.layers.iter().map(|l| l.routing_ms).sum(),
                fidelity: m.fidelity,
                throughput: setup
                    .throughput
                    .then(|| t.throughput(setup, tokens, ep_prefill_ms)),
            };
            CaseReport {
                policy: m.label.clone(),
                capacity_factor: m.gamma,
                // Per-layer cases have one capacity per layer (in `layers`).
                capacity: match m.layer_routers.is_empty() {
                    true => m.layers.first().and_then(|l| l.capacity),
                    false => None,
                },
                summary,
                layers: m.layers.clone(),
            }
        })
        .collect();

    check_finite(&report_cases, setup)?;
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

/// Prefills the batch under `router`: plans, statistics, all-to-all traffic,
/// routing time and fidelity (the first case, `none`, sets the baseline
/// distributions). Rank times are filled in by the timing rounds.
fn forward_case<B: EpBackend>(
    model: &Model<B>,
    prompts: &[&[u32]],
    spec: CaseSpec,
    placement: &Placement,
    lat: &LatencyModel,
    iters: usize,
    base_logprobs: &mut Option<LogProbs>,
) -> Result<Measured<B>, EpError> {
    let opts = ForwardOptions::new(spec.router.clone())
        .with_layer_routers(spec.layer_routers.clone())
        .with_logits(LogitsMode::All)
        .with_moe_inputs(true);
    let router = &spec.router;
    let (_seqs, out) = model.prefill_ranks(prompts, &opts)?;
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
        let plan = rec.plan.as_ref().ok_or(ModelError::NoPlan { layer: l })?;
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
                    // The backend's own routing (CUDA: on the device).
                    let ((), ms) = model.backend().timed(|| {
                        model
                            .backend()
                            .route_only(moe, x, opts.router_of(l))
                            .map_err(ModelError::from)
                    })?;
                    times.push(ms);
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
        label: spec.label,
        gamma: spec.gamma,
        router: spec.router,
        layer_routers: spec.layer_routers,
        layers,
        records: out.layers,
        fidelity,
        served_mass,
        topk_mass,
    })
}

/// One case to run: its label, gamma (a per-layer case: the mean) and routers.
struct CaseSpec {
    label: String,
    gamma: Option<f64>,
    router: RouterConfig,
    layer_routers: Vec<RouterConfig>,
}

/// The uniform cases ([`BenchSetup::cases`]: `none` first), then the per-layer ones.
fn case_specs(setup: &BenchSetup, cfg: &crate::model::MixtralConfig) -> Vec<CaseSpec> {
    let k = cfg.num_experts_per_tok;
    let router = |policy: Policy, gamma: Option<f64>| {
        let mut r = RouterConfig::new(k, policy).with_ranks(setup.ranks);
        r.capacity_factor = gamma;
        r
    };
    let uniform = setup.cases().into_iter().map(|(policy, gamma)| CaseSpec {
        label: policy.to_string(),
        gamma,
        router: router(policy, gamma),
        layer_routers: Vec::new(),
    });
    let per_layer = setup.layer_cases.iter().map(|c| {
        let mean = c.mean_gamma();
        CaseSpec {
            label: c.label.clone(),
            gamma: Some(mean),
            // Decode steps (with throughput) run one router: the mean gamma.
            router: router(c.policy, Some(mean)),
            layer_routers: c
                .gammas
                .iter()
                .map(|&g| router(c.policy, Some(g)))
                .collect(),
        }
    });
    uniform.chain(per_layer).collect()
}
