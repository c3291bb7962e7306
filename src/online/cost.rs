//! The per-layer cost model: a layer's EP time from its busiest rank's rows.

use super::OnlineError;
use serde::{Deserialize, Serialize};

/// `t(rows) = fixed + per_row * rows` for one MoE layer; the all-to-all's per-row time is part of
/// `per_row` (its rows are the same rows).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Time of the layer at zero rows (launches, gating, the collectives' latency).
    pub fixed: f64,
    /// Time per row of the busiest rank (expert FFN plus its share of the all-to-all).
    pub per_row: f64,
}

/// One [`LayerCost`] per MoE layer, in `unit` (`rows` when uncalibrated, else `ms`), as
/// `capmoe calibrate` fits it and stores it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// `rows` or `ms`.
    pub unit: String,
    /// One per MoE layer.
    pub layers: Vec<LayerCost>,
}

impl CostModel {
    /// The uncalibrated model: a layer costs its busiest rank's rows.
    pub fn rows(layers: usize) -> Self {
        Self {
            unit: "rows".into(),
            layers: vec![
                LayerCost {
                    fixed: 0.0,
                    per_row: 1.0,
                };
                layers
            ],
        }
    }

    /// Checks every coefficient is finite and non-negative and `per_row` is positive.
    pub fn validate(&self) -> Result<(), OnlineError> {
        for c in &self.layers {
            for (what, v, ok) in [
                ("cost model fixed", c.fixed, c.fixed >= 0.0),
                ("cost model per_row", c.per_row, c.per_row > 0.0),
            ] {
                if !(v.is_finite() && ok) {
                    return Err(OnlineError::BadValue {
                        what,
                        value: v,
                        expected: "a finite number (fixed >= 0, per_row > 0)",
                    });
                }
            }
        }
        Ok(())
    }

    /// Layer `l`'s time at `rows` busiest-rank rows.
    pub fn cost(&self, l: usize, rows: u64) -> f64 {
        let c = self.layers[l];
        c.fixed + c.per_row * rows as f64
    }
}

/// The most rows any rank can hold at per-expert capacity `c`: its `experts_per_rank` experts
/// each serve at most `c`, and each token sends a rank at most `min(k, experts_per_rank)` rows.
/// Capacity makes this a bound by construction, whatever the router does.
pub fn rank_rows_bound(c: u64, experts_per_rank: usize, tokens: usize, top_k: usize) -> u64 {
    let by_capacity = (experts_per_rank as u64).saturating_mul(c);
    let by_tokens = (tokens as u64).saturating_mul(top_k.min(experts_per_rank) as u64);
    by_capacity.min(by_tokens)
}

/// A gamma whose capacity `ceil(gamma T k / E)` is exactly `c`, so that a per-layer capacity
/// reaches any router that takes gamma (the CPU oracle and the device router alike). `None`
/// when `c` is 0, the shape is empty, or no valid gamma gives `c` (beyond
/// [`MAX_CAPACITY_FACTOR`](crate::routing::MAX_CAPACITY_FACTOR)).
pub fn gamma_for_capacity(c: u64, tokens: usize, top_k: usize, experts: usize) -> Option<f64> {
    if c == 0 || tokens == 0 || top_k == 0 || experts == 0 {
        return None;
    }
    let at = |g: f64| crate::routing::capacity(g, tokens, top_k, experts).ok();
    let mut g = c as f64 * experts as f64 / (tokens as f64 * top_k as f64);
    // The quotient can land an ulp off either way; walk to the value whose ceiling is `c`.
    for _ in 0..64 {
        match at(g)? {
            x if x == c => return Some(g),
            x if x > c => g = f64::from_bits(g.to_bits() - 1),
            _ => g = f64::from_bits(g.to_bits() + 1),
        }
    }
    None
}
