//! One forward pass of a step: the router its controller picks, the pass itself, timed, and
//! what its plans did.

use super::engine::ServeOptions;
use super::ep::EpForward;
use super::error::ServeError;
use super::timing::{
    forward_cost, kept_seconds, measured_ep_cost, LayerCostInput, MoeTimer, StepClock,
};
use crate::backend::Backend;
use crate::ep::{a2a_traffic, LatencyModel};
use crate::model::{
    greedy_rows, ForwardOptions, LogitsMode, Model, ModelError, MoeRunner, Sequence,
};
use crate::online::{layer_routers, CapacityController, LayerObservation, LoadMonitor, MoeShape};
use crate::routing::{Placement, Policy, RouterConfig};
use serde::Serialize;
use std::time::Instant;

/// Sums over a run's forward passes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunTotals {
    /// Forward passes run.
    pub forwards: usize,
    /// Passes routed under the capacity policy.
    pub capacity_forwards: usize,
    /// Sum over those passes of the effective gamma `C E / (T k)` of the uniform capacity C
    /// (the smallest of the controller's per-layer capacities).
    pub gamma_sum: f64,
    /// Top-k token slots routed, all layers.
    pub slots: u64,
    /// Of those, lost to capacity (net of rerouting).
    pub dropped: u64,
    /// Top-k slots of decode tokens, all layers.
    pub decode_slots: u64,
    /// Of those, lost to capacity.
    pub decode_dropped: u64,
    /// Gate mass served, all layers.
    pub served_mass: f64,
    /// Gate mass of the plain top-k, all layers.
    pub topk_mass: f64,
    /// Measured wall time of the passes, seconds.
    pub wall_s: f64,
    /// Measured MoE time within them, seconds: all experts in this process, or, on EP ranks
    /// ([`StepClock::MeasuredEp`]), the slowest rank's MoE layers, exchanges and waits included.
    pub moe_s: f64,
    /// EP MoE time, seconds: modelled (busiest rank plus all-to-alls), or, on EP ranks, the
    /// measured `moe_s`.
    pub ep_moe_s: f64,
    /// Modelled all-to-all time, seconds (0 on EP ranks: the exchanges are measured).
    pub a2a_s: f64,
    /// Virtual-clock time of the passes, seconds.
    pub clock_s: f64,
    /// Busy seconds per EP rank: modelled, or, on EP ranks, each rank's measured expert FFN time.
    pub rank_busy_s: Vec<f64>,
    /// Measured seconds per EP rank inside the dispatch and combine all-to-alls (its waits for
    /// the slowest peer); empty unless measured on EP ranks.
    pub rank_wait_s: Vec<f64>,
    /// Whether the passes ran on EP ranks ([`StepClock::MeasuredEp`]).
    pub measured_ep: bool,
}

/// What one pass gave the scheduler.
pub(crate) struct PassResult {
    /// Its duration on the virtual clock.
    pub duration_s: f64,
    /// Busiest rank's rows over the mean, averaged over layers.
    pub busiest_over_mean: f64,
    /// Each sequence's greedy next token.
    pub next: Vec<u32>,
}

/// Runs a run's passes and keeps its totals.
pub(crate) struct Pass<'m, B: Backend> {
    model: &'m Model<B>,
    policy: Policy,
    shape: MoeShape,
    clock: StepClock,
    a2a: Option<LatencyModel>,
    ep: Option<&'m dyn EpForward<B>>,
    pub totals: RunTotals,
}

impl<'m, B: Backend> Pass<'m, B> {
    /// Fails unless the clock and `ep` go together: [`StepClock::MeasuredEp`] with EP ranks
    /// (as many as `shape.ranks`), the others without.
    pub fn new(
        model: &'m Model<B>,
        opts: &ServeOptions,
        shape: MoeShape,
        ep: Option<&'m dyn EpForward<B>>,
    ) -> Result<Self, ServeError> {
        let a2a = match opts.clock {
            StepClock::Measured { a2a } => a2a,
            StepClock::MeasuredEp | StepClock::Synthetic { .. } => None,
        };
        let measured_ep = opts.clock == StepClock::MeasuredEp;
        if measured_ep != ep.is_some() || ep.is_some_and(|e| e.ranks() != shape.ranks) {
            return Err(ServeError::OutOfRange {
                what: "clock",
                value: format!("{:?}", opts.clock),
                expected: format!(
                    "MeasuredEp exactly when the run has EP ranks ({} here)",
                    ep.map_or(0, |e| e.ranks())
                ),
            });
        }
        Ok(Self {
            model,
            policy: opts.policy,
            shape,
            clock: opts.clock,
            a2a,
            ep,
            totals: RunTotals {
                rank_busy_s: vec![0.0; shape.ranks],
                rank_wait_s: if measured_ep {
                    vec![0.0; shape.ranks]
                } else {
                    Vec::new()
                },
                measured_ep,
                ..RunTotals::default()
            },
        })
    }

