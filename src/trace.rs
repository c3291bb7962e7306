//! Synthetic router traces with controlled skew, for examples, tests and
//! benchmarks when no real router trace is at hand.

use crate::routing::numerics::splitmix64;
use crate::routing::{route, Logits, Policy, RouterConfig};
use crate::routing::{RoutingError, MAX_EXPERTS};
use std::fmt;
use std::str::FromStr;

/// How imbalanced plain top-k routing should be, as the busiest expert's load
/// over the mean load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skew {
    /// No bias: max/mean comes from noise alone.
    Uniform,
    /// Mixtral-like: busiest expert about 2.75x the mean (paper: 2.5-3x).
    Mixtral,
    /// OLMoE-like: about 7x the mean (needs E/k > 7, e.g. E=64, k=8).
    Olmoe,
    /// An explicit max/mean target.
    Ratio(f64),
}

impl Skew {
    /// Target max/mean load; `None` for [`Skew::Uniform`].
    pub fn target(&self) -> Option<f64> {
        match self {
            Skew::Uniform => None,
            Skew::Mixtral => Some(2.75),
            Skew::Olmoe => Some(7.0),
            Skew::Ratio(r) => Some(*r),
        }
    }
}

impl FromStr for Skew {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Skew::Uniform),
            "mixtral" => Ok(Skew::Mixtral),
            "olmoe" => Ok(Skew::Olmoe),
            _ => match s.parse::<f64>() {
                Ok(r) if r.is_finite() && r >= 1.0 => Ok(Skew::Ratio(r)),
                _ => Err(format!(
                    "unknown skew `{s}`; expected uniform, mixtral, olmoe or a max/mean ratio >= 1"
                )),
            },
        }
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => f.write_str("uniform"),
            Skew::Mixtral => f.write_str("mixtral"),
            Skew::Olmoe => f.write_str("olmoe"),
            Skew::Ratio(r) => write!(f, "{r}"),
        }
    }
}

/// Deterministic SplitMix64 generator (portable: same stream everywhere).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 uniformly random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Errors from building a skewed trace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("skew {target}x is out of reach with {experts} experts and top-{top_k}: max/mean load is below E/k = {limit}; pick a ratio in [1, {limit})", limit = *experts as f64 / *top_k as f64)]
    /// The asked max/mean load ratio is outside `[1, E / k)` or out of reach.
    Unreachable {
        /// The asked ratio.
        target: f64,
        /// Experts `E`.
        experts: usize,
        /// Experts per token `k`.
        top_k: usize,
    },
    #[error(transparent)]
    /// `E` or `k` is invalid, or routing the trace failed.
    Routing(#[from] RoutingError),
    #[error("bias std {std} is out of range; expected 0 <= std <= {max}", max = MAX_BIAS_STD)]
    /// A [`normal_bias`] standard deviation outside `0..=MAX_BIAS_STD`.
    BadBiasStd {
        /// The asked standard deviation.
        std: f64,
    },
    #[error("a trace of {tokens} tokens needs at least one; expected tokens >= 1")]
    /// Zero tokens asked for.
    NoTokens {
        /// Tokens asked for (0).
        tokens: usize,
    },
    #[error("a trace of {tokens} tokens x {experts} experts is more than {limit} values; expected tokens x experts <= {limit} (capmoe's bound on a synthetic trace, {mib} MiB as f32)", limit = MAX_TRACE_VALUES, mib = (MAX_TRACE_VALUES * 4) >> 20)]
    /// `tokens * experts` exceeds [`MAX_TRACE_VALUES`] (or overflows).
    TooLarge {
        /// Tokens asked for.
        tokens: usize,
        /// Experts asked for.
        experts: usize,
    },
}

/// Most values (tokens x experts) a synthetic trace may hold: 2^26, 256 MiB
/// as f32 (e.g. 1M tokens x 64 experts, or 131072 x 512). Checked before
/// anything is allocated, so a huge count is an error, not an abort, and
/// a product that would wrap is caught.
pub const MAX_TRACE_VALUES: usize = 1 << 26;

/// The shape checks of a trace: 1..=[`MAX_EXPERTS`] experts, 1..=experts
/// top-k, at least one token, tokens x experts at most [`MAX_TRACE_VALUES`].
pub fn check_trace_shape(tokens: usize, experts: usize, top_k: usize) -> Result<(), TraceError> {
    check_experts(experts, top_k)?;
    if tokens == 0 {
        return Err(TraceError::NoTokens { tokens });
    }
    match tokens.checked_mul(experts) {
        Some(n) if n <= MAX_TRACE_VALUES => Ok(()),
        _ => Err(TraceError::TooLarge { tokens, experts }),
    }
}

