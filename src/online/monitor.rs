//! The live load monitor: a bounded window per layer of what each forward's plans did.

use crate::routing::{Placement, RoutingPlan};
use serde::Serialize;
use std::collections::VecDeque;
use thiserror::Error;

/// Errors from the monitor and the controllers.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum OnlineError {
    /// A window of 0 forwards keeps nothing to predict from.
    #[error("monitor window is 0 forwards; expected at least 1")]
    ZeroWindow,
    /// The EMA weight is not in (0, 1].
    #[error("EMA weight {0} is not valid; expected a number in (0, 1]")]
    BadEma(f64),
    /// An observation's shape disagrees with the layer's earlier ones or the model.
    #[error("{what}: got {got}, expected {expected}")]
    Shape {
        /// What disagrees.
        what: &'static str,
        /// What was given.
        got: usize,
        /// What was expected.
        expected: usize,
    },
    /// A number that must be finite and positive is not.
    #[error("{what} is {value}; expected {expected}")]
    BadValue {
        /// Which value.
        what: &'static str,
        /// The value.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// The budget cannot be met even at the smallest capacity.
    #[error("budget {budget} is below the smallest feasible cost {min} (every layer at capacity 1); expected at least that")]
    BudgetInfeasible {
        /// The budget asked for, in the cost model's unit.
        budget: f64,
        /// The cost with every layer at its smallest capacity.
        min: f64,
    },
    /// A controller spelling that does not parse.
    #[error("controller `{0}` is not valid; expected fixed:GAMMA, budget:MSms or budget:RATIOx (e.g. budget:1.2x)")]
    Parse(String),
}

/// What one MoE layer's plan did in one forward.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerObservation {
    /// Tokens routed.
    pub tokens: usize,
    /// Experts per token (k).
    pub top_k: usize,
    /// Per expert: top-k assignments asked of it (before capacity).
    pub demand: Vec<u64>,
    /// Per expert: assignments served.
    pub served: Vec<u64>,
    /// Token slots lost (net of rerouting).
    pub dropped: u64,
    /// Served assignments outside the token's top-k.
    pub rerouted: u64,
    /// Served gate mass over plain top-k gate mass.
    pub gate_mass_kept: f64,
    /// Per EP rank: rows its experts served.
    pub rank_rows: Vec<u64>,
    /// The per-expert capacity the forward was routed at (`None`: no capacity).
    pub capacity: Option<u64>,
}

impl LayerObservation {
    /// Reads a plan: demand from each token's plain top-k, the rest from its statistics.
    pub fn from_plan(plan: &RoutingPlan, placement: &Placement) -> Self {
        let e = plan.experts();
        let mut demand = vec![0u64; e];
        for t in 0..plan.tokens() {
            for &x in plan.topk(t) {
                demand[x as usize] += 1;
            }
        }
        let s = plan.stats();
        let rank_rows = (0..placement.ranks())
            .map(|r| placement.expert_group(r).map(|x| s.load[x]).sum())
            .collect();
        Self {
            tokens: plan.tokens(),
            top_k: plan.top_k(),
            demand,
            served: s.load.clone(),
            dropped: s.dropped,
            rerouted: s.rerouted,
            gate_mass_kept: s.gate_mass_kept,
            rank_rows,
            capacity: plan.capacity().map(|c| c.per_expert),
        }
    }
}

/// One layer's window statistics ([`LoadMonitor::snapshot`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSnapshot {
    /// Layer index.
    pub layer: usize,
    /// Forwards in the window now.
    pub forwards: usize,
    /// Per expert: mean demand per forward over the window.
    pub mean_demand: Vec<f64>,
    /// Per expert: mean served load per forward over the window.
    pub mean_served: Vec<f64>,
    /// Per expert: EMA of its share of the layer's demand (sums to 1 once anything was seen).
    pub demand_share_ema: Vec<f64>,
    /// EMA of the demand shares sorted in decreasing order ([`LoadMonitor::demand_profile`]).
    pub demand_profile_ema: Vec<f64>,
    /// Mean over max of the window's mean served load (1 = perfectly balanced; vLLM's
    /// balancedness). 1 when nothing was served.
    pub balancedness: f64,
    /// Max over mean of the window's mean demand, minus 1 (0 = balanced demand).
    pub imbalance: f64,
    /// Dropped slots over the window.
    pub dropped: u64,
    /// Rerouted assignments over the window.
    pub rerouted: u64,
    /// Mean gate mass kept per forward.
    pub gate_mass_kept: f64,
    /// Per rank: mean rows per forward.
    pub mean_rank_rows: Vec<f64>,
}

