//! The safe door to the decode step's greedy kernel (`capmoe_model_greedy`),
//! for a caller with logits on the device. The decode graph launches the
//! same kernel with its own device state (`model::graph_decode`).

use super::ops;
use crate::cuda::error::to_i32;
use crate::cuda::GpuError;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// One logit row's greedy pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyRow {
    /// The first largest logit's column (NaN never wins; 0 when every
    /// logit is NaN), as the model's `argmax`.
    pub token: u32,
    /// The row's first NaN or Inf logit, `(column, value)`, if any.
    pub nonfinite: Option<(usize, f32)>,
}

/// The greedy pick of each of `rows` rows of `logits` (`[rows, vocab]`
/// f32), downloaded (one sync of `stream`).
pub fn greedy(
    stream: &Arc<CudaStream>,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
) -> Result<Vec<GreedyRow>, GpuError> {
    let n = rows.checked_mul(vocab).ok_or(GpuError::TooLarge {
        what: "logits (rows * vocab)",
        value: rows,
    })?;
    if vocab == 0 || logits.len() < n {
        return Err(GpuError::Shape {
            what: "greedy logits [rows, vocab]",
            got: format!("{} values, vocab {vocab}", logits.len()),
            expected: format!("at least {rows} * vocab values, vocab >= 1"),
        });
    }
    to_i32("greedy rows", rows)?;
    to_i32("vocabulary", vocab)?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    // The decode record's layout: rows u64 non-finite records, then the picks.
    let mut record = stream.alloc_zeros::<u32>(3 * rows)?;
    ops::greedy_into(stream, logits, (rows, vocab), &mut record, None)?;
    let words = stream.clone_dtoh(&record)?;
    let (nf, picks) = words.split_at(2 * rows);
    let nf = nf
        .chunks(2)
        .map(|w| u64::from(w[0]) | u64::from(w[1]) << 32);
    Ok(nf
        .zip(picks.iter().copied())
        .map(|(f, token)| GreedyRow {
            token,
            nonfinite: (f != 0).then(|| ((!f >> 32) as usize, f32::from_bits(!f as u32))),
        })
        .collect())
}
