//! What can go wrong in the EP forward across ranks.

use crate::backend::{BackendError, DeviceError};
use crate::ep::comm::CommError;
use crate::model::ModelError;

/// An EP forward's error: bad placement or sizes (found before anything
/// runs), a failed collective (naming the rank), or the model's own.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Ranks that cannot hold equal expert groups.
    #[error("{ranks} EP ranks cannot hold {experts} experts in equal groups; expected a divisor of {experts} between 1 and {experts}")]
    Placement {
        /// Ranks asked for.
        ranks: usize,
        /// Experts in the model.
        experts: usize,
    },
    /// The receive buffers are sized for at most this many tokens a forward.
    #[error("a forward of {tokens} tokens is past the {max} the EP receive buffers were sized for; raise max_tokens")]
    TooManyTokens {
        /// Tokens in the forward.
        tokens: usize,
        /// Tokens the buffers hold.
        max: usize,
    },
    /// A prefill with fewer tokens than ranks leaves a rank's token block
    /// empty (decode steps may: a rank with no tokens still serves its
    /// experts).
    #[error("a prefill of {tokens} tokens leaves rank {rank}'s token block empty; give at least {ranks} tokens (one per rank)")]
    EmptyTokenBlock {
        /// The rank with no tokens.
        rank: usize,
        /// Tokens in the prefill.
        tokens: usize,
        /// Ranks.
        ranks: usize,
    },
    /// A count that must be at least 1 was 0.
    #[error("{0} is 0; expected at least 1")]
    Zero(&'static str),
    /// A plan put more rows on this rank than capacity allows (a broken
    /// routing contract; never expected).
    #[error("rank {rank} was sent {rows} rows, past its receive buffer's {bound} (local experts x capacity)")]
    Overfull {
        /// This rank.
        rank: usize,
        /// Rows sent to it.
        rows: usize,
        /// Rows its buffer holds.
        bound: usize,
    },
    /// The model this rank holds is not its group's.
    #[error("rank {rank} holds experts {held:?}, expected its group {expected:?}")]
    WrongGroup {
        /// This rank.
        rank: usize,
        /// Experts the model holds.
        held: std::ops::Range<usize>,
        /// The rank's group.
        expected: std::ops::Range<usize>,
    },
    /// A collective failed (a peer failed, left, timed out or disagreed).
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The model (or its backend) failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<BackendError> for DistError {
    fn from(e: BackendError) -> Self {
        Self::Model(e.into())
    }
}

impl From<DistError> for BackendError {
    fn from(e: DistError) -> Self {
        match e {
            DistError::Model(ModelError::Backend(b)) => b,
            other => BackendError::Runner(DeviceError::new(other)),
        }
    }
}

impl DistError {
    /// The EP error inside a model error, if the EP runner raised it.
    pub fn find(e: &ModelError) -> Option<&DistError> {
        match e {
            ModelError::Backend(BackendError::Runner(d)) => d.downcast_ref::<DistError>(),
            _ => None,
        }
    }
}
