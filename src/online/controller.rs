//! Capacity controllers: each forward, before routing, give every MoE layer its capacity.

use super::cost::{rank_rows_bound, CostModel};
use super::{LoadMonitor, OnlineError};
use serde::Serialize;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

/// The model's MoE shape, as the controllers need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// MoE layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token (k).
    pub top_k: usize,
    /// EP ranks (divides `experts`).
    pub ranks: usize,
}

/// A forward's capacities, with what the controller predicted of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityPlan {
    /// Per layer: the per-expert capacity C.
    pub capacity: Vec<u64>,
    /// Per layer: the bound on the busiest rank's rows that C gives.
    pub rows_bound: Vec<u64>,
    /// Per layer: predicted dropped share of top-k slots at C (from the monitor's demand).
    pub predicted_dropped: Vec<f64>,
    /// Predicted total cost of the forward's MoE layers at the row bounds (an upper bound).
    pub cost: f64,
    /// The budget it was planned against, if any (same unit as `cost`).
    pub budget: Option<f64>,
}

/// What chooses a forward's per-layer capacities.
pub trait CapacityController {
    /// The capacities for a forward of `tokens` tokens, from what `monitor` has seen.
    fn plan(&mut self, tokens: usize, monitor: &LoadMonitor) -> Result<CapacityPlan, OnlineError>;
}

/// A controller as spelled on the command line: `fixed:GAMMA`, `budget:MSms`, `budget:RATIOx`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControllerSpec {
    /// Today's behaviour: every layer at `C = ceil(gamma T k / E)`.
    Fixed(f64),
    /// A budget for the forward's MoE layers in milliseconds (needs a calibrated cost model).
    BudgetMs(f64),
    /// A budget as a ratio of the balanced cost (every layer at gamma 1).
    BudgetRatio(f64),
}

impl FromStr for ControllerSpec {
    type Err = OnlineError;
    fn from_str(s: &str) -> Result<Self, OnlineError> {
        let bad = || OnlineError::Parse(s.to_string());
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(bad)
        };
        match s.split_once(':') {
            Some(("fixed", g)) => {
                let g = num(g)?;
                if !crate::routing::valid_capacity_factor(g) {
                    return Err(bad());
                }
                Ok(Self::Fixed(g))
            }
            Some(("budget", b)) => {
                if let Some(ms) = b.strip_suffix("ms") {
                    Ok(Self::BudgetMs(num(ms)?))
                } else if let Some(r) = b.strip_suffix('x') {
                    Ok(Self::BudgetRatio(num(r)?))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ControllerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(g) => write!(f, "fixed:{g}"),
            Self::BudgetMs(b) => write!(f, "budget:{b}ms"),
            Self::BudgetRatio(r) => write!(f, "budget:{r}x"),
        }
    }
}

impl ControllerSpec {
    /// The controller for a model of `shape`, costed by `cost` (one entry per layer).
    pub fn build(
        &self,
        shape: MoeShape,
        cost: CostModel,
    ) -> Result<Box<dyn CapacityController>, OnlineError> {
        self.build_for(
            shape,
            cost,
            crate::routing::Policy::Drop(crate::routing::DropRank::Score),
        )
    }

