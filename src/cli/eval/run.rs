//! Runs the protocol on a model once per router configuration and gathers what each costs.

use super::protocol::{predicting_rows, score, Layout, Stream};
use super::report::EvalResult;
use super::EvalError;
use capmoe::ep::EpBackend;
use capmoe::ep::{Fidelity, LogProbs};
use capmoe::model::{ForwardOptions, Model, ModelError};
use capmoe::online::{layer_routers, CapacityController, LoadMonitor};
use capmoe::progress::Progress;
use capmoe::routing::{Placement, RouterConfig, RoutingPlan};
use std::collections::BTreeMap;

/// What the runs share: the stream, its layout and each example's task.
pub struct Plan<'a> {
    pub stream: &'a Stream,
    pub layout: &'a Layout,
    pub tasks: &'a [String],
}

/// Running sums of one layer's routing over the forwards of a run.
#[derive(Default, Clone)]
struct LayerSums {
    demand: Vec<f64>,
    demand_ratio: f64,
    served_ratio: f64,
    forwards: usize,
}

/// Running sums of one run.
#[derive(Default)]
struct Sums {
    per_task: BTreeMap<String, (usize, usize)>,
    nll: f64,
    positions: usize,
    kl: f64,
    kl_rows: usize,
    layers: Vec<LayerSums>,
    slots: u64,
    dropped: u64,
    rerouted: u64,
    served_mass: f64,
    topk_mass: f64,
    tokens: u64,
    no_expert: u64,
}

fn ratio(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = v.iter().fold(0.0f64, |a, &x| a.max(x));
    if mean > 0.0 {
        max / mean
    } else {
        0.0
    }
}

impl Sums {
    fn add_plan(&mut self, li: usize, plan: &RoutingPlan) {
        if self.layers.len() <= li {
            self.layers.resize(li + 1, LayerSums::default());
        }
        let l = &mut self.layers[li];
        let mut demand = vec![0.0f64; plan.experts()];
        for t in 0..plan.tokens() {
            for &e in plan.topk(t) {
                demand[e as usize] += 1.0;
            }
        }
        l.demand.resize(plan.experts(), 0.0);
        for (a, d) in l.demand.iter_mut().zip(&demand) {
            *a += d;
        }
        l.demand_ratio += ratio(&demand);
        let s = plan.stats();
        let served: Vec<f64> = s.load.iter().map(|&x| x as f64).collect();
        l.served_ratio += ratio(&served);
        l.forwards += 1;
        self.slots += (plan.tokens() * plan.top_k()) as u64;
        self.dropped += s.dropped;
        self.rerouted += s.rerouted;
        self.served_mass += s.served_mass;
        self.topk_mass += s.topk_mass;
        self.tokens += plan.tokens() as u64;
        let off = plan.offsets();
        self.no_expert += off.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    }
}

