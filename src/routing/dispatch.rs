//! Dispatch layout: expert-contiguous rows, each expert's segment padded to a
//! tile multiple (what a grouped GEMM reads), plus the compacted overflow list.
//! CPU twin of the dispatch kernels.

use super::error::RoutingError;
use super::plan::RoutingPlan;

/// Token index of a padding row.
pub const PAD: u32 = u32::MAX;

/// A top-k assignment its expert did not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// The token (row of the batch).
    pub token: u32,
    /// The expert that dropped it.
    pub expert: u32,
}

/// One group of a grouped GEMM, `C[m, n] = A[m, k] * B[n, k]^T`, laid out as
/// CUTLASS's `GemmCoord` (three `i32`), so one buffer feeds SM80 and SM90.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct GemmProblem {
    /// Rows: the expert's served tokens (unpadded).
    pub m: i32,
    /// Output columns.
    pub n: i32,
    /// Inner (reduction) dimension.
    pub k: i32,
}

/// Per-expert problem sizes and device addresses a grouped GEMM reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupedGemmArgs {
    /// One problem per expert, `E` entries.
    pub problems: Vec<GemmProblem>,
    /// Device byte address of each expert's first `A` row.
    pub a: Vec<u64>,
    /// Device byte address of each expert's weight `B_e`.
    pub b: Vec<u64>,
    /// Device byte address of each expert's first `C` row.
    pub c: Vec<u64>,
}

/// Where every served assignment sits in the expert-major activation buffer.
///
/// Expert `e` owns rows `offsets[e]..offsets[e+1]`; its first `counts[e]` rows
/// are its tokens in increasing token order, the rest are padding.
///
/// ```
/// use capmoe::routing::{route, Logits, Policy, RouterConfig, DispatchLayout, PAD};
/// let logits = [2.0f32, 1.0, 0.0, 3.0, 0.0, 1.0];
/// let plan = route(&Logits::new(&logits, 2, 3).unwrap(), &RouterConfig::new(1, Policy::None)).unwrap();
/// let d = DispatchLayout::new(&plan, 4).unwrap();
/// assert_eq!(d.offsets(), &[0, 4, 4, 4]);
/// assert_eq!(&d.row_tokens()[..2], &[0, 1]);
/// assert_eq!(d.row_tokens()[2], PAD);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchLayout {
    tile: usize,
    counts: Vec<u32>,
    offsets: Vec<u32>,
    row_token: Vec<u32>,
    row_weight: Vec<f32>,
    assignment_row: Vec<u32>,
    overflow: Vec<Overflow>,
}

impl DispatchLayout {
    /// Lays out `plan` with segments padded to a multiple of `tile` rows.
    pub fn new(plan: &RoutingPlan, tile: usize) -> Result<Self, RoutingError> {
        if tile == 0 {
            return Err(RoutingError::ZeroTile);
        }
        let experts = plan.experts();
        let counts: Vec<u32> = plan.stats().load.iter().map(|&l| l as u32).collect();
        let mut offsets = vec![0u32; experts + 1];
        for e in 0..experts {
            offsets[e + 1] = offsets[e] + (counts[e] as usize).div_ceil(tile) as u32 * tile as u32;
        }
        let rows = offsets[experts] as usize;
        let mut row_token = vec![PAD; rows];
        let mut row_weight = vec![0.0f32; rows];
        let mut cursor: Vec<u32> = offsets[..experts].to_vec();
        let mut assignment_row = Vec::with_capacity(plan.len());
        let mut overflow = Vec::new();
        for t in 0..plan.tokens() {
            let range = plan.offsets()[t] as usize..plan.offsets()[t + 1] as usize;
            let served = &plan.expert_ids()[range.clone()];
            for (&e, &w) in served.iter().zip(&plan.weights()[range]) {
                let r = cursor[e as usize];
                cursor[e as usize] += 1;
                row_token[r as usize] = t as u32;
                row_weight[r as usize] = w;
                assignment_row.push(r);
            }
            for &e in plan.topk(t) {
                if !served.contains(&e) {
                    overflow.push(Overflow {
                        token: t as u32,
                        expert: e,
                    });
                }
            }
        }
        Ok(Self {
            tile,
            counts,
            offsets,
            row_token,
            row_weight,
            assignment_row,
            overflow,
        })
    }

