//! Plan statistics, derived from the assignments alone.

use serde::Serialize;

/// What every plan reports (design.md §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanStats {
    /// Assignments served per expert.
    pub load: Vec<u64>,
    /// Largest entry of `load`.
    pub max_load: u64,
    /// Mean load per expert (`served / E`).
    pub mean_load: f64,
    /// Assignments served in all.
    pub served: u64,
    /// Token slots lost: `sum_t max(0, k - |served(t)|)`.
    pub dropped: u64,
    /// Served assignments outside the token's plain top-k.
    pub rerouted: u64,
    /// `sum p` over served assignments (f64, token order).
    pub served_mass: f64,
    /// `sum p` over the plain top-k (f64, token order).
    pub topk_mass: f64,
    /// `served_mass / topk_mass`; 1 for an empty batch.
    pub gate_mass_kept: f64,
}

impl PlanStats {
    /// `max_load / mean_load`: the straggler factor (1 = perfectly balanced;
    /// 0 for an empty batch).
    pub fn imbalance(&self) -> f64 {
        if self.mean_load > 0.0 {
            self.max_load as f64 / self.mean_load
        } else {
            0.0
        }
    }
}
