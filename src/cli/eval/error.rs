//! What `capmoe eval` can fail with, beyond the model's own errors.

use super::super::tokenizer::TokenizerError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error("cannot read the eval data {path}: {msg}")]
    Read { path: String, msg: String },
    #[error("{file}:{line}: {msg}; expected one JSON object a line, {{\"task\": ..., \"prompt\": ..., \"answer\": ...}} (strings)")]
    BadLine {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{file} holds no example; expected one {{\"task\",\"prompt\",\"answer\"}} JSON object a line")]
    NoExamples { file: String },
    #[error("example {example}: the prompt's tokens are not a prefix of prompt + answer + \"\\n\"; the answer positions are undefined under this tokenizer")]
    NotPrefix { example: usize },
    #[error("{0}")]
    Shape(String),
    #[error("no example lies within one row of --seq-len {seq_len} tokens (of {examples}); raise --seq-len")]
    NothingScored { seq_len: usize, examples: usize },
    #[error(transparent)]
    Model(Box<capmoe::model::ModelError>),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("capacity controller: {0}")]
    Online(#[from] capmoe::online::OnlineError),
}
