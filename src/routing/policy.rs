//! The routing policies of design.md §3, with their command-line spelling.

use super::error::RoutingError;
use std::fmt;
use std::str::FromStr;

/// Which assignments an overfull expert keeps under `drop:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropRank {
    /// Largest `p[t,e]` first, ties to the lower token index.
    Score,
    /// First tokens in batch order.
    Order,
    /// Last tokens in batch order.
    ReverseOrder,
    /// A seeded uniformly random subset.
    Random {
        /// Seed of [`random_key`](crate::routing::random_key).
        seed: u64,
    },
}

/// A routing policy.
///
/// ```
/// use capmoe::routing::Policy;
/// let p: Policy = "drop:random:7".parse().unwrap();
/// assert_eq!(p.to_string(), "drop:random:7");
/// assert!("drop:best".parse::<Policy>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Plain top-k, no capacity (the dropless baseline).
    None,
    /// Drop overflow, keeping per expert the best `C` by the given rank.
    Drop(DropRank),
    /// Token-proposing deferred acceptance (a stable assignment).
    RerouteNextBest,
    /// The capacitated assignment of maximum retained gate mass.
    RerouteOptimal,
    /// Expanded Drop: top-k plus the token's own rank's experts, then `drop:score`.
    ExpandLocal,
}

/// One line per policy, for `--help` and docs.
pub const POLICY_HELP: &[(&str, &str)] = &[
    ("none", "plain top-k, no capacity: the dropless baseline"),
    (
        "drop:score",
        "each overfull expert keeps the C assignments with the largest gate score p",
    ),
    (
        "drop:order",
        "each overfull expert keeps the first C tokens in batch order (Switch/GShard)",
    ),
    (
        "drop:reverse-order",
        "each overfull expert keeps the last C tokens in batch order",
    ),
    (
        "drop:random[:SEED]",
        "each overfull expert keeps a seeded uniformly random C-subset (seed 0 by default)",
    ),
    (
        "reroute:next-best",
        "overflow moves to the token's next-best expert with room (stable deferred acceptance)",
    ),
    (
        "reroute:optimal",
        "the assignment that keeps the most gate mass under capacity C (exact min-cost flow)",
    ),
    (
        "expand:local",
        "top-k plus every expert on the token's own EP rank, then drop:score (needs ranks)",
    ),
];

impl Policy {
    /// Whether the policy caps load (everything but `none`).
    pub fn has_capacity(&self) -> bool {
        !matches!(self, Policy::None)
    }
    /// Every policy with default parameters, for sweeps and tests.
    pub fn all() -> Vec<Policy> {
        vec![
            Policy::None,
            Policy::Drop(DropRank::Score),
            Policy::Drop(DropRank::Order),
            Policy::Drop(DropRank::ReverseOrder),
            Policy::Drop(DropRank::Random { seed: 0 }),
            Policy::RerouteNextBest,
            Policy::RerouteOptimal,
            Policy::ExpandLocal,
        ]
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::None => f.write_str("none"),
            Policy::Drop(DropRank::Score) => f.write_str("drop:score"),
            Policy::Drop(DropRank::Order) => f.write_str("drop:order"),
            Policy::Drop(DropRank::ReverseOrder) => f.write_str("drop:reverse-order"),
            Policy::Drop(DropRank::Random { seed }) => write!(f, "drop:random:{seed}"),
            Policy::RerouteNextBest => f.write_str("reroute:next-best"),
            Policy::RerouteOptimal => f.write_str("reroute:optimal"),
            Policy::ExpandLocal => f.write_str("expand:local"),
        }
    }
}

impl FromStr for Policy {
    type Err = RoutingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RoutingError::UnknownPolicy {
            given: s.to_string(),
        };
        Ok(match s {
            "none" => Policy::None,
            "drop:score" => Policy::Drop(DropRank::Score),
            "drop:order" => Policy::Drop(DropRank::Order),
            "drop:reverse-order" => Policy::Drop(DropRank::ReverseOrder),
            "drop:random" => Policy::Drop(DropRank::Random { seed: 0 }),
            "reroute:next-best" => Policy::RerouteNextBest,
            "reroute:optimal" => Policy::RerouteOptimal,
            "expand:local" => Policy::ExpandLocal,
            _ => match s.strip_prefix("drop:random:") {
                Some(seed) => Policy::Drop(DropRank::Random {
                    seed: seed.parse().map_err(|_| bad())?,
                }),
                None => return Err(bad()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_round_trips() {
        for p in Policy::all() {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert_eq!(
            "drop:random".parse::<Policy>().unwrap(),
            Policy::Drop(DropRank::Random { seed: 0 })
        );
        assert!("drop:random:x".parse::<Policy>().is_err());
        assert!("".parse::<Policy>().is_err());
    }
}
