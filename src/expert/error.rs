//! Typed errors of the expert FFN twin and the autotuner. Every message says
//! what was wrong and what was expected.

use std::path::PathBuf;
use thiserror::Error;

/// Errors from the expert FFN's host-side code (weights, reference, tuning).
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ExpertError {
    #[error("{what} has {len} values, expected {expected}")]
    Shape {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{what} is {value}; the grouped GEMMs need a positive multiple of 8")]
    NotMultipleOf8 { what: &'static str, value: usize },
    #[error("the expert FFN has no experts; expected at least 1")]
    NoExperts,
    #[error("expert {expert}: {what} has shape {got:?}, expected {expected:?}")]
    ExpertShape {
        expert: usize,
        what: &'static str,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("the dispatch layout has {layout} experts, but the expert FFN has {ffn}")]
    LayoutExperts { layout: usize, ffn: usize },
    #[error("no candidate variant for {key}; expected at least one compiled variant that runs on this GPU")]
    NoCandidates { key: String },
    #[error("every candidate variant failed for {key}: {failures}")]
    AllCandidatesFailed { key: String, failures: String },
    #[error("timing of variant {variant} is {micros} us; expected a finite, non-negative time")]
    BadTiming { variant: &'static str, micros: f64 },
    #[error(
        "no directory for the tune cache: set CAPMOE_TUNE_CACHE (a file), XDG_CACHE_HOME or HOME"
    )]
    NoCacheDir,
    #[error("tune cache {path} is not valid JSON of the expected form ({reason}); delete it and the autotuner will time the variants again")]
    CacheCorrupt { path: PathBuf, reason: String },
    #[error("tune cache {path}: {op} failed: {reason}")]
    CacheIo {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
}
