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

/// A layer's [`LayerCost`] fitted by least squares to measured `(busiest rank rows, layer time)`
/// points (`capmoe calibrate`), with the fit's coefficient of determination `R^2`. A negative
/// intercept is clamped to 0 and the slope refitted through the origin. Errors unless there are
/// at least two distinct row counts, every value is finite, and the fitted slope is positive.
pub fn fit_layer_cost(points: &[(f64, f64)]) -> Result<(LayerCost, f64), OnlineError> {
    let bad = |what: &'static str, value: f64, expected: &'static str| OnlineError::BadValue {
        what,
        value,
        expected,
    };
    if let Some(&(r, t)) = points
        .iter()
        .find(|(r, t)| !(r.is_finite() && t.is_finite()))
    {
        return Err(bad(
            "calibration point",
            if r.is_finite() { t } else { r },
            "finite rows and times",
        ));
    }
    let n = points.len() as f64;
    let mean = |f: fn(&(f64, f64)) -> f64| points.iter().map(f).sum::<f64>() / n;
    let (mr, mt) = (mean(|p| p.0), mean(|p| p.1));
    let srr: f64 = points.iter().map(|p| (p.0 - mr).powi(2)).sum();
    if points.len() < 2 || srr <= 0.0 {
        return Err(bad(
            "calibration row counts",
            points.len() as f64,
            "at least two points with different busiest-rank rows (run the benchmark with capacity policies)",
        ));
    }
    let srt: f64 = points.iter().map(|p| (p.0 - mr) * (p.1 - mt)).sum();
    let mut per_row = srt / srr;
    let mut fixed = mt - per_row * mr;
    if fixed < 0.0 {
        fixed = 0.0;
        let rr: f64 = points.iter().map(|p| p.0 * p.0).sum();
        per_row = points.iter().map(|p| p.0 * p.1).sum::<f64>() / rr;
    }
    if !(per_row.is_finite() && per_row > 0.0) {
        return Err(bad(
            "fitted per-row time",
            per_row,
            "a positive slope: more rows must cost more",
        ));
    }
    let sst: f64 = points.iter().map(|p| (p.1 - mt).powi(2)).sum();
    let sse: f64 = points
        .iter()
        .map(|p| (p.1 - fixed - per_row * p.0).powi(2))
        .sum();
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { 1.0 };
    Ok((LayerCost { fixed, per_row }, r2))
}

/// The most rows any rank can hold at per-expert capacity `c`: its `experts_per_rank` experts
/// each serve at most `c`, and each token sends a rank at most `min(k, experts_per_rank)` rows.
/// Capacity makes this a bound by construction, whatever the router does.
pub fn rank_rows_bound(c: u64, experts_per_rank: usize, tokens: usize, top_k: usize) -> u64 {
    let by_capacity = (experts_per_rank as u64).saturating_mul(c);
    let by_tokens = (tokens as u64).saturating_mul(top_k.min(experts_per_rank) as u64);
    by_capacity.min(by_tokens)
}

/// One router per layer at the capacities of `capacity` (a [`super::CapacityPlan`]'s): `base`
/// with each layer's gamma from [`gamma_for_capacity`] (a capacity of 0 counts as 1), for
/// `model::ForwardOptions::with_layer_routers`. Errors when no valid gamma gives a capacity.
pub fn layer_routers(
    capacity: &[u64],
    base: &crate::routing::RouterConfig,
    tokens: usize,
    experts: usize,
) -> Result<Vec<crate::routing::RouterConfig>, OnlineError> {
    capacity
        .iter()
        .map(|&c| {
            let c = c.max(1);
            gamma_for_capacity(c, tokens, base.top_k, experts)
                .map(|g| base.clone().with_capacity_factor(g))
                .ok_or(OnlineError::BadValue {
                    what: "planned capacity",
                    value: c as f64,
                    expected:
                        "a capacity some gamma in (0, MAX_CAPACITY_FACTOR] gives at this batch",
                })
        })
        .collect()
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
