//! W1/W3 -> the interleaved W13 the fused up-projection GEMM reads.
//!
//! One GEMM with `n = 2I` computes both projections; interleaving puts the
//! gate value `h13[r, 2j]` next to its up value `h13[r, 2j + 1]`, so the
//! SwiGLU pass reads one aligned bf16 pair per output element.

use super::init::{from_bf16, to_bf16};
use super::ExpertError;

fn check(what: &'static str, len: usize, expected: usize) -> Result<(), ExpertError> {
    if len == expected {
        Ok(())
    } else {
        Err(ExpertError::Shape {
            what,
            len,
            expected,
        })
    }
}

/// One expert's `w1`, `w3` (each row-major `[inter, hidden]` f32) ->
/// `W13 [2 inter, hidden]` bf16 bits: row `2j` is `w1[j]`, row `2j + 1` is
/// `w3[j]`, every value rounded to nearest even.
///
/// ```
/// use capmoe::expert::interleave::interleave_w13;
/// let w13 = interleave_w13(&[1.0, 2.0], &[3.0, 4.0], 2, 1).unwrap();
/// assert_eq!(w13, [0x3f80, 0x4040, 0x4000, 0x4080]); // 1, 3, 2, 4
/// ```
pub fn interleave_w13(
    w1: &[f32],
    w3: &[f32],
    inter: usize,
    hidden: usize,
) -> Result<Vec<u16>, ExpertError> {
    check("w1 [inter, hidden]", w1.len(), inter * hidden)?;
    check("w3 [inter, hidden]", w3.len(), inter * hidden)?;
    let mut out = Vec::with_capacity(2 * inter * hidden);
    if hidden == 0 {
        return Ok(out);
    }
    for (r1, r3) in w1.chunks_exact(hidden).zip(w3.chunks_exact(hidden)) {
        out.extend(r1.iter().map(|&v| to_bf16(v)));
        out.extend(r3.iter().map(|&v| to_bf16(v)));
    }
    Ok(out)
}

/// The inverse of [`interleave_w13`] for one expert: `W13 [2 inter, hidden]`
/// bf16 bits -> `(w1, w3)`, each `[inter, hidden]` f32 (exactly the bf16
/// values).
pub fn deinterleave_w13(
    w13: &[u16],
    inter: usize,
    hidden: usize,
) -> Result<(Vec<f32>, Vec<f32>), ExpertError> {
    check("w13 [2 inter, hidden]", w13.len(), 2 * inter * hidden)?;
    let mut w1 = Vec::with_capacity(inter * hidden);
    let mut w3 = Vec::with_capacity(inter * hidden);
    if hidden == 0 {
        return Ok((w1, w3));
    }
    for pair in w13.chunks_exact(2 * hidden) {
        w1.extend(pair[..hidden].iter().map(|&b| from_bf16(b)));
        w3.extend(pair[hidden..].iter().map(|&b| from_bf16(b)));
    }
    Ok((w1, w3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_alternate_gate_and_up() {
        let (inter, hidden) = (3, 2);
        let w1: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let w3: Vec<f32> = (0..6).map(|v| 100.0 + v as f32).collect();
        let w13 = interleave_w13(&w1, &w3, inter, hidden).unwrap();
        let f: Vec<f32> = w13.iter().map(|&b| from_bf16(b)).collect();
        assert_eq!(
            f,
            [0.0, 1.0, 100.0, 101.0, 2.0, 3.0, 102.0, 103.0, 4.0, 5.0, 104.0, 105.0]
        );
        assert_eq!(deinterleave_w13(&w13, inter, hidden).unwrap(), (w1, w3));
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        let e = interleave_w13(&[0.0; 6], &[0.0; 5], 3, 2).unwrap_err();
        assert_eq!(
            e,
            ExpertError::Shape {
                what: "w3 [inter, hidden]",
                len: 5,
                expected: 6
            }
        );
        assert!(e.to_string().contains("expected 6"));
        assert!(deinterleave_w13(&[0; 11], 3, 2).is_err());
    }
}
