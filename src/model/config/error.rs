//! What can be wrong with a configuration.

use super::BUILTIN_NAMES;
use thiserror::Error;

/// Errors reading or validating a configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    #[error("config.json is not valid JSON (strict: no repeated keys): {0}")]
    /// Not valid JSON, or a key appears twice.
    Json(#[from] serde_json::Error),
    #[error("config.json must be a JSON object")]
    /// The top-level JSON value is not an object.
    NotAnObject,
    #[error("config.json has no `{0}`; a Mixtral config needs it")]
    /// A required key is absent (or null); holds its name.
    Missing(&'static str),
    #[error("config field `{field}` is {value}; expected {expected}")]
    /// A field has the wrong type or an out-of-range value.
    Invalid {
        /// The key.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    #[error("inconsistent config: {0}")]
    /// A size is 0, or fields disagree (e.g. heads do not divide
    /// `hidden_size`); holds what was wrong and what was expected.
    Inconsistent(String),
    #[error("config field `{field}` is {value}; expected 1..={max} (capmoe's bound, so that sizes and their products stay bounded)")]
    /// A size is above its `MAX_*` bound.
    TooLarge {
        /// The key.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The bound (inclusive).
        max: u64,
    },
    #[error("positions {start}..{end} run past max_position_embeddings = {max}; expected at most {max} positions per sequence (prompt plus generated tokens)")]
    /// Positions `start..end` run past `max_position_embeddings`.
    PositionOutOfRange {
        /// First position asked for.
        start: usize,
        /// One past the last position asked for (u128: cannot overflow).
        end: u128,
        /// `max_position_embeddings`.
        max: usize,
    },
    #[error("unknown built-in config `{0}`; expected one of: {names}", names = BUILTIN_NAMES.join(", "))]
    /// The name is not in [`BUILTIN_NAMES`]; holds the name given.
    UnknownBuiltin(String),
}
