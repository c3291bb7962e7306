//! Calibration against a measured EP run ([`crate::ep::dist::EpBenchReport`]
//! as JSON): the expert time's fixed part and per-row slope, the effective
//! transfer rate of the all-to-alls, and the model replayed on the measured
//! run's own rows and bytes next to its measured speedups.

use super::SimError;
use serde::{Deserialize, Serialize};

/// One rank's medians in one layer, as `report.json` of `capmoe bench
/// --ep` writes them (the fields the calibration reads).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct MeasuredRankLayer {
    /// Median expert FFN time, ms.
    pub expert_ms: f64,
    /// Median time inside the dispatch all-to-all-v, ms.
    pub dispatch_ms: f64,
    /// Median time inside the combine all-to-all-v, ms.
    pub combine_ms: f64,
    /// Rows the rank's experts served.
    pub rows: f64,
    /// Bytes sent in dispatch and combine.
    pub sent_bytes: f64,
    /// Bytes received in dispatch and combine.
    pub recv_bytes: f64,
}

/// The median speedup of a measured case.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct MeasuredSpeedup {
    /// Median over forwards.
    pub p50: f64,
}

/// One measured case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MeasuredCase {
    /// Policy name.
    pub policy: String,
    /// Capacity factor.
    pub gamma: Option<f64>,
    /// Measured MoE speedup over `none`.
    pub speedup: MeasuredSpeedup,
    /// `layers[l][r]`.
    pub layers: Vec<Vec<MeasuredRankLayer>>,
}

/// A measured EP run (the subset of `EpBenchReport` read here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MeasuredRun {
    /// Ranks.
    pub ranks: usize,
    /// Tokens per forward.
    pub tokens: usize,
    /// Cases, `none` first.
    pub cases: Vec<MeasuredCase>,
}

impl MeasuredRun {
    /// Parses `report.json` of `capmoe bench --ep`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SimError> {
        serde_json::from_slice(bytes).map_err(|e| SimError::Calibration(e.to_string()))
    }
}

/// The model replayed on one measured case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationCheck {
    /// Case label (`policy @ gamma`).
    pub case: String,
    /// Measured median speedup over `none`.
    pub measured_speedup: f64,
    /// The model's speedup on the case's measured rows and bytes.
    pub model_speedup: f64,
}

/// What a measured run calibrates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Ranks and tokens of the measured run.
    pub measured_ranks: usize,
    /// Tokens per forward of the measured run.
    pub measured_tokens: usize,
    /// (rows, expert_ms) points fitted: every case, layer and rank.
    pub points: usize,
    /// Fixed part of a rank's expert time, ms (least-squares intercept).
    pub fixed_ms: f64,
    /// Expert time per row, ms (least-squares slope).
    pub per_row_ms: f64,
    /// The fixed part in rows: `max(fixed, 0) / per_row`. This is what the
    /// simulation carries over to the target hardware.
    pub fixed_rows: f64,
    /// R² of the fit.
    pub r2: f64,
    /// Effective all-to-all rate, GB/s: the busiest rank's bytes over the
    /// least-waiting rank's dispatch + combine time, summed over cases and
    /// layers (the least-waiting rank's wait is the transfer itself).
    pub transfer_gbps: f64,
    /// Per measured case, the hierarchical model on one node of `ranks`
    /// GPUs, links at `transfer_gbps`, compute `fixed + per_row * rows`,
    /// against the measured speedup.
    pub checks: Vec<CalibrationCheck>,
}

/// Least-squares `y = a + b x`; `None` with fewer than two distinct `x`.
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if !(sxx.is_finite() && sxx > 0.0) {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let r2 = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    (a.is_finite() && b.is_finite()).then_some((a, b, r2))
}

fn case_label(c: &MeasuredCase) -> String {
    match c.gamma {
        Some(g) => format!("{} @ {g}", c.policy),
        None => c.policy.clone(),
    }
}

/// Fits the calibration to a measured run.
pub fn calibrate(run: &MeasuredRun) -> Result<Calibration, SimError> {
    let bad = |why: &str| SimError::Calibration(why.to_string());
    let all = run.cases.iter().flat_map(|c| c.layers.iter().flatten());
    if all.clone().any(|p| {
        ![
            p.expert_ms,
            p.dispatch_ms,
            p.combine_ms,
            p.rows,
            p.sent_bytes,
            p.recv_bytes,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0)
    }) {
        return Err(bad(
            "a measured time, row or byte count is negative or not finite",
        ));
    }
    let points: Vec<(f64, f64)> = all.map(|p| (p.rows, p.expert_ms)).collect();
    let (a, b, r2) = fit_line(&points)
        .ok_or_else(|| bad("fewer than two distinct row counts: nothing to fit"))?;
    if b.is_nan() || b <= 0.0 {
        return Err(bad("expert time does not grow with rows (slope <= 0)"));
    }
    let (mut bytes, mut ms) = (0.0, 0.0);
    for l in run.cases.iter().flat_map(|c| &c.layers) {
        let min = |f: fn(&MeasuredRankLayer) -> f64| l.iter().map(f).fold(f64::INFINITY, f64::min);
        let t = min(|p| p.dispatch_ms) + min(|p| p.combine_ms);
        if t.is_finite() {
            ms += t;
            bytes += l
                .iter()
                .map(|p| p.sent_bytes.max(p.recv_bytes))
                .fold(0.0, f64::max);
        }
    }
    if !(ms > 0.0 && bytes > 0.0) {
        return Err(bad("no all-to-all time or bytes measured"));
    }
    let gbps = bytes / (ms * 1e-3) / 1e9;
    let layer_ms = |c: &MeasuredCase| -> f64 {
        c.layers
            .iter()
            .map(|l| {
                l.iter()
                    .map(|p| {
                        a.max(0.0) + b * p.rows + p.sent_bytes.max(p.recv_bytes) / (gbps * 1e6)
                    })
                    .fold(0.0, f64::max)
            })
            .sum()
    };
    let base = run.cases.first().map(layer_ms).unwrap_or(0.0);
    let checks = run
        .cases
        .iter()
        .map(|c| CalibrationCheck {
            case: case_label(c),
            measured_speedup: finite(c.speedup.p50),
            model_speedup: finite(base / layer_ms(c)),
        })
        .collect();
    Ok(Calibration {
        measured_ranks: run.ranks,
        measured_tokens: run.tokens,
        points: points.len(),
        fixed_ms: a,
        per_row_ms: b,
        fixed_rows: a.max(0.0) / b,
        r2,
        transfer_gbps: gbps,
        checks,
    })
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}
