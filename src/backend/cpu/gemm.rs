//! Bounds-checked wrapper over the `gemm` crate's f32 kernel.

use gemm::Parallelism;
use std::time::Instant;

/// A strided read-only matrix view: element `(i, j)` is
/// `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A dense row-major `[rows, cols]` view.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// The parallelism the model's GEMMs run with: every rayon thread.
pub fn threads() -> Parallelism {
    Parallelism::Rayon(0)
}

/// `dst = a b` (or `dst += a b` when `accumulate`), `dst` row-major
/// `[a.rows, b.cols]` with row stride `ldd`.
///
/// # Panics
/// On mismatched shapes or views that overrun their slices: callers check
/// shapes and return typed errors first, so this is an internal invariant.
pub fn matmul(
    dst: &mut [f32],
    ldd: usize,
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm inner dimensions");
    assert!(a.fits() && b.fits(), "gemm view overruns its slice");
    assert!(
        m == 0 || n == 0 || (m - 1) * ldd + n <= dst.len(),
        "gemm destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * ldd..i * ldd + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every index the kernel touches inside
    // `dst`, `a.data` and `b.data`; `dst` is borrowed mutably, so it cannot
    // alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `x W^T` for row-major `x [m, k]` and `W [n, k]`, as a new `[m, n]`.
pub fn linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, par: Parallelism) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    matmul(
        &mut out,
        n,
        View::rows(x, m, k),
        View::rows(w, n, k).t(),
        false,
        par,
    );
    out
}

/// The f32 GEMM rate (FLOP/s) of the CPU backend's GEMM on an `n x n x n`
/// product, best of `reps` runs after one warm-up.
pub fn gemm_rate(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-2)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-2)
        .collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for r in 0..=reps.max(1) {
        let t0 = Instant::now();
        matmul(
            &mut c,
            n,
            View::rows(&a, n, n),
            View::rows(&b, n, n),
            false,
            threads(),
        );
        let dt = t0.elapsed().as_secs_f64();
        if r > 0 {
            best = best.min(dt);
        }
    }
    2.0 * (n as f64).powi(3) / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let y = linear(&x, m, k, &w, n, Parallelism::None);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
                assert!((y[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
