//! The online half of capacity-aware inference (design.md §10): a live load monitor, and
//! controllers that plan each layer's capacity from predicted load under a latency budget.
//!
//! - [`LoadMonitor`] keeps a bounded window per layer of each forward's plan statistics
//!   ([`LayerObservation`]): demand and served load per expert, drops, reroutes, gate mass kept,
//!   rows per rank; it computes balancedness, imbalance and an EMA of each expert's demand share.
//!   [`prometheus`] and [`json_lines`] render a snapshot.
//! - A [`CapacityController`] runs before routing and gives every layer its capacity:
//!   `fixed:GAMMA` (one gamma for all, today's behaviour) or `budget:B` (the per-layer
//!   capacities that minimise predicted dropped slots while the forward's predicted cost, from a
//!   per-layer [`CostModel`] over the busiest rank's rows, stays within B).
//!
//! Capacity caps every rank's rows, so a budget holds by construction; prediction only decides
//! how well it is spent. Nothing here does I/O.
//!
//! ```
//! use capmoe::online::{ControllerSpec, CostModel, LoadMonitor, MoeShape};
//! let shape = MoeShape { layers: 2, experts: 8, top_k: 2, ranks: 4 };
//! let monitor = LoadMonitor::new(16, 0.25).unwrap();
//! let spec: ControllerSpec = "budget:1.2x".parse().unwrap();
//! let mut ctl = spec.build(shape, CostModel::rows(2)).unwrap();
//! let plan = ctl.plan(1024, &monitor).unwrap();
//! assert!(plan.cost <= plan.budget.unwrap());
//! assert_eq!(plan.capacity.len(), 2);
//! ```

mod controller;
mod cost;
mod expose;
mod monitor;
#[cfg(test)]
mod tests;

pub use controller::{CapacityController, CapacityPlan, ControllerSpec, MoeShape};
pub use cost::{
    fit_layer_cost, gamma_for_capacity, layer_routers, rank_rows_bound, CostModel, LayerCost,
};
pub use expose::{json_lines, prometheus};
pub use monitor::{LayerObservation, LayerSnapshot, LoadMonitor, OnlineError};
