//! Row-wise CPU kernels: RMSNorm, RoPE, SiLU gating.

use crate::backend::Rope;
use rayon::prelude::*;

/// `out[r] = w * x[r] / sqrt(mean(x[r]^2) + eps)`, as transformers'
/// `MixtralRMSNorm` computes it in f32.
pub fn rms_norm(x: &[f32], cols: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, row)| {
            let ss: f32 = row.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / cols as f32 + eps).sqrt();
            for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                *o = g * (v * inv);
            }
        });
    out
}

/// Rotates the two halves of every head of every row (`rotate_half`).
pub fn rope(x: &mut [f32], cols: usize, heads: usize, positions: &[usize], rope: &Rope) {
    let hd = cols / heads;
    let half = hd / 2;
    x.par_chunks_mut(cols)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            let cs: Vec<(f32, f32)> = (0..half).map(|i| rope.cos_sin(pos, i)).collect();
            for head in row.chunks_mut(hd) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c - b * s;
                    head[i + half] = b * c + a * s;
                }
            }
        });
}

/// `h1 = silu(h1) * h3`, elementwise (SwiGLU's gate).
pub fn silu_mul(h1: &mut [f32], h3: &[f32]) {
    h1.par_chunks_mut(4096)
        .zip(h3.par_chunks(4096))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                let g = *a / (1.0 + (-*a).exp());
                *a = g * b;
            }
        });
}
