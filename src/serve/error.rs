//! The serving benchmark's typed errors.

use crate::ep::comm::CommError;
use crate::ep::dist::DistError;
use crate::model::ModelError;
use crate::online::OnlineError;
use crate::routing::RoutingError;
use thiserror::Error;

/// What can go wrong setting up or running a serving benchmark. Bad input is one of these,
/// never a panic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A number that must lie in a stated range does not.
    #[error("{what} is {value}; expected {expected}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Its value, as given.
        value: String,
        /// The accepted range.
        expected: String,
    },
    /// There is nothing to serve (no requests, an empty trace, an empty prompt pool).
    #[error("{0}")]
    Empty(String),
    /// A line of an arrival trace does not parse or breaks the format's rules.
    #[error("arrival trace line {line}: {msg}")]
    Trace {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A controller spelling, a window or an EMA weight the online half refuses.
    #[error(transparent)]
    Online(#[from] OnlineError),
    /// A routing setting (ranks, gamma) the routing contract refuses.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The model refused a step (a token out of range, a prompt past its positions).
    #[error(transparent)]
    Model(#[from] Box<ModelError>),
    /// EP ranks refused the run or failed in it (ranks that do not divide the experts, a peer
    /// that disagreed, failed or left).
    #[error(transparent)]
    Ep(#[from] Box<DistError>),
}

impl From<DistError> for ServeError {
    fn from(e: DistError) -> Self {
        Self::Ep(Box::new(e))
    }
}

impl From<CommError> for ServeError {
    fn from(e: CommError) -> Self {
        Self::Ep(Box::new(e.into()))
    }
}

impl From<ModelError> for ServeError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// `Err(OutOfRange)` unless `lo <= v <= hi`.
pub(crate) fn check_count(
    what: &'static str,
    v: usize,
    lo: usize,
    hi: usize,
) -> Result<(), ServeError> {
    if v < lo || v > hi {
        return Err(ServeError::OutOfRange {
            what,
            value: v.to_string(),
            expected: format!("an integer in {lo}..={hi}"),
        });
    }
    Ok(())
}