/// Runs the protocol under `router`. `baseline` holds, per batch, the `none` logits at the
/// rows predicting answer tokens; it is filled when empty (the `none` run) and compared with
/// otherwise (the KL).
pub fn run_one<B: EpBackend>(
    model: &Model<B>,
    plan: &Plan<'_>,
    router: &RouterConfig,
    baseline: &mut Vec<Vec<f32>>,
    mut controlled: Option<&mut Controlled>,
    progress: &dyn Progress,
) -> Result<EvalResult, EvalError> {
    let lay = plan.layout;
    let per = lay.batch_tokens();
    let fill = baseline.is_empty();
    let mut opts = ForwardOptions::new(router.clone());
    let mut sums = Sums::default();
    let experts = model.config().num_local_experts;
    for b in 0..lay.batches {
        if let Some(c) = controlled.as_deref_mut() {
            let p = c.controller.plan(per, &c.monitor)?;
            let routers = layer_routers(&p.capacity, router, per, experts)?;
            c.gammas
                .extend(routers.iter().filter_map(|r| r.capacity_factor));
            opts = opts.with_layer_routers(routers);
        }
        let base = b * per;
        let rows: Vec<&[u32]> = plan.stream.ids[base..base + per]
            .chunks(lay.seq_len)
            .collect();
        let (_, out) = model
            .prefill(&rows, &opts)
            .map_err(|e: ModelError| EvalError::Model(Box::new(e)))?;
        let vocab = out.vocab;
        let mut picked = Vec::new();
        for &n in &lay.scored[b] {
            let span = plan.stream.spans[n];
            let s = score(&out.logits, vocab, &plan.stream.ids, span, base);
            let t = sums.per_task.entry(plan.tasks[n].clone()).or_default();
            t.0 += usize::from(s.correct);
            t.1 += 1;
            sums.nll += s.nll;
            sums.positions += s.positions;
            for r in predicting_rows(span, base) {
                picked.extend_from_slice(&out.logits[r * vocab..(r + 1) * vocab]);
            }
        }
        if fill {
            baseline.push(picked);
        } else if let Some(base_rows) = baseline.get(b) {
            let f = Fidelity::compare(
                &LogProbs::new(base_rows, vocab),
                &LogProbs::new(&picked, vocab),
            );
            let n = picked.len() / vocab.max(1);
            sums.kl += f.kl * n as f64;
            sums.kl_rows += n;
        }
        let mut plans = Vec::with_capacity(out.layers.len());
        for (li, rec) in out.layers.into_iter().enumerate() {
            let plan = rec
                .plan
                .ok_or_else(|| EvalError::Model(Box::new(ModelError::NoPlan { layer: li })))?;
            sums.add_plan(li, &plan);
            plans.push(plan);
        }
        if let Some(c) = controlled.as_deref_mut() {
            let placement = Placement::new(c.ranks, experts, per)
                .map_err(|e| EvalError::Model(Box::new(e.into())))?;
            c.monitor.observe_forward(&plans, &placement)?;
        }
        progress.inc(1);
    }
    let mut r = finish(router, sums);
    if let Some(c) = controlled {
        r.policy = format!("{} [{}]", router.policy, c.spec);
        r.gamma = Some(c.gammas.iter().sum::<f64>() / c.gammas.len().max(1) as f64);
        r.controller = Some(c.spec.clone());
        // Each layer's mean over the forwards (the gammas come a layer at a time per forward).
        let layers = model.config().num_hidden_layers;
        if layers > 0 && c.gammas.len() % layers == 0 && !c.gammas.is_empty() {
            let forwards = (c.gammas.len() / layers) as f64;
            r.layer_gammas = (0..layers)
                .map(|l| c.gammas.iter().skip(l).step_by(layers).sum::<f64>() / forwards)
                .collect();
        }
    }
    Ok(r)
}

/// A controlled run's state: the controller, the load monitor it plans from, and the gammas it
/// chose (per layer and forward).
pub struct Controlled {
    pub spec: String,
    pub controller: Box<dyn CapacityController>,
    pub monitor: LoadMonitor,
    pub ranks: usize,
    pub gammas: Vec<f64>,
}

fn finish(router: &RouterConfig, s: Sums) -> EvalResult {
    let (correct, scored) = s
        .per_task
        .values()
        .fold((0, 0), |(c, n), &(a, b)| (c + a, n + b));
    let nll = s.nll / s.positions.max(1) as f64;
    let pct = |x: u64, of: u64| 100.0 * x as f64 / of.max(1) as f64;
    EvalResult {
        policy: router.policy.to_string(),
        controller: None,
        layer_gammas: Vec::new(),
        gamma: router.capacity_factor,
        accuracy: correct as f64 / scored.max(1) as f64,
        correct,
        scored,
        per_task: s
            .per_task
            .iter()
            .map(|(k, &(c, n))| (k.clone(), c as f64 / n.max(1) as f64))
            .collect(),
        per_task_counts: s
            .per_task
            .iter()
            .map(|(k, &(c, n))| (k.clone(), [c, n]))
            .collect(),
        answer_nll: nll,
        answer_ppl: nll.exp(),
        kl_vs_none: s.kl / s.kl_rows.max(1) as f64,
        load_max_over_mean: s.layers.iter().map(|l| ratio(&l.demand)).collect(),
        load_max_over_mean_per_forward: s
            .layers
            .iter()
            .map(|l| l.demand_ratio / l.forwards.max(1) as f64)
            .collect(),
        served_max_over_mean_per_forward: s
            .layers
            .iter()
            .map(|l| l.served_ratio / l.forwards.max(1) as f64)
            .collect(),
        dropped_pct: pct(s.dropped, s.slots),
        rerouted_pct: pct(s.rerouted, s.slots),
        gate_mass_kept: if s.topk_mass > 0.0 {
            s.served_mass / s.topk_mass
        } else {
            1.0
        },
        tokens_without_expert_pct: pct(s.no_expert, s.tokens),
    }
}
