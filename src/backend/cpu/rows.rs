//! `y = x W^T` for a few rows of `x` (decode): each row of `W` is read
//! once, straight from the weights, and dotted with every row of `x`.
//!
//! A general GEMM packs `W` into its own layout before it multiplies; with
//! one to a few rows that copy costs as much as the product (the decode
//! profile of issue 24: 69% of batch-8 samples in `gemm`'s packing). Here
//! `W` is streamed once from memory and `x` (a few rows) stays in cache.
//! The SIMD width is chosen at run time (`pulp` with its default features:
//! AVX2 + FMA, NEON or scalar; its AVX-512 path, feature `x86-v4`, is off),
//! so the summation order, and the last bits, follow the CPU; on one machine
//! the result is the same on every run.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Rows of `x` up to which [`linear_rows`] is used instead of the GEMM.
pub const SMALL_ROWS: usize = 16;
/// Rows of `W` per parallel task in [`linear_rows_par`].
const PAR_BLOCK: usize = 256;

/// `out[i * ldd + j] = sum_l x[i * k + l] * w[j * k + l]` for `i < m`,
/// `j < n`: `x [m, k]` and `W [n, k]` row-major.
///
/// # Panics
/// When a slice is shorter than its shape (an internal invariant: callers
/// check shapes and return typed errors first).
pub fn linear_rows(
    out: &mut [f32],
    ldd: usize,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
) {
    assert!(x.len() >= m * k && w.len() >= n * k, "linear_rows inputs");
    assert!(
        m == 0 || n == 0 || (m - 1) * ldd + n <= out.len(),
        "linear_rows destination"
    );
    if m == 0 || n == 0 {
        return;
    }
    pulp::Arch::new().dispatch(Rows {
        out,
        ldd,
        x,
        m,
        k,
        w,
        n,
    });
}

/// [`linear_rows`] as a new `[m, n]`, its `W` rows split over rayon's
/// threads in blocks.
pub fn linear_rows_par(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(PAR_BLOCK))
        .into_par_iter()
        .map(|b| {
            let (j0, j1) = (b * PAR_BLOCK, ((b + 1) * PAR_BLOCK).min(n));
            let mut y = vec![0.0f32; m * (j1 - j0)];
            linear_rows(&mut y, j1 - j0, x, m, k, &w[j0 * k..j1 * k], j1 - j0);
            (j0, y)
        })
        .collect();
    let mut out = vec![0.0f32; m * n];
    for (j0, y) in blocks {
        let nb = y.len() / m.max(1);
        for i in 0..m {
            out[i * n + j0..i * n + j0 + nb].copy_from_slice(&y[i * nb..(i + 1) * nb]);
        }
    }
    out
}

struct Rows<'a> {
    out: &'a mut [f32],
    ldd: usize,
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [f32],
    n: usize,
}

impl WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Rows {
            out,
            ldd,
            x,
            m,
            k,
            w,
            n,
        } = self;
        for j in 0..n {
            let (wv, wt) = S::as_simd_f32s(&w[j * k..(j + 1) * k]);
            let mut i = 0;
            // Four rows of x per pass over the W row: one load of W, four FMAs.
            while i + 4 <= m {
                let xr = |r: usize| S::as_simd_f32s(&x[(i + r) * k..(i + r + 1) * k]);
                let (x0, t0) = xr(0);
                let (x1, t1) = xr(1);
                let (x2, t2) = xr(2);
                let (x3, t3) = xr(3);
                let z = simd.splat_f32s(0.0);
                let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                for (c, &wc) in wv.iter().enumerate() {
                    a0 = simd.mul_add_e_f32s(x0[c], wc, a0);
                    a1 = simd.mul_add_e_f32s(x1[c], wc, a1);
                    a2 = simd.mul_add_e_f32s(x2[c], wc, a2);
                    a3 = simd.mul_add_e_f32s(x3[c], wc, a3);
                }
                for (r, (a, t)) in [(a0, t0), (a1, t1), (a2, t2), (a3, t3)]
                    .into_iter()
                    .enumerate()
                {
                    out[(i + r) * ldd + j] = simd.reduce_sum_f32s(a) + tail(t, wt);
                }
                i += 4;
            }
            while i < m {
                let (xv, xt) = S::as_simd_f32s(&x[i * k..(i + 1) * k]);
                let mut a = simd.splat_f32s(0.0);
                for (&xc, &wc) in xv.iter().zip(wv) {
                    a = simd.mul_add_e_f32s(xc, wc, a);
                }
                out[i * ldd + j] = simd.reduce_sum_f32s(a) + tail(xt, wt);
                i += 1;
            }
        }
    }
}

#[inline(always)]
fn tail(x: &[f32], w: &[f32]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::linear;
    use gemm::Parallelism;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// Against the GEMM on shapes around the SIMD widths and the 4-row
    /// step: m 1..=17, k with tails, n with a partial parallel block.
    #[test]
    fn rows_match_the_gemm() {
        for m in 1..=17 {
            for &(k, n) in &[
                (1usize, 3usize),
                (7, 5),
                (16, 9),
                (37, 300),
                (64, 1),
                (129, 17),
            ] {
                let (x, w) = (data(m * k, 1), data(n * k, 2));
                let want = linear(&x, m, k, &w, n, Parallelism::None);
                let got = linear_rows_par(&x, m, k, &w, n);
                let mut one = vec![0.0f32; m * n];
                linear_rows(&mut one, n, &x, m, k, &w, n);
                assert_eq!(got, one, "m {m} k {k} n {n}: blocks change the bits");
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                    assert!((a - b).abs() <= tol, "m {m} k {k} n {n} at {i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn a_strided_destination_keeps_its_other_columns() {
        let (m, k, n, ldd) = (3, 10, 4, 7);
        let (x, w) = (data(m * k, 3), data(n * k, 4));
        let mut out = vec![9.0f32; (m - 1) * ldd + n];
        linear_rows(&mut out, ldd, &x, m, k, &w, n);
        let want = linear(&x, m, k, &w, n, Parallelism::None);
        for i in 0..m {
            for j in 0..ldd.min(out.len() - i * ldd) {
                let v = out[i * ldd + j];
                if j < n {
                    assert!((v - want[i * n + j]).abs() < 1e-5);
                } else {
                    assert_eq!(v, 9.0, "column {j} of row {i} was written");
                }
            }
        }
    }
}
