//! Typed errors of the expert FFN twin and the autotuner. Every message says
//! what was wrong and what was expected.

use std::path::PathBuf;
use thiserror::Error;

/// Errors from the expert FFN's host-side code (weights, reference, tuning).
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ExpertError {
    /// A host buffer has the wrong number of values.
    #[error("{what} has {len} values, expected {expected}")]
    Shape {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length expected.
        expected: usize,
    },
    /// A GEMM dimension (hidden or intermediate size) is 0 or not a multiple of 8.
    #[error("{what} is {value}; the grouped GEMMs need a positive multiple of 8")]
    NotMultipleOf8 {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
    },
    /// The expert FFN was given no experts.
    #[error("the expert FFN has no experts; expected at least 1")]
    NoExperts,
    /// One expert's weight has the wrong shape.
    #[error("expert {expert}: {what} has shape {got:?}, expected {expected:?}")]
    ExpertShape {
        /// The expert, in 0..experts.
        expert: usize,
        /// Which weight (`w1`, `w2`, `w3`).
        what: &'static str,
        /// Its shape.
        got: Vec<usize>,
        /// The shape expected.
        expected: Vec<usize>,
    },
    /// A dispatch layout's expert count differs from the expert FFN's.
    #[error("the dispatch layout has {layout} experts, but the expert FFN has {ffn}")]
    LayoutExperts {
        /// Experts in the layout.
        layout: usize,
        /// Experts in the FFN.
        ffn: usize,
    },
    /// No compiled variant runs on this GPU for the tuning key.
    #[error("no candidate variant for {key}; expected at least one compiled variant that runs on this GPU")]
    NoCandidates {
        /// The tuning key, as text.
        key: String,
    },
    /// Every candidate variant failed to run for the tuning key.
    #[error("every candidate variant failed for {key}: {failures}")]
    AllCandidatesFailed {
        /// The tuning key, as text.
        key: String,
        /// Each variant's failure, joined.
        failures: String,
    },
    /// A variant's measured time is NaN, infinite or negative.
    #[error("timing of variant {variant} is {micros} us; expected a finite, non-negative time")]
    BadTiming {
        /// The variant's name.
        variant: &'static str,
        /// Its time, us.
        micros: f64,
    },
    /// No tune-cache path could be resolved: `CAPMOE_TUNE_CACHE`, `XDG_CACHE_HOME` and `HOME` are all unset or empty.
    #[error(
        "no directory for the tune cache: set CAPMOE_TUNE_CACHE (a file), XDG_CACHE_HOME or HOME"
    )]
    NoCacheDir,
    /// The tune cache file does not parse.
    #[error("tune cache {path} is not valid JSON of the expected form ({reason}); delete it and the autotuner will time the variants again")]
    CacheCorrupt {
        /// The cache file.
        path: PathBuf,
        /// Why it does not parse.
        reason: String,
    },
    /// Reading, serializing, writing or renaming the tune cache (or creating its directory) failed.
    #[error("tune cache {path}: {op} failed: {reason}")]
    CacheIo {
        /// The cache file.
        path: PathBuf,
        /// The operation that failed (e.g. `"read"`, `"rename into place"`).
        op: &'static str,
        /// The OS or serializer's message.
        reason: String,
    },
}
