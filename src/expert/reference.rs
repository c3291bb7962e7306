//! The bf16 reference expert FFN: what the GPU pipeline computes, on the CPU.
//!
//! It rounds exactly where the kernels round: the GEMMs read bf16 operands
//! and accumulate in f32; GEMM1 writes `h13` as bf16; the SwiGLU pass
//! computes `silu(gate) * up` in f32 from the bf16 pair and writes bf16; GEMM2
//! accumulates in f32 and writes `y` as bf16. Only the order of the f32
//! accumulations differs from the GPU's (which [`super::compare`](mod@super::compare) allows for).

use super::init::{fill_bf16, from_bf16, to_bf16, w13_seed, w2_seed, INIT_SCALE};
use super::interleave::interleave_w13;
use super::HostExpert;
use super::{ExpertError, FfnShape};
use crate::io::HostTensor;
use crate::routing::DispatchLayout;
use rayon::prelude::*;

/// Weight rows per GEMM task: each task widens its rows once and reuses them
/// for every activation row.
const COLS_PER_TASK: usize = 64;

/// bf16 expert weights in the GPU layout: `w13 [E, 2I, H]` (rows interleaved,
/// see [`super::interleave`]) and `w2 [E, H, I]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertFfnRef {
    shape: FfnShape,
    w13: Vec<u16>,
    w2: Vec<u16>,
}

impl ExpertFfnRef {
    /// Weights given as bf16 bits in the GPU layout.
    pub fn new(shape: FfnShape, w13: Vec<u16>, w2: Vec<u16>) -> Result<Self, ExpertError> {
        shape.check()?;
        for (what, len, expected) in [
            ("w13 [E, 2I, H]", w13.len(), shape.w13_len()),
            ("w2 [E, H, I]", w2.len(), shape.w2_len()),
        ] {
            if len != expected {
                return Err(ExpertError::Shape {
                    what,
                    len,
                    expected,
                });
            }
        }
        Ok(Self { shape, w13, w2 })
    }

    /// The CPU backend's f32 experts, rounded to bf16 (nearest even), W1/W3
    /// interleaved: what the GPU's `ExpertFfn::from_host` uploads.
    pub fn from_host(experts: &[HostExpert]) -> Result<Self, ExpertError> {
        let first = experts.first().ok_or(ExpertError::NoExperts)?;
        let (inter, hidden) = match first.w1.shape() {
            &[i, h] => (i, h),
            s => return Err(expert_shape(0, "w1", s, vec![0, 0])),
        };
        let shape = FfnShape::new(experts.len(), hidden, inter)?;
        let mut w13 = Vec::with_capacity(shape.w13_len());
        let mut w2 = Vec::with_capacity(shape.w2_len());
        for (e, x) in experts.iter().enumerate() {
            for (what, t, expected) in [
                ("w1", &x.w1, [inter, hidden]),
                ("w3", &x.w3, [inter, hidden]),
                ("w2", &x.w2, [hidden, inter]),
            ] {
                if t.shape() != expected {
                    return Err(expert_shape(e, what, t.shape(), expected.to_vec()));
                }
            }
            w13.extend(interleave_w13(x.w1.data(), x.w3.data(), inter, hidden)?);
            w2.extend(x.w2.data().iter().map(|&v| to_bf16(v)));
        }
        Self::new(shape, w13, w2)
    }

    /// Weights drawn from the hash (the twin of the GPU's
    /// `ExpertFfn::random`): W13 from stream [`w13_seed`]`(seed)`, W2 from
    /// [`w2_seed`]`(seed)`, each over its whole buffer, scale [`INIT_SCALE`].
    pub fn random(shape: FfnShape, seed: u32) -> Result<Self, ExpertError> {
        shape.check()?;
        let w13 = fill_bf16(shape.w13_len(), w13_seed(seed), INIT_SCALE);
        let w2 = fill_bf16(shape.w2_len(), w2_seed(seed), INIT_SCALE);
        Self::new(shape, w13, w2)
    }

