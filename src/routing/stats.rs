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

/// A plan's statistics in the form a device sums them (`capmoe_plan_stats`,
/// its GPU twin): integer counts, and the gate masses as sums of each `p`
/// truncated to 2^-32 fixed point ([`mass_fx`]), so that any order of
/// summation gives the same totals, bit for bit. `dropped` and `rerouted`
/// are [`PlanStats`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PlanTotals {
    /// Assignments served per expert.
    pub load: Vec<u64>,
    /// Token slots lost: `sum_t max(0, k - |served(t)|)`.
    pub dropped: u64,
    /// Served assignments outside the token's plain top-k.
    pub rerouted: u64,
    /// `sum mass_fx(p)` over served assignments.
    pub served_mass_fx: u64,
    /// `sum mass_fx(p)` over the plain top-k.
    pub topk_mass_fx: u64,
}

impl PlanTotals {
    /// Assignments served in all.
    pub fn served(&self) -> u64 {
        self.load.iter().sum()
    }

    /// `served_mass_fx / topk_mass_fx`; 1 when the top-k mass is 0 (an
    /// empty batch), as [`PlanStats::gate_mass_kept`].
    pub fn gate_mass_kept(&self) -> f64 {
        if self.topk_mass_fx > 0 {
            self.served_mass_fx as f64 / self.topk_mass_fx as f64
        } else {
            1.0
        }
    }
}

/// `p` in 2^-32 fixed point, truncated: `trunc(p * 2^32)`. Exact in f64 for
/// any f32 `p`, so host and device get the same integer; a probability in
/// `[0, 1]` gives at most 2^32, and `T * k` of them stay far below 2^64.
/// Negative and NaN inputs give 0 (they are not probabilities).
///
/// ```
/// use capmoe::routing::mass_fx;
/// assert_eq!(mass_fx(1.0), 1 << 32);
/// assert_eq!(mass_fx(0.5), 1 << 31);
/// assert_eq!(mass_fx(2.0f32.powi(-33)), 0); // below the last bit
/// ```
pub fn mass_fx(p: f32) -> u64 {
    (f64::from(p) * 4_294_967_296.0) as u64
}