    /// This layout (of `plan`) over experts `group` only (an EP rank's
    /// experts): local expert `i` is the plan's expert `group.start + i`, its
    /// rows its tokens in increasing token order (the same rows in the same
    /// order as here). Assignments to other experts get row [`PAD`]; the
    /// overflow lists the group's only.
    pub fn for_experts(
        &self,
        plan: &RoutingPlan,
        group: std::ops::Range<usize>,
    ) -> Result<Self, RoutingError> {
        let experts = self.counts.len();
        if group.end > experts || group.is_empty() {
            return Err(RoutingError::ShapeMismatch {
                what: "expert group end",
                len: group.end,
                expected: experts,
            });
        }
        check_len("plan assignments", plan.len(), self.assignment_row.len())?;
        let whole = self;
        let (o0, o1) = (
            whole.offsets[group.start] as usize,
            whole.offsets[group.end] as usize,
        );
        let base = o0 as u32;
        let in_group = |e: u32| group.contains(&(e as usize));
        Ok(Self {
            tile: self.tile,
            counts: whole.counts[group.clone()].to_vec(),
            offsets: whole.offsets[group.start..=group.end]
                .iter()
                .map(|o| o - base)
                .collect(),
            row_token: whole.row_token[o0..o1].to_vec(),
            row_weight: whole.row_weight[o0..o1].to_vec(),
            assignment_row: whole
                .assignment_row
                .iter()
                .zip(plan.expert_ids())
                .map(|(&r, &e)| if in_group(e) { r - base } else { PAD })
                .collect(),
            overflow: whole
                .overflow
                .iter()
                .filter(|o| in_group(o.expert))
                .map(|o| Overflow {
                    token: o.token,
                    expert: o.expert - group.start as u32,
                })
                .collect(),
        })
    }

    /// Segment padding multiple, in rows (>= 1).
    pub fn tile(&self) -> usize {
        self.tile
    }
    /// Served rows per expert.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }
    /// Padded segment starts, `E + 1` entries.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// Rows in all, padding included.
    pub fn rows(&self) -> usize {
        self.row_token.len()
    }
    /// Source token of every row ([`PAD`] for padding).
    pub fn row_tokens(&self) -> &[u32] {
        &self.row_token
    }
    /// Combine weight of every row (0 for padding).
    pub fn row_weights(&self) -> &[f32] {
        &self.row_weight
    }
    /// Row of each plan assignment, in the plan's token-major order.
    pub fn assignment_rows(&self) -> &[u32] {
        &self.assignment_row
    }
    /// Top-k assignments not served by their expert, in flat `(t, j)` order.
    pub fn overflow(&self) -> &[Overflow] {
        &self.overflow
    }