    /// The FFN's shape.
    pub fn shape(&self) -> FfnShape {
        self.shape
    }
    /// `[E, 2I, H]` bf16 bits, rows interleaved.
    pub fn w13(&self) -> &[u16] {
        &self.w13
    }
    /// `[E, H, I]` bf16 bits.
    pub fn w2(&self) -> &[u16] {
        &self.w2
    }

    /// Routed rows `[layout.rows(), H]` (bf16 bits, as `gather_bf16` or
    /// [`DispatchLayout::scatter`] lays them out) -> expert outputs
    /// `[layout.rows(), H]`, unweighted. Expert `e` processes its first
    /// `counts[e]` rows; padding rows of the output are 0 (the GPU leaves
    /// them unwritten: compare served rows only, see
    /// [`super::compare_served`]).
    pub fn forward(&self, layout: &DispatchLayout, rows: &[u16]) -> Result<Vec<u16>, ExpertError> {
        let FfnShape {
            experts, hidden, ..
        } = self.shape;
        if layout.counts().len() != experts {
            return Err(ExpertError::LayoutExperts {
                layout: layout.counts().len(),
                ffn: experts,
            });
        }
        let expected = layout.rows() * hidden;
        if rows.len() != expected {
            return Err(ExpertError::Shape {
                what: "routed rows [rows, hidden]",
                len: rows.len(),
                expected,
            });
        }
        let (counts, offsets) = (layout.counts(), layout.offsets());
        let ys: Vec<(usize, Vec<u16>)> = (0..experts)
            .into_par_iter()
            .filter(|&e| counts[e] > 0)
            .map(|e| {
                let (start, n) = (offsets[e] as usize, counts[e] as usize);
                let x = &rows[start * hidden..(start + n) * hidden];
                (start, self.expert_forward(e, x, n))
            })
            .collect();
        let mut out = vec![0u16; expected];
        for (start, y) in ys {
            out[start * hidden..start * hidden + y.len()].copy_from_slice(&y);
        }
        Ok(out)
    }

    /// Expert `e` on its `n` rows `x [n, H]`: `y [n, H]` bf16.
    fn expert_forward(&self, e: usize, x: &[u16], n: usize) -> Vec<u16> {
        let (h, i) = (self.shape.hidden, self.shape.intermediate);
        let xf: Vec<f32> = x.iter().map(|&b| from_bf16(b)).collect();
        let w13 = &self.w13[e * 2 * i * h..(e + 1) * 2 * i * h];
        let h13 = gemm_nt(&xf, w13, n, 2 * i, h);
        // GEMM1 writes bf16; the SwiGLU pass reads the pair and writes bf16.
        let act: Vec<f32> = h13
            .chunks_exact(2)
            .map(|p| from_bf16(swiglu_bf16(to_bf16(p[0]), to_bf16(p[1]))))
            .collect();
        let w2 = &self.w2[e * h * i..(e + 1) * h * i];
        gemm_nt(&act, w2, n, h, i)
            .into_iter()
            .map(to_bf16)
            .collect()
    }
}

fn expert_shape(
    expert: usize,
    what: &'static str,
    got: &[usize],
    expected: Vec<usize>,
) -> ExpertError {
    ExpertError::ExpertShape {
        expert,
        what,
        got: got.to_vec(),
        expected,
    }
}

/// `silu(a) = a / (1 + exp(-a))` in f32, the formula the SwiGLU kernel uses.
pub fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// One SwiGLU output from its bf16 gate and up values:
/// `bf16(silu(f32 gate) * f32 up)`.
///
/// ```
/// use capmoe::expert::reference::swiglu_bf16;
/// // silu(0) = 0; silu(1) * 2 = 2 / (1 + e^-1) = 1.4621..., bf16 1.4609375.
/// assert_eq!(swiglu_bf16(0x0000, 0x4000), 0);
/// assert_eq!(swiglu_bf16(0x3f80, 0x4000), 0x3fbb);
/// ```
pub fn swiglu_bf16(gate: u16, up: u16) -> u16 {
    to_bf16(silu(from_bf16(gate)) * from_bf16(up))
}