fn check_experts(experts: usize, top_k: usize) -> Result<(), RoutingError> {
    if experts == 0 {
        return Err(RoutingError::NoExperts);
    }
    if experts > MAX_EXPERTS {
        return Err(RoutingError::TooManyExperts { experts });
    }
    if top_k == 0 {
        return Err(RoutingError::ZeroTopK);
    }
    if top_k > experts {
        return Err(RoutingError::TopKExceedsExperts { k: top_k, experts });
    }
    Ok(())
}

fn noise(tokens: usize, experts: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..tokens * experts).map(|_| rng.normal() as f32).collect()
}

fn imbalance(
    noise: &[f32],
    bias: &[f32],
    experts: usize,
    top_k: usize,
) -> Result<f64, RoutingError> {
    let l: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, &n)| n + bias[i % experts])
        .collect();
    let plan = route(
        &Logits::new(&l, l.len() / experts, experts)?,
        &RouterConfig::new(top_k, Policy::None),
    )?;
    Ok(plan.stats().imbalance())
}

/// Per-expert logit bias `b * (1 - e/(E-1))^2` (a graded skew with expert 0
/// the busiest), with `b` found by bisection so that plain top-k routing of
/// unit-normal logits reaches the skew's max/mean target. Experts and top-k
/// are checked first (1..=[`MAX_EXPERTS`], 1..=experts).
pub fn expert_bias(experts: usize, top_k: usize, skew: Skew) -> Result<Vec<f32>, TraceError> {
    check_experts(experts, top_k)?;
    let shape = |b: f64| -> Vec<f32> {
        (0..experts)
            .map(|e| {
                let x = if experts > 1 {
                    1.0 - e as f64 / (experts - 1) as f64
                } else {
                    0.0
                };
                (b * x * x) as f32
            })
            .collect()
    };
    let Some(target) = skew.target() else {
        return Ok(vec![0.0; experts]);
    };
    let limit = experts as f64 / top_k as f64;
    if !(target >= 1.0 && target < limit) {
        return Err(TraceError::Unreachable {
            target,
            experts,
            top_k,
        });
    }
    let sample = noise(4096, experts, 0x5EED);
    let (mut lo, mut hi) = (0.0f64, 64.0f64);
    if imbalance(&sample, &shape(hi), experts, top_k)? < target {
        return Err(TraceError::Unreachable {
            target,
            experts,
            top_k,
        });
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if imbalance(&sample, &shape(mid), experts, top_k)? < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(shape(hi))
}

/// `[tokens, experts]` logits: unit normal noise plus [`expert_bias`].
/// The shape is checked first ([`check_trace_shape`]).
///
/// ```
/// use capmoe::trace::{synthetic_logits, Skew};
/// let l = synthetic_logits(256, 8, 2, Skew::Mixtral, 1).unwrap();
/// assert_eq!(l.len(), 256 * 8);
/// ```
pub fn synthetic_logits(
    tokens: usize,
    experts: usize,
    top_k: usize,
    skew: Skew,
    seed: u64,
) -> Result<Vec<f32>, TraceError> {
    check_trace_shape(tokens, experts, top_k)?;
    let bias = expert_bias(experts, top_k, skew)?;
    let mut l = noise(tokens, experts, seed);
    for (i, v) in l.iter_mut().enumerate() {
        *v += bias[i % experts];
    }
    Ok(l)
}

/// Largest standard deviation [`normal_bias`] accepts (logit units): far
/// past any router seen (a std of 4 already sends nearly every token to the
/// same few experts).
pub const MAX_BIAS_STD: f64 = 16.0;

/// Per-expert logit bias drawn from `N(0, std^2)`, one value per expert, from
/// a generator seeded by `seed` (its own stream, independent of the noise
/// that [`synthetic_logits`] draws from the same seed). Unlike
/// [`expert_bias`] it has no calibrated target: `std = 1.6` on unit-normal
/// logits is a hard skew (issue 23), with hot experts scattered over the
/// index range. A `std` outside `0..=`[`MAX_BIAS_STD`] (or NaN) is an error.
pub fn normal_bias(experts: usize, std: f64, seed: u64) -> Result<Vec<f32>, TraceError> {
    if !(0.0..=MAX_BIAS_STD).contains(&std) {
        return Err(TraceError::BadBiasStd { std });
    }
    let mut rng = Rng::new(seed ^ 0xB1A5_B1A5_0000_0000);
    Ok((0..experts).map(|_| (std * rng.normal()) as f32).collect())
}

/// Adds `bias[e]` to every row's column `e` of `[tokens, bias.len()]` logits.
pub fn add_bias(logits: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in logits.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_skew_hits_its_target() {
        let l = synthetic_logits(8192, 8, 2, Skew::Mixtral, 9).unwrap();
        let r = imbalance(&l, &[0.0; 8], 8, 2).unwrap();
        assert!((2.5..3.0).contains(&r), "max/mean {r}");
        let l = synthetic_logits(8192, 64, 8, Skew::Olmoe, 9).unwrap();
        let r = imbalance(&l, &[0.0; 64], 64, 8).unwrap();
        assert!((6.5..7.5).contains(&r), "max/mean {r}");
    }

    #[test]
    fn bad_shapes_are_typed_errors_before_any_allocation() {
        use RoutingError::*;
        let e = |t, x, k| synthetic_logits(t, x, k, Skew::Mixtral, 0).unwrap_err();
        assert_eq!(e(8, 0, 2), TraceError::Routing(NoExperts));
        assert_eq!(e(8, 4, 0), TraceError::Routing(ZeroTopK));
        assert_eq!(
            e(8, 513, 2),
            TraceError::Routing(TooManyExperts { experts: 513 })
        );
        assert!(matches!(
            e(8, 4, 5),
            TraceError::Routing(TopKExceedsExperts { .. })
        ));
        assert_eq!(e(0, 8, 2), TraceError::NoTokens { tokens: 0 });
        // 2^61 x 8 wraps to 0 in 64 bits; 10^12 tokens would abort allocating.
        for t in [1usize << 61, 1_000_000_000_000, usize::MAX] {
            let err = e(t, 8, 2);
            assert_eq!(
                err,
                TraceError::TooLarge {
                    tokens: t,
                    experts: 8
                }
            );
            assert!(
                err.to_string().contains("expected tokens x experts <="),
                "{err}"
            );
        }
        assert!(expert_bias(0, 1, Skew::Uniform).is_err());
    }

    /// Draws the traces for routing's oracle tests (routing cannot import trace).
    fn trace(t: usize, e: usize, k: usize, olmoe: bool, seed: u64) -> Vec<f32> {
        let skew = if olmoe { Skew::Olmoe } else { Skew::Mixtral };
        synthetic_logits(t, e, k, skew, seed).unwrap()
    }

    #[test]
    fn reroute_optimal_fine_grained_shapes_match_the_oracle() {
        crate::routing::reroute_tests::fine_grained_shapes_match_the_oracle(&trace);
    }

    #[test]
    fn reroute_optimal_certificate_adds_missing_candidates() {
        crate::routing::reroute_tests::certificate_adds_missing_candidates(&trace);
    }

    #[test]
    fn normal_bias_is_seeded_and_checked() {
        let a = normal_bias(256, 1.6, 0).unwrap();
        assert_eq!(a, normal_bias(256, 1.6, 0).unwrap());
        assert_ne!(a, normal_bias(256, 1.6, 1).unwrap());
        let sd = (a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 256.0).sqrt();
        assert!((1.3..1.9).contains(&sd), "std {sd}");
        assert_eq!(normal_bias(4, 0.0, 3).unwrap(), vec![0.0; 4]);
        for bad in [-0.1, f64::NAN, f64::INFINITY, MAX_BIAS_STD + 1.0] {
            assert!(matches!(
                normal_bias(4, bad, 0),
                Err(TraceError::BadBiasStd { .. })
            ));
        }
        let mut l = vec![1.0f32; 6];
        add_bias(&mut l, &[0.5, -1.0, 2.0]);
        assert_eq!(l, vec![1.5, 0.0, 3.0, 1.5, 0.0, 3.0]);
    }

    #[test]
    fn unreachable_skew_is_an_error() {
        assert!(matches!(
            expert_bias(8, 2, Skew::Olmoe),
            Err(TraceError::Unreachable { .. })
        ));
        assert!("0.5".parse::<Skew>().is_err());
        assert!("NaN".parse::<Skew>().is_err());
        assert!("inf".parse::<Skew>().is_err());
        assert_eq!("3".parse::<Skew>().unwrap(), Skew::Ratio(3.0));
    }
}
