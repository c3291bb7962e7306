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

/// The arrays of a [`DispatchLayout`], as another backend computes them
/// (see [`DispatchLayout::from_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchParts {
    /// Segment padding multiple, in rows.
    pub tile: usize,
    /// Padded segment starts, `E + 1` entries.
    pub offsets: Vec<u32>,
    /// Token of each row, [`PAD`] for padding rows.
    pub row_tokens: Vec<u32>,
    /// Combine weight of each row, 0 for padding rows.
    pub row_weights: Vec<f32>,
    /// Row of each plan assignment, in the plan's token-major order.
    pub assignment_rows: Vec<u32>,
    /// Top-k assignments not served, in flat `(t, j)` order.
    pub overflow: Vec<Overflow>,
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

    /// A layout from arrays another backend computed (the CUDA dispatch kernels'
    /// output), checked: segments padded to the tile, each one's served rows
    /// first in increasing token order (tokens below `tokens`), padding rows
    /// [`PAD`] with weight 0, finite weights, assignment rows that point at
    /// served rows (or [`PAD`]) and overflow entries in range.
    ///
    /// ```
    /// use capmoe::routing::{DispatchLayout, DispatchParts, PAD};
    /// let parts = DispatchParts {
    ///     tile: 2,
    ///     offsets: vec![0, 2, 2],
    ///     row_tokens: vec![1, PAD],
    ///     row_weights: vec![0.5, 0.0],
    ///     assignment_rows: vec![0],
    ///     overflow: vec![],
    /// };
    /// let d = DispatchLayout::from_parts(parts.clone(), 2).unwrap();
    /// assert_eq!(d.counts(), &[1, 0]);
    /// let bad = DispatchParts { row_tokens: vec![PAD, 1], ..parts };
    /// assert!(DispatchLayout::from_parts(bad, 2).is_err());
    /// ```
    pub fn from_parts(parts: DispatchParts, tokens: usize) -> Result<Self, RoutingError> {
        let DispatchParts {
            tile,
            offsets,
            row_tokens,
            row_weights,
            assignment_rows,
            overflow,
        } = parts;
        if tile == 0 {
            return Err(RoutingError::ZeroTile);
        }
        let bad = |what, at| Err(RoutingError::BadLayout { what, at });
        if offsets.len() < 2 || offsets[0] != 0 {
            return bad("offsets need E + 1 >= 2 entries starting at 0", 0);
        }
        let experts = offsets.len() - 1;
        let rows = offsets[experts] as usize;
        check_len("dispatch row tokens", row_tokens.len(), rows)?;
        check_len("dispatch row weights", row_weights.len(), rows)?;
        let mut counts = Vec::with_capacity(experts);
        for e in 0..experts {
            let (a, b) = (offsets[e] as usize, offsets[e + 1] as usize);
            if b < a || (b - a) % tile != 0 {
                return bad("segment not a tile multiple", e);
            }
            let seg = &row_tokens[a..b];
            let n = seg.iter().take_while(|&&t| t != PAD).count();
            if n.div_ceil(tile) * tile != b - a {
                return bad("segment padded beyond its tile", e);
            }
            if let Some(i) = seg[n..].iter().position(|&t| t != PAD) {
                return bad("served row after padding", a + n + i);
            }
            if let Some(i) = seg[..n].windows(2).position(|w| w[0] >= w[1]) {
                return bad("tokens not increasing within a segment", a + i + 1);
            }
            if let Some(i) = seg[..n].iter().position(|&t| t as usize >= tokens) {
                return bad("row token out of range", a + i);
            }
            counts.push(n as u32);
        }
        for (r, (&t, &w)) in row_tokens.iter().zip(&row_weights).enumerate() {
            if !w.is_finite() || (t == PAD && w != 0.0) {
                return bad("row weight not finite, or nonzero on padding", r);
            }
        }
        for (i, &r) in assignment_rows.iter().enumerate() {
            if r != PAD && row_tokens.get(r as usize).is_none_or(|&t| t == PAD) {
                return bad("assignment row not a served row", i);
            }
        }
        for (i, o) in overflow.iter().enumerate() {
            if o.token as usize >= tokens || o.expert as usize >= experts {
                return bad("overflow entry out of range", i);
            }
        }
        Ok(Self {
            tile,
            counts,
            offsets,
            row_token: row_tokens,
            row_weight: row_weights,
            assignment_row: assignment_rows,
            overflow,
        })
    }

    /// The layout's arrays (the inverse of [`Self::from_parts`]).
    pub fn into_parts(self) -> DispatchParts {
        DispatchParts {
            tile: self.tile,
            offsets: self.offsets,
            row_tokens: self.row_token,
            row_weights: self.row_weight,
            assignment_rows: self.assignment_row,
            overflow: self.overflow,
        }
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
#[path = "dispatch_tests.rs"]
mod tests;