#[derive(Debug, Default)]
struct LayerWindow {
    obs: VecDeque<LayerObservation>,
    ema: Vec<f64>,
    profile: Vec<f64>,
    mass_per_slot: Option<f64>,
    /// The capacity of the forward that measured `mass_per_slot`, in balanced units
    /// (`C E / (T k)`).
    seen_ratio: Option<f64>,
}

/// A bounded ring window per layer of [`LayerObservation`]s, with an EMA of each expert's
/// demand share. Memory is `layers x window` observations, whatever the run's length. No I/O:
/// [`crate::online::prometheus`] and [`crate::online::json_lines`] render a snapshot.
#[derive(Debug)]
pub struct LoadMonitor {
    window: usize,
    alpha: f64,
    layers: Vec<LayerWindow>,
}

impl LoadMonitor {
    /// A monitor keeping the last `window` forwards per layer; `ema_weight` (in (0, 1]) is the
    /// weight of the newest forward in the demand-share EMA.
    pub fn new(window: usize, ema_weight: f64) -> Result<Self, OnlineError> {
        if window == 0 {
            return Err(OnlineError::ZeroWindow);
        }
        if !(ema_weight > 0.0 && ema_weight <= 1.0) {
            return Err(OnlineError::BadEma(ema_weight));
        }
        Ok(Self {
            window,
            alpha: ema_weight,
            layers: Vec::new(),
        })
    }

    /// Forwards kept per layer.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Layers seen so far.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Records layer `layer`'s plan of one forward. Every observation of a layer has the same
    /// expert and rank counts.
    pub fn observe(&mut self, layer: usize, o: LayerObservation) -> Result<(), OnlineError> {
        if o.served.len() != o.demand.len() {
            return Err(OnlineError::Shape {
                what: "served loads",
                got: o.served.len(),
                expected: o.demand.len(),
            });
        }
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, LayerWindow::default);
        }
        let w = &mut self.layers[layer];
        if let Some(first) = w.obs.front() {
            for (what, got, expected) in [
                ("experts", o.demand.len(), first.demand.len()),
                ("ranks", o.rank_rows.len(), first.rank_rows.len()),
            ] {
                if got != expected {
                    return Err(OnlineError::Shape {
                        what,
                        got,
                        expected,
                    });
                }
            }
        }
        let total: u64 = o.demand.iter().sum();
        if total > 0 {
            let share: Vec<f64> = o.demand.iter().map(|&d| d as f64 / total as f64).collect();
            let mut sorted = share.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            ema(&mut w.ema, &share, self.alpha);
            ema(&mut w.profile, &sorted, self.alpha);
        }
        // Gate mass a dropped slot carries, relative to an average top-k slot: drop:score drops
        // the smallest p first, so a layer's slots are not all worth the same.
        let slots = (o.tokens as f64) * (o.top_k as f64);
        if o.dropped > 0 && slots > 0.0 && o.gate_mass_kept.is_finite() {
            let r = (1.0 - o.gate_mass_kept).max(0.0) / (o.dropped as f64 / slots);
            w.mass_per_slot = Some(match w.mass_per_slot {
                None => r,
                Some(m) => m + self.alpha * (r - m),
            });
            w.seen_ratio = o.capacity.map(|c| c as f64 * o.demand.len() as f64 / slots);
        }
        if w.obs.len() == self.window {
            w.obs.pop_front();
        }
        w.obs.push_back(o);
        Ok(())
    }

    /// Records every layer of one forward, layer `i` from `plans[i]`.
    pub fn observe_forward(
        &mut self,
        plans: &[RoutingPlan],
        placement: &Placement,
    ) -> Result<(), OnlineError> {
        for (l, p) in plans.iter().enumerate() {
            self.observe(l, LayerObservation::from_plan(p, placement))?;
        }
        Ok(())
    }

    /// Layer `layer`'s EMA demand shares, if it has seen any demand.
    pub fn demand_share(&self, layer: usize) -> Option<&[f64]> {
        self.layers
            .get(layer)
            .map(|w| w.ema.as_slice())
            .filter(|s| !s.is_empty())
    }

    /// Layer `layer`'s EMA of its demand profile: the shares sorted in decreasing order, so the
    /// hottest expert's share first whichever expert it is. Capacity needs only this profile
    /// (how much the busiest experts ask), and it does not blur when the hot experts move.
    pub fn demand_profile(&self, layer: usize) -> Option<&[f64]> {
        self.layers
            .get(layer)
            .map(|w| w.profile.as_slice())
            .filter(|s| !s.is_empty())
    }

    /// Layer `layer`'s EMA of the gate mass a dropped slot carries, relative to an average
    /// top-k slot (`(1 - gate_mass_kept) / dropped share`); `None` before any drop was seen.
    pub fn mass_per_dropped_slot(&self, layer: usize) -> Option<f64> {
        self.layers.get(layer).and_then(|w| w.mass_per_slot)
    }

    /// The capacity (in balanced units, `C E / (T k)`) at which layer `layer`'s
    /// [`LoadMonitor::mass_per_dropped_slot`] was last measured; `None` before any drop.
    pub fn mass_seen_at(&self, layer: usize) -> Option<f64> {
        self.layers.get(layer).and_then(|w| w.seen_ratio)
    }

    /// Every layer's window statistics.
    pub fn snapshot(&self) -> Vec<LayerSnapshot> {
        self.layers
            .iter()
            .enumerate()
            .map(|(layer, w)| window_stats(layer, w))
            .collect()
    }
}

