//! The backends' error type.

use crate::routing::RoutingError;
use thiserror::Error;

/// Errors from a backend operation.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A tensor's shape does not fit the operation.
    #[error("{what}: shape {got:?} does not fit, expected {expected:?}")]
    Shape {
        /// Which tensor.
        what: &'static str,
        /// Its shape.
        got: Vec<usize>,
        /// The shape expected.
        expected: Vec<usize>,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} is out of range; the vocabulary has {vocab} ids (0..{vocab})")]
    TokenOutOfRange {
        /// The token id.
        id: u32,
        /// Its position in the input, in 0..tokens.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An expert range `start..end` (one rank's experts) is reversed or ends past the expert count, or the layout and the weights disagree on the count.
    #[error("expert range {start}..{end} is not inside 0..{experts}")]
    ExpertRange {
        /// First expert of the range.
        start: usize,
        /// One past the last expert.
        end: usize,
        /// Experts in the layer.
        experts: usize,
    },
    /// Routing the batch failed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// MoE layer `layer`'s routing failed, found when the forward pass
    /// settled its deferred plans ([`crate::backend::Backend::settle`]).
    #[error("MoE layer {layer}: {source}")]
    Layer {
        /// The layer, in 0..layers.
        layer: usize,
        /// What was wrong there.
        source: Box<BackendError>,
    },
    /// A backend broke the [`crate::backend::Backend`] contract (e.g. a
    /// device route given to the default `settle`).
    #[error("backend contract: {0}")]
    Contract(&'static str),
    /// A device call failed; the backend's own error is kept ([`DeviceError::downcast_ref`]).
    #[error("device: {0}")]
    Device(#[source] DeviceError),
    /// A MoE layer runner (the model's `MoeRunner` hook, e.g. the EP forward's
    /// collectives) failed; its own error is kept ([`DeviceError::downcast_ref`]).
    #[error("{0}")]
    Runner(#[source] DeviceError),
}

/// A device backend's (or a MoE runner's) own error, kept typed behind one variant so that
/// [`BackendError`] is the same with and without feature `cuda`. `downcast_ref::<capmoe::cuda::GpuError>()` gives the
/// CUDA backend's error back.
#[derive(Debug, Clone)]
pub struct DeviceError(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl DeviceError {
    /// Wraps a backend's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(e))
    }

    /// The backend's error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two device errors are equal when they say the same (the wrapped types need not be `PartialEq`).
impl PartialEq for DeviceError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl From<crate::io::ShapeError> for BackendError {
    fn from(e: crate::io::ShapeError) -> Self {
        Self::Shape {
            what: e.what,
            got: e.got,
            expected: e.expected,
        }
    }
}
