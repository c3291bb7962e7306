//! Requests: a prompt, the reference answer (whose length is the request's output length),
//! and an arrival time.

use super::error::{check_count, ServeError};
use super::MAX_NEW_TOKENS;

/// One servable item: a prompt and its reference output (the model's eval set gives both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Prompt ids (not empty).
    pub prompt: Vec<u32>,
    /// The reference output: the request generates exactly this many tokens
    /// (`1..=MAX_NEW_TOKENS`) and is correct when it generates exactly these.
    pub expected: Vec<u32>,
}

/// One request of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Seconds from the start of the run.
    pub arrival_s: f64,
    /// Index of its [`Workload`] in the pool.
    pub source: usize,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// The reference output (see [`Workload::expected`]).
    pub expected: Vec<u32>,
}

/// Requests arriving at `arrivals` (seconds, non-decreasing), each serving
/// `pool[index]`. Every workload used must have a prompt and `1..=MAX_NEW_TOKENS` expected
/// tokens.
pub fn requests(arrivals: &[(f64, usize)], pool: &[Workload]) -> Result<Vec<Request>, ServeError> {
    if pool.is_empty() {
        return Err(ServeError::Empty(
            "the prompt pool is empty; expected at least one prompt".into(),
        ));
    }
    if arrivals.is_empty() {
        return Err(ServeError::Empty(
            "no arrivals; expected at least one request".into(),
        ));
    }
    check_count("requests", arrivals.len(), 1, super::MAX_REQUESTS)?;
    let mut out = Vec::with_capacity(arrivals.len());
    let mut prev = 0.0f64;
    for &(t, i) in arrivals {
        if !(t.is_finite() && t >= prev) {
            return Err(ServeError::OutOfRange {
                what: "arrival time (s)",
                value: t.to_string(),
                expected: format!("a finite number >= the previous arrival ({prev})"),
            });
        }
        prev = t;
        let w = pool.get(i).ok_or_else(|| ServeError::OutOfRange {
            what: "request index",
            value: i.to_string(),
            expected: format!("below the pool's {} prompts", pool.len()),
        })?;
        if w.prompt.is_empty() {
            return Err(ServeError::Empty(format!("prompt {i} has no tokens")));
        }
        check_count(
            "expected output tokens",
            w.expected.len(),
            1,
            MAX_NEW_TOKENS,
        )?;
        out.push(Request {
            arrival_s: t,
            source: i,
            prompt: w.prompt.clone(),
            expected: w.expected.clone(),
        });
    }
    Ok(out)
}