    /// The pass's routers, one per MoE layer (empty: `none` for every layer).
    fn routers(
        &mut self,
        tokens: usize,
        ctl: Option<&mut Box<dyn CapacityController>>,
        monitor: &LoadMonitor,
    ) -> Result<(RouterConfig, Vec<RouterConfig>), ServeError> {
        let s = self.shape;
        let none = RouterConfig::new(s.top_k, Policy::None).with_ranks(s.ranks);
        let Some(ctl) = ctl else {
            return Ok((none, Vec::new()));
        };
        // Each layer gets the capacity the controller planned for it.
        let plan = ctl.plan(tokens, monitor)?;
        let base = RouterConfig::new(s.top_k, self.policy).with_ranks(s.ranks);
        let routers = layer_routers(&plan.capacity, &base, tokens, s.experts)?;
        let gammas: f64 = routers.iter().filter_map(|r| r.capacity_factor).sum();
        self.totals.capacity_forwards += 1;
        self.totals.gamma_sum += gammas / routers.len().max(1) as f64;
        let first = routers.first().cloned().unwrap_or(none);
        Ok((first, routers))
    }

    /// One pass over `seqs` fed `toks`; `is_decode[j]` marks decode sequences (for the
    /// decode drop rate); `ctl` sets capacity (none: routed under `none`).
    pub fn run(
        &mut self,
        seqs: &mut [&mut Sequence<B>],
        toks: &[&[u32]],
        is_decode: &[bool],
        ctl: Option<&mut Box<dyn CapacityController>>,
        monitor: &mut LoadMonitor,
    ) -> Result<PassResult, ServeError> {
        let s = self.shape;
        let tokens: usize = toks.iter().map(|t| t.len()).sum();
        let (router, layers) = self.routers(tokens, ctl, monitor)?;
        let fo = ForwardOptions::new(router)
            .with_logits(LogitsMode::Last)
            .with_layer_routers(layers);
        let runner: &dyn MoeRunner<B> = match self.ep {
            Some(ep) => ep.runner(),
            None => &MoeTimer,
        };
        let t0 = Instant::now();
        let out = self.model.forward_with(seqs, toks, &fo, Some(runner))?;
        let measured = t0.elapsed().as_secs_f64();
        let ranks = match self.ep {
            Some(ep) => Some(ep.measure(measured)?),
            None => None,
        };
        let next = greedy_rows(&out)?;
        let placement = Placement::new(s.ranks, s.experts, tokens)?;
        let wall = match self.clock {
            StepClock::Measured { .. } | StepClock::MeasuredEp => measured,
            StepClock::Synthetic {
                per_forward_s,
                per_token_s,
            } => per_forward_s + per_token_s * tokens as f64,
        };
        let synthetic_moe = wall / (2 * s.layers.max(1)) as f64;
        let t = &mut self.totals;
        let mut layers = Vec::with_capacity(out.layers.len());
        let mut ratio_sum = 0.0;
        for (l, rec) in out.layers.iter().enumerate() {
            let plan = rec.plan.as_ref().ok_or(ModelError::NoPlan { layer: l })?;
            let obs = LayerObservation::from_plan(plan, &placement);
            let st = plan.stats();
            t.slots += (plan.tokens() * plan.top_k()) as u64;
            t.dropped += st.dropped;
            t.served_mass += st.served_mass;
            t.topk_mass += st.topk_mass;
            let off = plan.offsets();
            for (j, span) in out.spans.iter().enumerate() {
                if is_decode.get(j).copied().unwrap_or(false) {
                    for tk in span.clone() {
                        let served = match (off.get(tk), off.get(tk + 1)) {
                            (Some(&a), Some(&b)) => u64::from(b.saturating_sub(a)),
                            _ => 0,
                        };
                        t.decode_slots += s.top_k as u64;
                        t.decode_dropped += (s.top_k as u64).saturating_sub(served);
                    }
                }
            }
            let total: u64 = obs.rank_rows.iter().sum();
            let max = obs.rank_rows.iter().copied().max().unwrap_or(0);
            ratio_sum += if total > 0 {
                max as f64 * s.ranks as f64 / total as f64
            } else {
                1.0
            };
            layers.push(LayerCostInput {
                moe_s: match self.clock {
                    StepClock::Measured { .. } | StepClock::MeasuredEp => {
                        kept_seconds(rec.replay.as_ref())
                    }
                    StepClock::Synthetic { .. } => synthetic_moe,
                },
                rank_rows: obs.rank_rows.clone(),
                a2a_s: self
                    .a2a
                    .map_or(0.0, |m| m.a2a_seconds(&a2a_traffic(plan, &placement))),
            });
            monitor.observe(l, obs)?;
        }
        let c = match &ranks {
            Some(r) => measured_ep_cost(r),
            None => forward_cost(wall, &layers, s.ranks),
        };
        t.forwards += 1;
        t.wall_s += c.wall_s;
        t.moe_s += c.moe_s;
        t.ep_moe_s += c.ep_moe_s;
        t.a2a_s += c.a2a_s;
        t.clock_s += c.duration_s;
        for (a, b) in t.rank_busy_s.iter_mut().zip(&c.rank_busy_s) {
            *a += b;
        }
        for (a, b) in t.rank_wait_s.iter_mut().zip(&c.rank_wait_s) {
            *a += b;
        }
        Ok(PassResult {
            duration_s: c.duration_s,
            busiest_over_mean: ratio_sum / layers.len().max(1) as f64,
            next,
        })
    }
}
