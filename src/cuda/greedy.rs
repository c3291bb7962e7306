//! The safe door to the decode step's greedy kernel (`capmoe_model_greedy`),
//! for a caller with logits on the device. The decode graph launches the
//! same kernel with its own device state (`model::graph_decode`).

use super::{model_launch, sys, GpuError};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
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
    let to_i32 =
        |what, v: usize| i32::try_from(v).map_err(|_| GpuError::TooLarge { what, value: v });
    let (r32, v32) = (to_i32("greedy rows", rows)?, to_i32("vocabulary", vocab)?);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let mut nonfinite = stream.alloc_zeros::<u64>(rows)?;
    let mut next = stream.alloc_zeros::<u32>(rows)?;
    {
        let (lp, _g1) = logits.device_ptr(stream);
        let (np, _g2) = nonfinite.device_ptr_mut(stream);
        let (xp, _g3) = next.device_ptr_mut(stream);
        let a = sys::capmoe_greedy_args {
            logits: lp as *const f32,
            rows: r32,
            vocab: v32,
            nonfinite: np as *mut u64,
            next: xp as *mut u32,
            ids: std::ptr::null_mut(),
            positions: std::ptr::null_mut(),
        };
        // SAFETY: logits holds rows * vocab f32 (checked), nonfinite and next
        // rows each; the guards keep them alive until the stream ran it.
        unsafe { model_launch::greedy(&a, stream.cu_stream() as _)? };
    }
    let (nf, picks) = (stream.clone_dtoh(&nonfinite)?, stream.clone_dtoh(&next)?);
    Ok(nf
        .into_iter()
        .zip(picks)
        .map(|(f, token)| GreedyRow {
            token,
            nonfinite: (f != 0).then(|| ((!f >> 32) as usize, f32::from_bits(!f as u32))),
        })
        .collect())
}
