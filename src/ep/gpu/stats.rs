//! Order statistics and ratios of the GPU benchmark: percentiles over
//! iterations, the ideal (row-count) speedup and ratios that stay finite.

use serde::Serialize;

/// The `p`-th percentile (0..=100) of `v`, interpolated linearly between the
/// two nearest order statistics (NumPy's default, `method="linear"`): rank
/// `p / 100 * (n - 1)`. `None` for an empty slice or a `p` outside 0..=100.
/// NaNs sort last (`total_cmp`), so they only show at the top.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (s.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(s[lo] + (s[hi] - s[lo]) * frac)
}

/// Summary of one timed quantity over the iterations, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Iterations summarised.
    pub n: usize,
    /// Median (P50).
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// The summary of `v`; all zeros (and `n = 0`) for an empty slice.
    pub fn of(v: &[f64]) -> Self {
        if v.is_empty() {
            return Self {
                n: 0,
                p50: 0.0,
                p99: 0.0,
                mean: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            n: v.len(),
            p50: percentile(v, 50.0).unwrap_or(0.0),
            p99: percentile(v, 99.0).unwrap_or(0.0),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min,
            max,
        }
    }
}

/// `a / b`, or `None` when it is not a finite number (e.g. `b = 0`).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    r.is_finite().then_some(r)
}

/// The ideal EP speedup of a capacity policy: the busiest rank's rows
/// without capacity over the busiest rank's rows with it. It is what the
/// layer would gain if a rank's time were exactly proportional to its rows.
/// `Some(1.0)` when both are 0 (nothing to do either way); `None` when only
/// the policy's is 0 (no finite ratio).
pub fn ideal_ratio(max_rank_rows_none: u64, max_rank_rows_policy: u64) -> Option<f64> {
    match (max_rank_rows_none, max_rank_rows_policy) {
        (0, 0) => Some(1.0),
        (_, 0) => None,
        (a, b) => Some(a as f64 / b as f64),
    }
}

/// Per-iteration layer latency: the slowest rank's expert time plus the
/// modelled all-to-all. `rank_ms[i][r]` is rank `r` in iteration `i`.
pub fn layer_latencies(rank_ms: &[Vec<f64>], a2a_ms: f64) -> Vec<f64> {
    rank_ms
        .iter()
        .map(|ranks| ranks.iter().copied().fold(0.0, f64::max) + a2a_ms)
        .collect()
}

/// Each rank's times over the iterations (the transpose of `rank_ms`).
pub fn per_rank(rank_ms: &[Vec<f64>], ranks: usize) -> Vec<Vec<f64>> {
    (0..ranks)
        .map(|r| rank_ms.iter().filter_map(|it| it.get(r).copied()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [0, 50, 99, 100]) = 1, 2.5, 3.97, 4
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 99.0).unwrap() - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 101.0), None);
        // 100 values 1..=100: p99 = 99.01.
        let h: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&h, 99.0).unwrap() - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&h, 50.0), Some(50.5));
    }

    #[test]
    fn summary_of_iterations() {
        let p = Percentiles::of(&[2.0, 1.0, 3.0]);
        assert_eq!((p.n, p.p50, p.min, p.max, p.mean), (3, 2.0, 1.0, 3.0, 2.0));
        assert!(p.p99 > 2.9 && p.p99 <= 3.0);
        assert_eq!(Percentiles::of(&[]).n, 0);
    }

    #[test]
    fn ideal_ratio_is_rows_over_rows() {
        assert_eq!(ideal_ratio(300, 150), Some(2.0));
        assert_eq!(ideal_ratio(100, 100), Some(1.0));
        assert_eq!(ideal_ratio(0, 0), Some(1.0));
        assert_eq!(ideal_ratio(5, 0), None);
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }

    #[test]
    fn latency_is_the_slowest_rank_plus_a2a() {
        let it = vec![vec![1.0, 3.0, 2.0], vec![4.0, 1.0, 1.0]];
        assert_eq!(layer_latencies(&it, 0.5), vec![3.5, 4.5]);
        assert_eq!(
            per_rank(&it, 3),
            vec![vec![1.0, 4.0], vec![3.0, 1.0], vec![2.0, 1.0]]
        );
    }
}