/// `C [m, n] = A [m, k] * B [n, k]^T` with f32 accumulation, `B` bf16 bits;
/// unrounded f32 out. Parallel over blocks of `B` rows.
fn gemm_nt(a: &[f32], b: &[u16], m: usize, n: usize, k: usize) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut ct = vec![0.0f32; n * m]; // transposed: [n, m]
    ct.par_chunks_mut(COLS_PER_TASK * m)
        .zip(b.par_chunks(COLS_PER_TASK * k))
        .for_each(|(c, b)| {
            let mut w = vec![0.0f32; k];
            for (j, brow) in b.chunks_exact(k).enumerate() {
                for (wv, &bb) in w.iter_mut().zip(brow) {
                    *wv = from_bf16(bb);
                }
                for (r, a) in a.chunks_exact(k).enumerate() {
                    c[j * m + r] = dot(a, &w);
                }
            }
        });
    let mut c = vec![0.0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            c[r * n + j] = ct[j * m + r];
        }
    }
    c
}

/// f32 dot product in eight lanes (so it vectorizes without reassociation),
/// lanes summed in a fixed tree: deterministic.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The f32 experts of the CPU backend from bf16 reference weights (each
/// value exact), for comparing the two paths on the same weights.
pub fn to_host(ffn: &ExpertFfnRef) -> Result<Vec<HostExpert>, ExpertError> {
    let FfnShape {
        experts,
        hidden: h,
        intermediate: i,
    } = ffn.shape;
    (0..experts)
        .map(|e| {
            let (w1, w3) = super::interleave::deinterleave_w13(
                &ffn.w13[e * 2 * i * h..(e + 1) * 2 * i * h],
                i,
                h,
            )?;
            let w2: Vec<f32> = ffn.w2[e * h * i..(e + 1) * h * i]
                .iter()
                .map(|&b| from_bf16(b))
                .collect();
            Ok(HostExpert {
                w1: HostTensor::owned(format!("experts.{e}.w1"), vec![i, h], w1),
                w2: HostTensor::owned(format!("experts.{e}.w2"), vec![h, i], w2),
                w3: HostTensor::owned(format!("experts.{e}.w3"), vec![i, h], w3),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_sequential_sum_on_exact_values() {
        let a: Vec<f32> = (0..21).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..21).map(|v| (v % 3) as f32).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
    }

    #[test]
    fn gemm_nt_is_a_times_b_transposed() {
        // A [2, 8], B [3, 8] with small integers: every sum exact.
        let a: Vec<f32> = (0..16).map(|v| (v % 5) as f32).collect();
        let bf: Vec<f32> = (0..24).map(|v| (v % 7) as f32 - 3.0).collect();
        let b: Vec<u16> = bf.iter().map(|&v| to_bf16(v)).collect();
        let c = gemm_nt(&a, &b, 2, 3, 8);
        for r in 0..2 {
            for j in 0..3 {
                let want: f32 = (0..8).map(|k| a[r * 8 + k] * bf[j * 8 + k]).sum();
                assert_eq!(c[r * 3 + j], want);
            }
        }
    }

    #[test]
    fn host_round_trip_and_shape_errors() {
        let shape = FfnShape::new(2, 16, 8).unwrap();
        let r = ExpertFfnRef::random(shape, 5).unwrap();
        let host = to_host(&r).unwrap();
        assert_eq!(ExpertFfnRef::from_host(&host).unwrap(), r);
        assert_eq!(
            ExpertFfnRef::from_host(&[]).unwrap_err(),
            ExpertError::NoExperts
        );
        let mut bad = to_host(&r).unwrap();
        bad[1].w2 = HostTensor::owned("w2", vec![8, 16], vec![0.0; 128]);
        let e = ExpertFfnRef::from_host(&bad).unwrap_err();
        assert!(e.to_string().contains("expert 1: w2"), "{e}");
        assert!(ExpertFfnRef::new(shape, vec![0; 3], vec![]).is_err());
    }
}
