//! The routing contract (design.md §3): gate -> capacity -> dispatch -> combine.
//!
//! This module is the CPU oracle: it defines what every backend must compute,
//! bit for bit. It knows no model, no GPU and no CLI.
//!
//! ```
//! use capmoe::routing::{route, Logits, Policy, RouterConfig};
//! // 4 tokens, 2 experts, everyone prefers expert 0.
//! let logits = [3.0f32, 0.0, 2.0, 0.0, 1.0, 0.0, 4.0, 0.0];
//! let cfg = RouterConfig::new(1, "drop:score".parse().unwrap()).with_capacity_factor(1.0);
//! let plan = route(&Logits::new(&logits, 4, 2).unwrap(), &cfg).unwrap();
//! assert_eq!(plan.capacity().unwrap().per_expert, 2); // ceil(1.0 * 4 * 1 / 2)
//! assert_eq!(plan.stats().load, vec![2, 0]);          // tokens 3 and 0 keep expert 0
//! assert_eq!(plan.stats().dropped, 2);
//! ```

pub(crate) mod capacity;
mod combine;
mod dispatch;
mod drop;
mod error;
mod expand;
mod gate;
mod logits;
pub mod numerics;
mod plan;
mod policy;
mod reroute;
#[cfg(test)]
pub(crate) use reroute::tests as reroute_tests;
mod served;
mod stats;

pub use capacity::{
    capacity, valid_capacity_factor, Bins, CapacityScope, Placement, MAX_CAPACITY_FACTOR,
};
pub use combine::combine;
pub use dispatch::{DispatchLayout, DispatchParts, GemmProblem, GroupedGemmArgs, Overflow, PAD};
pub use drop::random_key;
pub use gate::{softmax_row, Gate};
pub use logits::Logits;
pub use plan::{Assignment, CapacityInfo, PlanParts, RoutingPlan};
pub use policy::{DropRank, Policy, POLICY_HELP};
pub use stats::{mass_fx, PlanStats, PlanTotals};

pub use error::{RoutingError, MAX_EXPERTS};
use served::Served;

/// How to route a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Experts per token, `k` (1..=E).
    pub top_k: usize,
    /// What to do with assignments over capacity.
    pub policy: Policy,
    /// gamma; required by every policy but `none`, refused by `none`.
    pub capacity_factor: Option<f64>,
    /// EP ranks (divides E). Used by `expand:local` and the rank scope.
    pub ranks: usize,
    /// Whether the bound is per expert or per EP rank.
    pub scope: CapacityScope,
    /// Rescale each token's served weights to sum 1.
    pub renormalize: bool,
}

impl RouterConfig {
    /// `top_k` routing under `policy`, one rank, expert scope, no renormalisation.
    pub fn new(top_k: usize, policy: Policy) -> Self {
        Self {
            top_k,
            policy,
            capacity_factor: None,
            ranks: 1,
            scope: CapacityScope::Expert,
            renormalize: false,
        }
    }
    /// Sets the capacity factor gamma (finite, > 0).
    pub fn with_capacity_factor(mut self, gamma: f64) -> Self {
        self.capacity_factor = Some(gamma);
        self
    }
    /// Sets the number of EP ranks (must divide E).
    pub fn with_ranks(mut self, ranks: usize) -> Self {
        self.ranks = ranks;
        self
    }
    /// Sets the capacity scope.
    pub fn with_scope(mut self, scope: CapacityScope) -> Self {
        self.scope = scope;
        self
    }
    /// Sets whether served weights are rescaled to sum 1 per token.
    pub fn with_renormalize(mut self, on: bool) -> Self {
        self.renormalize = on;
        self
    }
}

/// Routes a batch: gating, then the policy, then weights and statistics.
pub fn route(logits: &Logits<'_>, cfg: &RouterConfig) -> Result<RoutingPlan, RoutingError> {
    // Cheap configuration errors first, before any gating work.
    check_config(logits.tokens(), logits.experts(), cfg)?;
    let gate = Gate::new(logits, cfg.top_k)?;
    route_gate(&gate, cfg)
}

fn check_config(
    tokens: usize,
    experts: usize,
    cfg: &RouterConfig,
) -> Result<Placement, RoutingError> {
    if cfg.top_k == 0 {
        return Err(RoutingError::ZeroTopK);
    }
    if cfg.top_k > experts {
        return Err(RoutingError::TopKExceedsExperts {
            k: cfg.top_k,
            experts,
        });
    }
    match (cfg.policy.has_capacity(), cfg.capacity_factor) {
        (true, None) => return Err(RoutingError::MissingCapacityFactor(cfg.policy.to_string())),
        (false, Some(g)) => return Err(RoutingError::CapacityFactorWithoutCapacity(g)),
        (true, Some(g)) => capacity::check_gamma(g)?,
        (false, None) => {}
    }
    Placement::new(cfg.ranks, experts, tokens)
}

/// Checks `cfg` against a `[tokens, experts]` batch and returns the capacity
/// it implies (`None` for `none`). Backends call this before routing.
pub fn plan_capacity(
    tokens: usize,
    experts: usize,
    cfg: &RouterConfig,
) -> Result<Option<CapacityInfo>, RoutingError> {
    check_config(tokens, experts, cfg)?;
    capacity_info(tokens, experts, cfg)
}

/// The capacity of an already checked configuration.
fn capacity_info(
    tokens: usize,
    experts: usize,
    cfg: &RouterConfig,
) -> Result<Option<CapacityInfo>, RoutingError> {
    let (Some(gamma), true) = (cfg.capacity_factor, cfg.policy.has_capacity()) else {
        return Ok(None);
    };
    Ok(Some(CapacityInfo {
        per_expert: capacity(gamma, tokens, cfg.top_k, experts)?,
        scope: cfg.scope,
        ranks: cfg.ranks,
    }))
}

/// Routes from a precomputed [`Gate`] (so a model can reuse its gating).
pub fn route_gate(gate: &Gate, cfg: &RouterConfig) -> Result<RoutingPlan, RoutingError> {
    let placement = check_config(gate.tokens(), gate.experts(), cfg)?;
    if cfg.top_k != gate.top_k() {
        return Err(RoutingError::ShapeMismatch {
            what: "gate top-k",
            len: gate.top_k(),
            expected: cfg.top_k,
        });
    }
    let Some(info) = capacity_info(gate.tokens(), gate.experts(), cfg)? else {
        return Ok(RoutingPlan::build(
            gate,
            Served::topk(gate),
            cfg.policy,
            None,
            cfg.renormalize,
        ));
    };
    let bins = Bins::new(cfg.scope, &placement, info.per_expert);
    let served = match cfg.policy {
        Policy::None => Served::topk(gate),
        Policy::Drop(rank) => drop::drop(gate, &bins, rank),
        Policy::RerouteNextBest => reroute::next_best::next_best(gate, &bins),
        Policy::RerouteOptimal => reroute::optimal::optimal(gate, &bins)?,
        Policy::ExpandLocal => expand::expand_local(gate, &bins, &placement),
    };
    Ok(RoutingPlan::build(
        gate,
        served,
        cfg.policy,
        Some(info),
        cfg.renormalize,
    ))
}
