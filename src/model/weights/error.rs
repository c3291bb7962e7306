//! [`WeightError`]: what can go wrong reading a checkpoint.

use thiserror::Error;

/// Errors reading a checkpoint.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WeightError {
    /// A file could not be opened, read or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {source}")]
    /// The safetensors crate rejected a shard.
    Safetensors {
        /// The shard.
        path: String,
        /// The parser's error.
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: {msg}")]
    /// The index file is malformed, or a JSON header is not strict.
    Index {
        /// The index file or shard.
        path: String,
        /// What was wrong and what was expected.
        msg: String,
    },
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    /// The path holds neither weights file; holds the path.
    NoWeights(String),
    #[error("tensor `{name}` is missing from the checkpoint (expected shape {expected:?})")]
    /// A tensor the config needs is absent.
    Missing {
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    /// A tensor's shape disagrees with the config.
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the checkpoint.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; expected F32, BF16 or F16")]
    /// A tensor is not F32, BF16 or F16.
    Dtype {
        /// Tensor name.
        name: String,
        /// Its dtype, as safetensors names it.
        dtype: String,
    },
    #[error("tensor `{name}` appears in both {first} and {second}")]
    /// Two shards hold the same tensor.
    Duplicate {
        /// Tensor name.
        name: String,
        /// The shard seen first.
        first: String,
        /// The shard seen second.
        second: String,
    },
    #[error("the checkpoint has {} tensor(s) a Mixtral model does not use: {}", names.len(), names.join(", "))]
    /// The checkpoint holds tensors the model does not use.
    Extra {
        /// Their names.
        names: Vec<String>,
    },
    #[error(
        "tensor `{name}` holds {value} at index {index:?}; expected finite weights (no NaN or Inf)"
    )]
    /// A weight is NaN or infinite.
    NonFinite {
        /// Tensor name.
        name: String,
        /// Multi-index of the first such value.
        index: Vec<usize>,
        /// The value (after conversion to f32).
        value: f32,
    },
    #[error("tensor `{name}` holds {bytes} bytes; its shape and dtype need {expected}")]
    /// A tensor's byte length disagrees with its shape and dtype.
    DataSize {
        /// Tensor name.
        name: String,
        /// Bytes it holds.
        bytes: usize,
        /// Bytes its shape and dtype need.
        expected: usize,
    },
}
