//! Tensor bytes to f32: bf16/f16 conversion and the NaN/Inf scans, run in
//! parallel chunks.

use rayon::prelude::*;

/// Values per parallel chunk when converting or scanning.
const CHUNK: usize = 1 << 16;

/// Converts 2-byte values to f32; also returns the index of the first value
/// that is not finite (checked in the same pass).
pub(super) fn convert(bytes: &[u8], f: impl Fn(u16) -> f32 + Sync) -> (Vec<f32>, Option<usize>) {
    let mut out = vec![0.0f32; bytes.len() / 2];
    let chunk = |ci: usize, o: &mut [f32], b: &[u8]| {
        let mut bad = None;
        for (k, (o, c)) in o.iter_mut().zip(b.chunks_exact(2)).enumerate() {
            *o = f(u16::from_le_bytes([c[0], c[1]]));
            if bad.is_none() && !o.is_finite() {
                bad = Some(ci * CHUNK + k);
            }
        }
        bad
    };
    // One chunk runs here: handing it to the pool costs more than it saves.
    let bad = if out.len() <= CHUNK {
        chunk(0, &mut out, bytes)
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(2 * CHUNK))
            .enumerate()
            .filter_map(|(ci, (o, b))| chunk(ci, o, b))
            .min()
    };
    (out, bad)
}

/// Index of the first little-endian f32 in `bytes` that is NaN or Inf.
pub(super) fn first_non_finite_f32(bytes: &[u8]) -> Option<usize> {
    let chunk = |ci: usize, b: &[u8]| {
        b.chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .map(|k| ci * CHUNK + k)
    };
    if bytes.len() <= 4 * CHUNK {
        return chunk(0, bytes);
    }
    bytes
        .par_chunks(4 * CHUNK)
        .enumerate()
        .filter_map(|(ci, b)| chunk(ci, b))
        .min()
}

/// Row-major flat index `i` as a multi-index of `shape`.
pub(super) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}
