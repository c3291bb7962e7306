//! Capacity `C = ceil(gamma * T * k / E)`, its scope, and the EP placement
//! (contiguous token blocks and contiguous expert groups per rank).

use super::error::RoutingError;
use serde::Serialize;

/// Per-expert capacity `ceil(gamma * T * k / E)`.
///
/// Evaluated left to right in f64, `((gamma * T) * k) / E`, exactly as
/// Python's `math.ceil(gamma * T * k / E)` does, so results agree with the
/// paper's reference code. Errors unless `gamma` is in `(0, MAX_CAPACITY_FACTOR]`.
///
/// ```
/// use capmoe::routing::capacity;
/// assert_eq!(capacity(1.5, 4096, 2, 8).unwrap(), 1536);
/// assert_eq!(capacity(1.0, 3, 2, 8).unwrap(), 1); // ceil(0.75)
/// assert!(capacity(0.0, 16, 2, 8).is_err());
/// ```
pub fn capacity(
    gamma: f64,
    tokens: usize,
    top_k: usize,
    experts: usize,
) -> Result<u64, RoutingError> {
    check_gamma(gamma)?;
    if experts == 0 {
        return Err(RoutingError::NoExperts);
    }
    let c = ((gamma * tokens as f64) * top_k as f64) / experts as f64;
    Ok(c.ceil() as u64)
}

/// Largest capacity factor accepted. At `gamma = MAX_EXPERTS` the capacity
/// `gamma * T * k / E` is at least `T` for every accepted `E` and `k >= 1`, so
/// it can no longer bind; a larger factor is a typo, not a setting.
pub const MAX_CAPACITY_FACTOR: f64 = super::error::MAX_EXPERTS as f64;

/// Whether `gamma` is a capacity factor capmoe accepts: finite, in
/// `(0, MAX_CAPACITY_FACTOR]`.
///
/// ```
/// use capmoe::routing::{valid_capacity_factor, MAX_CAPACITY_FACTOR};
/// assert!(valid_capacity_factor(1.5));
/// assert!(!valid_capacity_factor(0.0));
/// assert!(!valid_capacity_factor(f64::NAN));
/// assert!(!valid_capacity_factor(MAX_CAPACITY_FACTOR * 2.0));
/// ```
pub fn valid_capacity_factor(gamma: f64) -> bool {
    gamma.is_finite() && gamma > 0.0 && gamma <= MAX_CAPACITY_FACTOR
}

pub(crate) fn check_gamma(gamma: f64) -> Result<(), RoutingError> {
    if valid_capacity_factor(gamma) {
        Ok(())
    } else {
        Err(RoutingError::InvalidCapacityFactor(gamma))
    }
}

/// What one capacity bound covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapacityScope {
    /// Each expert holds at most `C` assignments.
    #[default]
    Expert,
    /// The experts of one EP rank share `experts_per_rank * C`.
    Rank,
}

impl std::str::FromStr for CapacityScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "expert" => Ok(Self::Expert),
            "rank" => Ok(Self::Rank),
            _ => Err(format!(
                "unknown capacity scope `{s}`; expected `expert` or `rank`"
            )),
        }
    }
}

/// Expert-parallel placement: `ranks` contiguous, equal expert groups and
/// `ranks` contiguous token blocks (`floor(r*T/R)..floor((r+1)*T/R)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    ranks: usize,
    experts: usize,
    tokens: usize,
}

