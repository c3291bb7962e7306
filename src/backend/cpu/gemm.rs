//! Bounds-checked wrapper over the `gemm` crate's f32 kernel.

use gemm::Parallelism;

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