    /// Grouped-GEMM arguments over this layout: expert `e` multiplies its
    /// `counts[e]` rows of `A` (row-major `[rows, k]`, starting at row
    /// `offsets[e]` of `a`) by its weight `B_e` (row-major `[n, k]` at
    /// `b + e * n * k` elements) into rows `offsets[e]..` of `C` (`[rows, n]`).
    /// Addresses are byte addresses for elements of `elem_bytes`. The CUDA
    /// twin is `capmoe_gemm_args`.
    pub fn gemm_args(
        &self,
        n: usize,
        k: usize,
        elem_bytes: u64,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<GroupedGemmArgs, RoutingError> {
        let (ni, ki) = (to_i32("GEMM n", n)?, to_i32("GEMM k", k)?);
        let (n, k) = (n as u64, k as u64);
        let mut args = GroupedGemmArgs {
            problems: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
        };
        for (e, &m) in self.counts.iter().enumerate() {
            let row = self.offsets[e] as u64;
            args.problems.push(GemmProblem {
                m: m as i32,
                n: ni,
                k: ki,
            });
            args.a.push(a + row * k * elem_bytes);
            args.b.push(b + e as u64 * n * k * elem_bytes);
            args.c.push(c + row * n * elem_bytes);
        }
        Ok(args)
    }

    /// Gathers token activations `[T, hidden]` into expert-major rows
    /// `[rows, hidden]`; padding rows are zero.
    pub fn scatter<T: Copy + Default>(
        &self,
        x: &[T],
        tokens: usize,
        hidden: usize,
    ) -> Result<Vec<T>, RoutingError> {
        check_len("token activations", x.len(), tokens * hidden)?;
        let mut out = vec![T::default(); self.rows() * hidden];
        for (r, &t) in self.row_token.iter().enumerate() {
            if t != PAD {
                let t = t as usize;
                out[r * hidden..(r + 1) * hidden].copy_from_slice(&x[t * hidden..(t + 1) * hidden]);
            }
        }
        Ok(out)
    }
}

fn to_i32(what: &'static str, v: usize) -> Result<i32, RoutingError> {
    i32::try_from(v).map_err(|_| RoutingError::ShapeMismatch {
        what,
        len: v,
        expected: i32::MAX as usize,
    })
}

pub(crate) fn check_len(
    what: &'static str,
    len: usize,
    expected: usize,
) -> Result<(), RoutingError> {
    if len == expected {
        Ok(())
    } else {
        Err(RoutingError::ShapeMismatch {
            what,
            len,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::routing::{route, Logits, Policy, RouterConfig};

    #[test]
    fn gemm_args_point_at_each_experts_rows_and_weights() {
        // 3 tokens on expert 0, 1 on expert 2, none on expert 1; tile 4.
        let l = [
            5.0f32, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0,
        ];
        let plan = route(
            &Logits::new(&l, 4, 3).unwrap(),
            &RouterConfig::new(1, Policy::None),
        )
        .unwrap();
        let d = super::DispatchLayout::new(&plan, 4).unwrap();
        assert_eq!(d.offsets(), &[0, 4, 4, 8]);
        let g = d.gemm_args(16, 8, 2, 1000, 2000, 3000).unwrap();
        let m: Vec<i32> = g.problems.iter().map(|p| p.m).collect();
        assert_eq!(m, vec![3, 0, 1]);
        assert!(g.problems.iter().all(|p| p.n == 16 && p.k == 8));
        assert_eq!(g.a, vec![1000, 1000 + 4 * 8 * 2, 1000 + 4 * 8 * 2]);
        assert_eq!(g.b, vec![2000, 2000 + 16 * 8 * 2, 2000 + 2 * 16 * 8 * 2]);
        assert_eq!(g.c, vec![3000, 3000 + 4 * 16 * 2, 3000 + 4 * 16 * 2]);
        assert!(d.gemm_args(1 << 31, 8, 2, 0, 0, 0).is_err());
    }

    #[test]
    fn a_groups_layout_is_its_slice_of_the_whole() {
        let l = [
            5.0f32, 0.0, 4.0, 0.0, 0.0, 5.0, 0.0, 4.0, 4.0, 0.0, 5.0, 0.0, 0.0, 4.0, 0.0, 5.0,
        ];
        let plan = route(
            &Logits::new(&l, 4, 4).unwrap(),
            &RouterConfig::new(2, Policy::None),
        )
        .unwrap();
        let whole = super::DispatchLayout::new(&plan, 2).unwrap();
        let g = whole.for_experts(&plan, 2..4).unwrap();
        let (o0, o1) = (whole.offsets()[2] as usize, whole.offsets()[4] as usize);
        assert_eq!(g.counts(), &whole.counts()[2..4]);
        assert_eq!(g.row_tokens(), &whole.row_tokens()[o0..o1]);
        assert_eq!(g.offsets()[0], 0);
        assert_eq!(g.rows(), o1 - o0);
        for (i, &e) in plan.expert_ids().iter().enumerate() {
            let r = g.assignment_rows()[i];
            if e >= 2 {
                assert_eq!(r as usize + o0, whole.assignment_rows()[i] as usize);
            } else {
                assert_eq!(r, super::PAD);
            }
        }
        assert!(whole.for_experts(&plan, 3..5).is_err());
        assert!(whole.for_experts(&plan, 2..2).is_err());
    }
}