impl Placement {
    /// `ranks` ranks over `experts` experts and `tokens` tokens; fails if
    /// `ranks` or `experts` is 0 or `ranks` does not divide `experts`.
    pub fn new(ranks: usize, experts: usize, tokens: usize) -> Result<Self, RoutingError> {
        if ranks == 0 {
            return Err(RoutingError::ZeroRanks);
        }
        if experts == 0 {
            return Err(RoutingError::NoExperts);
        }
        if experts % ranks != 0 {
            return Err(RoutingError::RanksDoNotDivideExperts { ranks, experts });
        }
        Ok(Self {
            ranks,
            experts,
            tokens,
        })
    }
    /// Number of EP ranks `R`.
    pub fn ranks(&self) -> usize {
        self.ranks
    }
    /// Experts per rank, `E / R`.
    pub fn experts_per_rank(&self) -> usize {
        self.experts / self.ranks
    }
    /// The rank whose expert group holds expert `e`.
    #[inline]
    pub fn rank_of_expert(&self, e: usize) -> usize {
        e / self.experts_per_rank()
    }
    /// The rank whose token block holds token `t`: `ceil((t+1)R/T) - 1`.
    #[inline]
    pub fn rank_of_token(&self, t: usize) -> usize {
        let (t, r, n) = (t as u64, self.ranks as u64, self.tokens as u64);
        (((t + 1) * r).div_ceil(n) - 1) as usize
    }
    /// Token range of rank `r`.
    pub fn token_block(&self, r: usize) -> std::ops::Range<usize> {
        let b = |r: usize| (r as u64 * self.tokens as u64 / self.ranks as u64) as usize;
        b(r)..b(r + 1)
    }
    /// Expert range of rank `r`.
    pub fn expert_group(&self, r: usize) -> std::ops::Range<usize> {
        let n = self.experts_per_rank();
        r * n..(r + 1) * n
    }
}

/// The capacity constraint as the policies see it: experts grouped into bins,
/// each bin with a bound.
#[derive(Debug, Clone)]
pub struct Bins {
    bin_of: Vec<u32>,
    cap: Vec<u64>,
}

impl Bins {
    /// Bins for a scope: one per expert with bound `C`, or one per rank with
    /// bound `experts_per_rank * C`.
    pub fn new(scope: CapacityScope, placement: &Placement, per_expert: u64) -> Self {
        let e = placement.experts;
        match scope {
            CapacityScope::Expert => Self {
                bin_of: (0..e as u32).collect(),
                cap: vec![per_expert; e],
            },
            CapacityScope::Rank => Self {
                bin_of: (0..e).map(|x| placement.rank_of_expert(x) as u32).collect(),
                cap: vec![
                    per_expert.saturating_mul(placement.experts_per_rank() as u64);
                    placement.ranks
                ],
            },
        }
    }
    /// The bin of expert `e` (`e < experts()`).
    #[inline]
    pub fn bin(&self, e: usize) -> usize {
        self.bin_of[e] as usize
    }
    /// The bound of bin `b` (`b < count()`), in assignments.
    #[inline]
    pub fn cap(&self, b: usize) -> u64 {
        self.cap[b]
    }
    /// Number of bins: E (expert scope) or R (rank scope).
    pub fn count(&self) -> usize {
        self.cap.len()
    }
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.bin_of.len()
    }
    /// The same grouping of experts into bins with other bounds (one per bin).
    pub(crate) fn with_caps(&self, cap: Vec<u64>) -> Self {
        debug_assert_eq!(cap.len(), self.cap.len());
        Self {
            bin_of: self.bin_of.clone(),
            cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_formula() {
        assert_eq!(capacity(1.0, 4096, 2, 8).unwrap(), 1024);
        assert_eq!(capacity(1.25, 100, 2, 8).unwrap(), 32); // 31.25
        assert_eq!(capacity(1.0, 0, 2, 8).unwrap(), 0);
        assert_eq!(capacity(1e-9, 1, 1, 8).unwrap(), 1);
        assert!(capacity(f64::NAN, 1, 1, 8).is_err());
        assert!(capacity(-1.0, 1, 1, 8).is_err());
        assert!(capacity(f64::INFINITY, 1, 1, 8).is_err());
    }

    #[test]
    fn token_blocks_cover_every_token_once() {
        for tokens in [1usize, 2, 7, 10, 64, 101] {
            for ranks in [1usize, 2, 4, 8] {
                let p = Placement::new(ranks, 8, tokens).unwrap();
                for t in 0..tokens {
                    assert!(
                        p.token_block(p.rank_of_token(t)).contains(&t),
                        "T={tokens} R={ranks} t={t}"
                    );
                }
                let total: usize = (0..ranks).map(|r| p.token_block(r).len()).sum();
                assert_eq!(total, tokens);
            }
        }
    }

    #[test]
    fn rank_bins_share_capacity() {
        let p = Placement::new(2, 8, 16).unwrap();
        let b = Bins::new(CapacityScope::Rank, &p, 5);
        assert_eq!(b.count(), 2);
        assert_eq!(b.cap(1), 20);
        assert_eq!(b.bin(3), 0);
        assert_eq!(b.bin(4), 1);
        assert!(Placement::new(3, 8, 16).is_err());
    }
}
