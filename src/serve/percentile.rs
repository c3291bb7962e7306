//! Latency percentiles (nearest rank).

use serde::Serialize;

/// The 50th, 90th and 99th percentiles of a sample, nearest rank: the `p`-th percentile of
/// `n` sorted values is the `ceil(p n / 100)`-th (1-based), so it is always one of the
/// values and `p50 <= p90 <= p99`. An empty sample has every percentile 0 and `count` 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values in the sample.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean (0 when empty).
    pub mean: f64,
}

/// The nearest-rank `p`-th percentile (`p` in `(0, 100]`) of `sorted` (ascending, finite);
/// `None` when it is empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

impl Percentiles {
    /// The percentiles of `values`, non-finite values left out.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let at = |p| percentile(&v, p).unwrap_or(0.0);
        Self {
            count: v.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            mean: if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
        }
    }

    /// Every value multiplied by `k` (e.g. seconds to milliseconds).
    pub fn scaled(self, k: f64) -> Self {
        Self {
            p50: self.p50 * k,
            p90: self.p90 * k,
            p99: self.p99 * k,
            mean: self.mean * k,
            ..self
        }
    }
}