    /// [`ControllerSpec::build`] for routing under `policy`. Under a reroute policy a budget
    /// keeps every layer at or above the balanced capacity `ceil(T k / E)` where the budget
    /// affords it: below it `E C < T k` and slots are lost whatever the reroute does, which a
    /// drop-shaped prediction does not see.
    pub fn build_for(
        &self,
        shape: MoeShape,
        cost: CostModel,
        policy: crate::routing::Policy,
    ) -> Result<Box<dyn CapacityController>, OnlineError> {
        use crate::routing::Policy;
        let floor = matches!(policy, Policy::RerouteNextBest | Policy::RerouteOptimal);
        check_shape(shape, &cost)?;
        Ok(match *self {
            Self::Fixed(g) => Box::new(Fixed {
                gamma: g,
                shape,
                cost,
            }),
            Self::BudgetMs(ms) => {
                if cost.unit != "ms" {
                    return Err(OnlineError::BadValue {
                        what: "budget in ms with an uncalibrated (rows) cost model",
                        value: ms,
                        expected: "a budget ratio (budget:1.2x) or a calibrated cost model",
                    });
                }
                Box::new(Budget {
                    budget: BudgetKind::Absolute(ms),
                    shape,
                    cost,
                    floor,
                })
            }
            Self::BudgetRatio(r) => Box::new(Budget {
                budget: BudgetKind::Ratio(r),
                shape,
                cost,
                floor,
            }),
        })
    }
}

fn check_shape(shape: MoeShape, cost: &CostModel) -> Result<(), OnlineError> {
    if cost.layers.len() != shape.layers {
        return Err(OnlineError::Shape {
            what: "cost model layers",
            got: cost.layers.len(),
            expected: shape.layers,
        });
    }
    if shape.ranks == 0 || shape.experts == 0 || shape.experts % shape.ranks != 0 {
        return Err(OnlineError::Shape {
            what: "ranks (must divide the experts)",
            got: shape.ranks,
            expected: shape.experts,
        });
    }
    if shape.top_k == 0 || shape.top_k > shape.experts {
        return Err(OnlineError::Shape {
            what: "top-k (1..=experts)",
            got: shape.top_k,
            expected: shape.experts,
        });
    }
    cost.validate()
}

/// Predicted demand of the experts for `tokens` tokens, in decreasing order: the monitor's
/// demand profile, or uniform before it has seen the layer.
fn predicted_demand(monitor: &LoadMonitor, l: usize, shape: MoeShape, tokens: usize) -> Vec<f64> {
    let slots = (tokens * shape.top_k) as f64;
    match monitor.demand_profile(l) {
        Some(s) if s.len() == shape.experts => s.iter().map(|x| x * slots).collect(),
        _ => vec![slots / shape.experts as f64; shape.experts],
    }
}

/// Dropped top-k slots at capacity `c`, as a share of all slots: `sum_e max(0, d_e - c)`.
/// Convex and non-increasing in `c`.
fn dropped_share(demand: &[f64], c: u64, slots: f64) -> f64 {
    if slots <= 0.0 {
        return 0.0;
    }
    demand.iter().map(|&d| (d - c as f64).max(0.0)).sum::<f64>() / slots
}

fn finish(
    shape: MoeShape,
    cost: &CostModel,
    tokens: usize,
    capacity: Vec<u64>,
    demand: &[Vec<f64>],
    budget: Option<f64>,
) -> CapacityPlan {
    let epr = shape.experts / shape.ranks;
    let slots = (tokens * shape.top_k) as f64;
    let rows_bound: Vec<u64> = capacity
        .iter()
        .map(|&c| rank_rows_bound(c, epr, tokens, shape.top_k))
        .collect();
    CapacityPlan {
        cost: rows_bound
            .iter()
            .enumerate()
            .map(|(l, &r)| cost.cost(l, r))
            .sum(),
        predicted_dropped: capacity
            .iter()
            .zip(demand)
            .map(|(&c, d)| dropped_share(d, c, slots))
            .collect(),
        capacity,
        rows_bound,
        budget,
    }
}

struct Fixed {
    gamma: f64,
    shape: MoeShape,
    cost: CostModel,
}

impl CapacityController for Fixed {
    fn plan(&mut self, tokens: usize, monitor: &LoadMonitor) -> Result<CapacityPlan, OnlineError> {
        let c = crate::routing::capacity(self.gamma, tokens, self.shape.top_k, self.shape.experts)
            .map_err(|_| OnlineError::Parse(format!("fixed:{}", self.gamma)))?;
        let demand: Vec<Vec<f64>> = (0..self.shape.layers)
            .map(|l| predicted_demand(monitor, l, self.shape, tokens))
            .collect();
        Ok(finish(
            self.shape,
            &self.cost,
            tokens,
            vec![c; self.shape.layers],
            &demand,
            None,
        ))
    }
}

enum BudgetKind {
    Absolute(f64),
    Ratio(f64),
}

struct Budget {
    budget: BudgetKind,
    shape: MoeShape,
    cost: CostModel,
    /// Start every layer at the largest uniform capacity up to the balanced one that the budget
    /// affords (reroute policies), instead of at 1.
    floor: bool,
}

/// A heap entry: raising layer `l` from `c` to `c + 1` saves `gain` predicted dropped slots for
/// `extra` cost. Ordered by gain per cost, ties to the lower layer.
struct Step {
    ratio: f64,
    layer: usize,
}

impl PartialEq for Step {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Step {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.ratio
            .total_cmp(&o.ratio)
            .then_with(|| o.layer.cmp(&self.layer))
    }
}

impl CapacityController for Budget {
    /// Marginal-gain greedy: every layer starts at capacity 1; the step with the largest
    /// predicted saving of dropped slots per unit of cost is taken while it fits the budget.
    /// Dropped slots are convex and non-increasing in C and cost is linear in C until the
    /// token bound, so the greedy is exact when layers share a per-row cost (the `rows` model),
    /// and the usual ratio greedy otherwise. Cost is the row bound's, so the budget also holds
    /// for the busiest rank's actual rows.
    fn plan(&mut self, tokens: usize, monitor: &LoadMonitor) -> Result<CapacityPlan, OnlineError> {
        let s = self.shape;
        let epr = s.experts / s.ranks;
        let bound = |c: u64| rank_rows_bound(c, epr, tokens, s.top_k);
        let layer_cost = |l: usize, c: u64| self.cost.cost(l, bound(c));
        let demand: Vec<Vec<f64>> = (0..s.layers)
            .map(|l| predicted_demand(monitor, l, s, tokens))
            .collect();
        let balanced = crate::routing::capacity(1.0, tokens, s.top_k, s.experts)
            .unwrap_or(1)
            .max(1);
        let budget = match self.budget {
            BudgetKind::Absolute(b) => b,
            BudgetKind::Ratio(r) => r * (0..s.layers).map(|l| layer_cost(l, balanced)).sum::<f64>(),
        };
        let total = |c: u64| -> f64 { (0..s.layers).map(|l| layer_cost(l, c)).sum() };
        let min = total(1);
        if tokens > 0 && min > budget * (1.0 + 1e-12) {
            return Err(OnlineError::BudgetInfeasible { budget, min });
        }
        // Costs grow with C, so the largest affordable uniform start is found by bisection.
        let start = if self.floor {
            let (mut lo, mut hi) = (1u64, balanced);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if total(mid) <= budget {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            lo
        } else {
            1
        };
        let mut cap = vec![start; s.layers];
        let mut spent = total(start);
        // The most capacity any layer can use: its largest predicted demand (more saves nothing).
        let top: Vec<u64> = demand
            .iter()
            .map(|d| d.iter().copied().fold(0.0, f64::max).ceil() as u64)
            .collect();
        // What a dropped slot of each layer is worth in gate mass (1 until drops were seen). It
        // was measured at the capacity last routed: drop:score drops the smallest p first, so a
        // slot cut below that capacity carries more, taken as an average slot's (1). Gains then
        // still fall with C, and no layer is starved on the strength of its cheapest slots.
        let worth: Vec<f64> = (0..s.layers)
            .map(|l| monitor.mass_per_dropped_slot(l).unwrap_or(1.0))
            .collect();
        let balanced_slots = (tokens * s.top_k) as f64 / s.experts as f64;
        let worth_at = |l: usize, c: u64| match monitor.mass_seen_at(l) {
            Some(seen) if (c as f64) < seen * balanced_slots => worth[l].max(1.0),
            _ => worth[l],
        };
        let step = |l: usize, c: u64| -> Option<(f64, f64)> {
            if c >= top[l] {
                return None;
            }
            let slots = (tokens * s.top_k) as f64;
            let gain = worth_at(l, c)
                * (dropped_share(&demand[l], c, slots) - dropped_share(&demand[l], c + 1, slots));
            let extra = layer_cost(l, c + 1) - layer_cost(l, c);
            (gain > 0.0).then_some((gain, extra))
        };
        let ratio = |(g, x): (f64, f64)| if x > 0.0 { g / x } else { f64::INFINITY };
        let mut heap: BinaryHeap<Step> = (0..s.layers)
            .filter_map(|l| {
                step(l, start).map(|gx| Step {
                    ratio: ratio(gx),
                    layer: l,
                })
            })
            .collect();
        while let Some(Step { layer: l, .. }) = heap.pop() {
            let Some((_, extra)) = step(l, cap[l]) else {
                continue;
            };
            if spent + extra > budget {
                continue; // this layer's next step does not fit; cheaper ones may
            }
            spent += extra;
            cap[l] += 1;
            if let Some(gx) = step(l, cap[l]) {
                heap.push(Step {
                    ratio: ratio(gx),
                    layer: l,
                });
            }
        }
        Ok(finish(s, &self.cost, tokens, cap, &demand, Some(budget)))
    }
}