fn ema(m: &mut Vec<f64>, x: &[f64], alpha: f64) {
    if m.is_empty() {
        *m = x.to_vec();
    } else {
        for (m, v) in m.iter_mut().zip(x) {
            *m += alpha * (v - *m);
        }
    }
}

fn mean_of(rows: impl Iterator<Item = Vec<u64>>, n: usize, width: usize) -> Vec<f64> {
    let mut m = vec![0.0; width];
    for r in rows {
        for (a, v) in m.iter_mut().zip(r) {
            *a += v as f64;
        }
    }
    m.iter().map(|v| v / n.max(1) as f64).collect()
}

fn window_stats(layer: usize, w: &LayerWindow) -> LayerSnapshot {
    let n = w.obs.len();
    let experts = w.obs.front().map_or(0, |o| o.demand.len());
    let ranks = w.obs.front().map_or(0, |o| o.rank_rows.len());
    let mean_demand = mean_of(w.obs.iter().map(|o| o.demand.clone()), n, experts);
    let mean_served = mean_of(w.obs.iter().map(|o| o.served.clone()), n, experts);
    let mean_rank_rows = mean_of(w.obs.iter().map(|o| o.rank_rows.clone()), n, ranks);
    let ratio = |v: &[f64]| {
        let max = v.iter().copied().fold(0.0, f64::max);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (max, mean)
    };
    let (smax, smean) = ratio(&mean_served);
    let (dmax, dmean) = ratio(&mean_demand);
    LayerSnapshot {
        layer,
        forwards: n,
        balancedness: if smax > 0.0 { smean / smax } else { 1.0 },
        imbalance: if dmean > 0.0 { dmax / dmean - 1.0 } else { 0.0 },
        dropped: w.obs.iter().map(|o| o.dropped).sum(),
        rerouted: w.obs.iter().map(|o| o.rerouted).sum(),
        gate_mass_kept: if n == 0 {
            1.0
        } else {
            w.obs.iter().map(|o| o.gate_mass_kept).sum::<f64>() / n as f64
        },
        demand_share_ema: w.ema.clone(),
        demand_profile_ema: w.profile.clone(),
        mean_demand,
        mean_served,
        mean_rank_rows,
    }
}
