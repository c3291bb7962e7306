//! Typed errors. Every message says what was wrong and what was expected.

use thiserror::Error;

/// Largest expert count the routing contract accepts (the CUDA kernels' limit too).
pub const MAX_EXPERTS: usize = 512;

/// Errors from validating or routing a batch.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// The logits slice is not `tokens * experts` long.
    #[error("router logits hold {len} values, expected tokens x experts = {tokens} x {experts} = {expected}", expected = tokens * experts)]
    LogitsLength {
        /// Values given.
        len: usize,
        /// Tokens in the batch.
        tokens: usize,
        /// Experts (logits per token row).
        experts: usize,
    },
    /// A logit is NaN or infinite.
    #[error("router logit at token {token}, expert {expert} is {value}; logits must be finite (no NaN or Inf)")]
    NonFiniteLogit {
        /// Token row, in 0..tokens.
        token: usize,
        /// Expert column, in 0..experts.
        expert: usize,
        /// The offending value.
        value: f32,
    },
    /// The expert count is 0.
    #[error("the number of experts is 0; expected 1..={MAX_EXPERTS}")]
    NoExperts,
    /// The expert count is above [`MAX_EXPERTS`].
    #[error("{experts} experts is above the supported limit; expected at most {MAX_EXPERTS}")]
    TooManyExperts {
        /// Experts asked for.
        experts: usize,
    },
    /// `top_k` is 0.
    #[error("top-k is 0; every token must pick at least one expert (expected 1..=experts)")]
    ZeroTopK,
    /// `top_k` is larger than the expert count.
    #[error("top-k = {k} is larger than the number of experts {experts}; expected 1..={experts}")]
    TopKExceedsExperts {
        /// The top-k asked for.
        k: usize,
        /// Experts available.
        experts: usize,
    },
    /// The capacity factor (gamma) is not finite or not in
    /// `(0, MAX_CAPACITY_FACTOR]`; holds it.
    #[error("capacity factor (gamma) is {0:?}; expected a finite number > 0 and at most {max}", max = crate::routing::MAX_CAPACITY_FACTOR)]
    InvalidCapacityFactor(f64),
    /// A capacity policy (drop, reroute, expand) got no capacity factor; holds the policy's name.
    #[error("policy `{0}` caps expert load and needs a capacity factor (gamma), e.g. 1.5")]
    MissingCapacityFactor(String),
    /// Policy `none` got a capacity factor; holds the factor.
    #[error("policy `none` has no capacity, but a capacity factor ({0}) was given; drop the factor or pick a capacity policy")]
    CapacityFactorWithoutCapacity(f64),
    /// The expert-parallel rank count is 0.
    #[error("ranks is 0; expected at least 1 expert-parallel rank")]
    ZeroRanks,
    /// The rank count does not divide the expert count.
    #[error("{experts} experts cannot be split into {ranks} equal contiguous rank groups; expected ranks to divide experts")]
    RanksDoNotDivideExperts {
        /// Expert-parallel ranks asked for.
        ranks: usize,
        /// Experts to split over them.
        experts: usize,
    },
    /// A policy string did not parse.
    #[error("unknown policy `{given}`; expected one of: none, drop:score, drop:order, drop:reverse-order, drop:random[:SEED], reroute:next-best, reroute:optimal, expand:local")]
    UnknownPolicy {
        /// The string given.
        given: String,
    },
    /// The dispatch layout's tile (row multiple each expert's segment is padded to) is 0.
    #[error("tile multiple is 0; expected at least 1 row")]
    ZeroTile,
    /// An input slice, or a count derived from one, has the wrong length.
    #[error("{what} has {len} values, expected {expected}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length expected.
        expected: usize,
    },
    /// Arrays another backend computed do not form a valid dispatch layout.
    #[error("dispatch layout from parts: {what} (at index {at}); expected expert-contiguous segments padded to the tile, tokens in increasing order, padding last")]
    BadLayout {
        /// What is wrong.
        what: &'static str,
        /// The offending index (expert, row or assignment).
        at: usize,
    },
}
