//! Typed errors. Every message says what was wrong and what was expected.

use thiserror::Error;

/// Largest expert count the routing contract accepts (the CUDA kernels' limit too).
pub const MAX_EXPERTS: usize = 512;

/// Errors from validating or routing a batch.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RoutingError {
    #[error("router logits hold {len} values, expected tokens x experts = {tokens} x {experts} = {expected}", expected = tokens * experts)]
    LogitsLength {
        len: usize,
        tokens: usize,
        experts: usize,
    },
    #[error("router logit at token {token}, expert {expert} is {value}; logits must be finite (no NaN or Inf)")]
    NonFiniteLogit {
        token: usize,
        expert: usize,
        value: f32,
    },
    #[error("the number of experts is 0; expected 1..={MAX_EXPERTS}")]
    NoExperts,
    #[error("{experts} experts is above the supported limit; expected at most {MAX_EXPERTS}")]
    TooManyExperts { experts: usize },
    #[error("top-k is 0; every token must pick at least one expert (expected 1..=experts)")]
    ZeroTopK,
    #[error("top-k = {k} is larger than the number of experts {experts}; expected 1..={experts}")]
    TopKExceedsExperts { k: usize, experts: usize },
    #[error("capacity factor (gamma) is {0}; expected a finite number > 0")]
    InvalidCapacityFactor(f64),
    #[error("policy `{0}` caps expert load and needs a capacity factor (gamma), e.g. 1.5")]
    MissingCapacityFactor(String),
    #[error("policy `none` has no capacity, but a capacity factor ({0}) was given; drop the factor or pick a capacity policy")]
    CapacityFactorWithoutCapacity(f64),
    #[error("ranks is 0; expected at least 1 expert-parallel rank")]
    ZeroRanks,
    #[error("{experts} experts cannot be split into {ranks} equal contiguous rank groups; expected ranks to divide experts")]
    RanksDoNotDivideExperts { ranks: usize, experts: usize },
    #[error("unknown policy `{given}`; expected one of: none, drop:score, drop:order, drop:reverse-order, drop:random[:SEED], reroute:next-best, reroute:optimal, expand:local")]
    UnknownPolicy { given: String },
    #[error("tile multiple is 0; expected at least 1 row")]
    ZeroTile,
    #[error("{what} has {len} values, expected {expected}")]
    ShapeMismatch {
        what: &'static str,
        len: usize,
        expected: usize,
    },
}
