//! How close the GPU expert FFN must come to the bf16 reference.
//!
//! Per element: `|gpu - ref| <= 2^-6 |ref| + 2^-5 rms(ref)`.
//!
//! Why this bound: the GPU and the reference round at the same points
//! (`h13`, `h` and `y` to bf16) but sum their f32 products in a different
//! order (tiles, split K, `wgmma` lanes), and `expf` on the GPU may differ
//! from the host's by an ulp. The f32 sums themselves agree to ~2^-20, but
//! when one lands next to a bf16 rounding boundary the two sides round one
//! bf16 ulp (2^-8 .. 2^-7 relative) apart. Such an `h13` or `h` element then
//! feeds GEMM2 and moves every `y` of its row by `|h_j w2_j| 2^-8`: a term
//! of the sum, so the change scales with the row's typical magnitude, not
//! with the (possibly cancelled, near-zero) `y` element itself; hence the
//! absolute term `2^-5 rms(ref)`, a few such terms' worth. The final bf16
//! rounding of `y` adds up to one ulp of `y`, covered by the relative term
//! `2^-6 |ref|` (two to four bf16 ulps). A real bug (a wrong row, expert,
//! interleave order or activation) moves elements by O(rms) and fails.

use super::init::from_bf16;
use crate::routing::{DispatchLayout, PAD};

/// Relative part of the bound: 2^-6 of `|ref|`.
pub const REL_TOL: f32 = 1.0 / 64.0;
/// Absolute part of the bound, in units of `rms(ref)`: 2^-5.
pub const RMS_TOL: f32 = 1.0 / 32.0;

/// The per-element bound `rel |ref| + abs` for one reference tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative part: multiple of `
    /// ref
    /// `.
    pub rel: f32,
    /// Absolute part, in the reference's units.
    pub abs: f32,
}

impl Tolerance {
    /// The largest `|got - want|` allowed at reference value `want`.
    pub fn bound(&self, want: f32) -> f32 {
        self.rel * want.abs() + self.abs
    }
}

/// The tolerance the GPU tests use against `reference` (bf16 bits):
/// `rel = 2^-6`, `abs = 2^-5 rms(reference)`.
///
/// ```
/// use capmoe::expert::tolerance;
/// let t = tolerance(&[0x3f80, 0xbf80]); // [1, -1]: rms 1
/// assert_eq!((t.rel, t.abs), (1.0 / 64.0, 1.0 / 32.0));
/// ```
pub fn tolerance(reference: &[u16]) -> Tolerance {
    let sq: f64 = reference
        .iter()
        .map(|&b| (from_bf16(b) as f64).powi(2))
        .sum();
    let rms = (sq / reference.len().max(1) as f64).sqrt();
    Tolerance {
        rel: REL_TOL,
        abs: RMS_TOL * rms as f32,
    }
}

/// Checks `gpu` against `reference` (both bf16 bits, same length) under
/// [`tolerance`]; the error names the worst element (by excess over its
/// bound) and how many elements fail. A NaN or infinity in `gpu` fails.
pub fn compare(gpu: &[u16], reference: &[u16]) -> Result<(), String> {
    compare_with(gpu, reference, &|i| format!("element {i}"))
}

/// [`compare`] over the served rows of `layout` only (`[layout.rows(),
/// hidden]` each): padding rows are left unwritten by the GPU and 0 in the
/// reference. Errors name the row, its token and the column.
pub fn compare_served(
    layout: &DispatchLayout,
    hidden: usize,
    gpu: &[u16],
    reference: &[u16],
) -> Result<(), String> {
    let expected = layout.rows() * hidden;
    for (what, len) in [("gpu", gpu.len()), ("reference", reference.len())] {
        if len != expected {
            return Err(format!(
                "{what} output has {len} values, expected rows x hidden = {} x {hidden} = {expected}",
                layout.rows()
            ));
        }
    }
    let served: Vec<usize> = (0..layout.rows())
        .filter(|&r| layout.row_tokens()[r] != PAD)
        .collect();
    let pick = |v: &[u16]| -> Vec<u16> {
        served
            .iter()
            .flat_map(|&r| v[r * hidden..(r + 1) * hidden].iter().copied())
            .collect()
    };
    let name = |i: usize| {
        let r = served[i / hidden];
        format!(
            "row {r} (token {}), column {}",
            layout.row_tokens()[r],
            i % hidden
        )
    };
    compare_with(&pick(gpu), &pick(reference), &name)
}

fn compare_with(
    gpu: &[u16],
    reference: &[u16],
    name: &dyn Fn(usize) -> String,
) -> Result<(), String> {
    if gpu.len() != reference.len() {
        return Err(format!(
            "gpu output has {} values, the reference {}",
            gpu.len(),
            reference.len()
        ));
    }
    let tol = tolerance(reference);
    let mut fails = 0usize;
    // (excess = |diff| / bound, index); NaN or infinite diff counts as infinite.
    let mut worst: Option<(f32, usize)> = None;
    for (i, (&g, &w)) in gpu.iter().zip(reference).enumerate() {
        let (g, w) = (from_bf16(g), from_bf16(w));
        let d = (g - w).abs();
        let bound = tol.bound(w);
        if d <= bound {
            continue;
        }
        fails += 1;
        let excess = if d.is_finite() {
            d / bound
        } else {
            f32::INFINITY
        };
        if worst.is_none_or(|(x, _)| excess > x) {
            worst = Some((excess, i));
        }
    }
    match worst {
        None => Ok(()),
        Some((_, i)) => {
            let (g, w) = (from_bf16(gpu[i]), from_bf16(reference[i]));
            Err(format!(
                "{fails} of {} elements outside |gpu - ref| <= {} |ref| + {:e}; worst at {}: gpu {g}, ref {w}, |diff| {:e} > bound {:e}",
                gpu.len(),
                tol.rel,
                tol.abs,
                name(i),
                (g - w).abs(),
                tol.bound(w),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expert::init::to_bf16;

    fn bits(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| to_bf16(x)).collect()
    }

    #[test]
    fn passes_within_the_bound_and_names_the_worst_element() {
        let want = bits(&[1.0, -2.0, 0.0, 4.0]);
        // rms = sqrt(21/4) ~ 2.29: abs ~ 0.0716; bound at 4.0 ~ 0.134.
        assert!(compare(&bits(&[1.0, -2.0, 0.0625, 4.0]), &want).is_ok());
        let e = compare(&bits(&[1.25, -2.0, 0.5, 4.0]), &want).unwrap_err();
        assert!(e.starts_with("2 of 4 elements"), "{e}");
        assert!(e.contains("worst at element 2"), "{e}");
        let e = compare(&bits(&[1.0, f32::NAN, 0.0, 4.0]), &want).unwrap_err();
        assert!(e.contains("worst at element 1"), "{e}");
        assert!(compare(&want, &want[..3]).is_err());
        assert!(compare(&[], &[]).is_ok());
    }
}
