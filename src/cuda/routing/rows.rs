//! `safe` layer of the row movers (cuda/routing/dispatch.cu's gather,
//! cuda/routing/combine.cu): the kernels index token rows and expert-output
//! rows with device-held indices that they cannot check, so the indices come
//! in types that hold the invariant by construction. A [`RowMap`] or
//! [`CombineMap`] is either made on the device by the routing kernels (a
//! [`GpuDispatch`] of a [`GpuPlan`]) or uploaded from a host layout whose
//! indices are checked here first.

use super::{GpuDispatch, GpuPlan};
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::{DispatchLayout, RoutingPlan, PAD};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// Dispatch rows on the device: each row's token (`PAD` for padding) and
/// the count of real rows, every token below `tokens`.
pub(crate) struct RowMap<'a> {
    row_token: &'a CudaSlice<u32>,
    total_rows: &'a CudaSlice<i32>,
    max_rows: usize,
    tokens: usize,
}

impl<'a> RowMap<'a> {
    /// The rows of a device dispatch of `plan` (made by the dispatch kernel,
    /// so every token is one of the plan's).
    pub(crate) fn of_dispatch(plan: &GpuPlan, d: &'a GpuDispatch) -> Self {
        Self {
            row_token: &d.row_token,
            total_rows: &d.total_rows,
            max_rows: d.max_rows,
            tokens: plan.tokens(),
        }
    }
}

/// A host [`DispatchLayout`]'s rows uploaded, checked against the token
/// count; [`HostRows::map`] lends them as a [`RowMap`].
pub(crate) struct HostRows {
    row_token: CudaSlice<u32>,
    total_rows: CudaSlice<i32>,
    rows: usize,
    tokens: usize,
}

impl HostRows {
    /// Uploads `layout`'s rows for `tokens` token rows; refuses a row whose
    /// token is neither `PAD` nor below `tokens`.
    pub(crate) fn upload(
        st: &Arc<CudaStream>,
        layout: &DispatchLayout,
        tokens: usize,
    ) -> Result<Self, GpuError> {
        let rt = layout.row_tokens();
        Self::from_tokens(st, &rt[..layout.rows().min(rt.len())], tokens)
    }

    /// Uploads rows whose sources are `row_token` (`PAD` for a zero row)
    /// among `tokens` source rows; refuses a source that is neither `PAD`
    /// nor below `tokens`.
    pub(crate) fn from_tokens(
        st: &Arc<CudaStream>,
        row_token: &[u32],
        tokens: usize,
    ) -> Result<Self, GpuError> {
        if let Some(&t) = row_token
            .iter()
            .find(|&&t| t != PAD && t as usize >= tokens)
        {
            return Err(GpuError::Shape {
                what: "dispatch layout row token",
                got: t.to_string(),
                expected: format!("PAD or below {tokens} tokens"),
            });
        }
        let rows = row_token.len();
        let total_rows = st.clone_htod(&[to_i32("layout rows", rows)?])?;
        let row_token = if row_token.is_empty() {
            st.clone_htod(&[PAD])?
        } else {
            st.clone_htod(row_token)?
        };
        Ok(Self {
            row_token,
            total_rows,
            rows,
            tokens,
        })
    }

    /// The uploaded rows as a [`RowMap`].
    pub(crate) fn map(&self) -> RowMap<'_> {
        RowMap {
            row_token: &self.row_token,
            total_rows: &self.total_rows,
            max_rows: self.rows,
            tokens: self.tokens,
        }
    }
}

/// Gathers bf16 token rows `[tokens, hidden]` of `x` into `rows`' order:
/// returns `[rows.rows(), hidden]` bf16, zeros for padding rows. `hidden`
/// is a multiple of 8 (16-byte rows). A map of no tokens accepts a one-element
/// `x` (cudarc allocates no zero bytes).
pub(crate) fn gather_bf16(
    st: &Arc<CudaStream>,
    x: &impl DevicePtr<u16>,
    hidden: usize,
    rows: &RowMap<'_>,
) -> Result<CudaSlice<u16>, GpuError> {
    if hidden == 0 || hidden % 8 != 0 {
        return Err(crate::RoutingError::ShapeMismatch {
            what: "hidden size (a multiple of 8 for 16-byte rows)",
            len: hidden,
            expected: hidden.div_ceil(8).max(1) * 8,
        }
        .into());
    }
    let need = rows.tokens.checked_mul(hidden).ok_or(GpuError::TooLarge {
        what: "tokens * hidden",
        value: rows.tokens,
    })?;
    if x.len() < need {
        return Err(crate::RoutingError::ShapeMismatch {
            what: "token activations",
            len: x.len(),
            expected: need,
        }
        .into());
    }
    let n = rows
        .max_rows
        .checked_mul(hidden)
        .ok_or(GpuError::TooLarge {
            what: "rows * hidden",
            value: rows.max_rows,
        })?;
    // Unset contents: the gather writes every one of the max_rows rows (zeros for
    // padding and for rows past the real count).
    let mut out = crate::cuda::uninit::<u16>(st, n)?;
    if rows.max_rows == 0 {
        return Ok(out);
    }
    let h = to_i32("hidden", hidden)?;
    let max_rows = i64::try_from(rows.max_rows).map_err(|_| GpuError::TooLarge {
        what: "dispatch rows",
        value: rows.max_rows,
    })?;
    let (xp, _g1) = x.device_ptr(st);
    let (rt, _g2) = rows.row_token.device_ptr(st);
    let (tr, _g3) = rows.total_rows.device_ptr(st);
    let (op, _g4) = out.device_ptr_mut(st);
    // SAFETY: x holds tokens * hidden (checked) and every row token is PAD
    // or below tokens (RowMap's invariant); row_token holds max_rows
    // entries, out max_rows * hidden; the guards outlive the launch.
    unsafe { launch::gather_bf16(xp, rt, tr, max_rows, h, op, st.cu_stream() as Stream) }?;
    drop((_g1, _g2, _g3, _g4));
    Ok(out)
}

/// A plan's assignments on the device, for the combine: `offsets`
/// (`tokens + 1`, non-decreasing from 0), one weight and one expert-output
/// row per assignment, every row below `rows`.
pub(crate) struct CombineMap<'a> {
    offsets: &'a CudaSlice<i32>,
    weights: &'a CudaSlice<f32>,
    assignment_row: &'a CudaSlice<i32>,
    tokens: usize,
    rows: usize,
}

impl<'a> CombineMap<'a> {
    /// The assignments of a device plan laid out by its dispatch `d`.
    pub(crate) fn of_dispatch(plan: &'a GpuPlan, d: &'a GpuDispatch) -> Self {
        Self {
            offsets: &plan.offsets,
            weights: &plan.weights,
            assignment_row: &d.assignment_row,
            tokens: plan.tokens(),
            rows: d.max_rows,
        }
    }
}

/// A host plan's assignments and a layout's rows, checked and uploaded;
/// [`HostCombine::map`] lends them as a [`CombineMap`].
pub(crate) struct HostCombine {
    offsets: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    assignment_row: CudaSlice<i32>,
    tokens: usize,
    rows: usize,
}

impl HostCombine {
    /// Uploads `plan`'s offsets and weights and `layout`'s assignment rows;
    /// refuses offsets that do not step from 0 to the assignment count or
    /// a row outside the layout.
    pub(crate) fn upload(
        st: &Arc<CudaStream>,
        plan: &RoutingPlan,
        layout: &DispatchLayout,
    ) -> Result<Self, GpuError> {
        if plan.offsets().len() != plan.tokens() + 1 {
            return Err(GpuError::Shape {
                what: "combine offsets",
                got: plan.offsets().len().to_string(),
                expected: format!("{} (tokens + 1)", plan.tokens() + 1),
            });
        }
        Self::from_parts(
            st,
            plan.offsets(),
            plan.weights(),
            layout.assignment_rows(),
            layout.rows(),
        )
    }

    /// Uploads assignments given as parts: `offsets` (tokens + 1, stepping
    /// from 0 to the assignment count), one weight and one row per
    /// assignment, every row below `rows`. Refuses anything else.
    pub(crate) fn from_parts(
        st: &Arc<CudaStream>,
        off: &[u32],
        w: &[f32],
        assignment_rows: &[u32],
        rows: usize,
    ) -> Result<Self, GpuError> {
        let n = w.len();
        let steps = off.first() == Some(&0)
            && off.windows(2).all(|p| p[0] <= p[1])
            && off.last().map(|&l| l as usize) == Some(n)
            && assignment_rows.len() == n;
        if !steps {
            return Err(GpuError::Shape {
                what: "combine offsets / assignment rows",
                got: format!(
                    "{} offsets, {} weights, {} rows",
                    off.len(),
                    n,
                    assignment_rows.len()
                ),
                expected: format!("non-decreasing offsets from 0 to {n}, one row per weight"),
            });
        }
        if let Some(&r) = assignment_rows.iter().find(|&&r| r as usize >= rows) {
            return Err(GpuError::Shape {
                what: "combine assignment row",
                got: r.to_string(),
                expected: format!("below the layout's {rows} rows"),
            });
        }
        let as_i32 = |v: &[u32]| -> Result<Vec<i32>, GpuError> {
            v.iter()
                .map(|&x| to_i32("combine index", x as usize))
                .collect()
        };
        let upload_i32 = |v: Vec<i32>| st.clone_htod(if v.is_empty() { &[0][..] } else { &v });
        Ok(Self {
            offsets: upload_i32(as_i32(off)?)?,
            weights: st.clone_htod(if w.is_empty() { &[0.0][..] } else { w })?,
            assignment_row: upload_i32(as_i32(assignment_rows)?)?,
            tokens: off.len() - 1,
            rows,
        })
    }

    /// The uploaded assignments as a [`CombineMap`].
    pub(crate) fn map(&self) -> CombineMap<'_> {
        CombineMap {
            offsets: &self.offsets,
            weights: &self.weights,
            assignment_row: &self.assignment_row,
            tokens: self.tokens,
            rows: self.rows,
        }
    }
}

/// `out[t] = sum_i w_i y[row_i]` over `map`'s assignments for bf16 expert
/// outputs `y` (`[map rows, hidden]`), f32 accumulation, one bf16 rounding.
/// Returns `[tokens, hidden]` bf16.
pub(crate) fn combine_bf16(
    st: &Arc<CudaStream>,
    map: &CombineMap<'_>,
    y: &impl DevicePtr<u16>,
    hidden: usize,
) -> Result<CudaSlice<u16>, GpuError> {
    let need = map.rows.checked_mul(hidden).ok_or(GpuError::TooLarge {
        what: "rows * hidden",
        value: map.rows,
    })?;
    if hidden == 0 || y.len() < need {
        return Err(crate::RoutingError::ShapeMismatch {
            what: "expert outputs (rows x hidden, hidden >= 1)",
            len: y.len(),
            expected: need.max(1),
        }
        .into());
    }
    let n = map.tokens.checked_mul(hidden).ok_or(GpuError::TooLarge {
        what: "tokens * hidden",
        value: map.tokens,
    })?;
    // Unset contents: the combine writes every token row.
    let mut out = crate::cuda::uninit::<u16>(st, n)?;
    if map.tokens == 0 {
        return Ok(out);
    }
    let (o, _g1) = map.offsets.device_ptr(st);
    let (w, _g2) = map.weights.device_ptr(st);
    let (a, _g3) = map.assignment_row.device_ptr(st);
    let (yp, _g4) = y.device_ptr(st);
    let (op, _g5) = out.device_ptr_mut(st);
    let args = sys::capmoe_combine_args {
        offsets: ptr(o),
        weights: ptr(w),
        assignment_row: ptr(a),
        y: ptr(yp),
        tokens: to_i32("tokens", map.tokens)?,
        hidden: to_i32("hidden", hidden)?,
        out: ptr_mut(op),
    };
    // SAFETY: CombineMap's invariant (offsets step within the weights and
    // rows, every row below `rows`), y holds rows * hidden (checked), out
    // tokens * hidden; the guards outlive the launch.
    unsafe { launch::combine_bf16_args(&args, st.cu_stream() as Stream) }?;
    drop((_g1, _g2, _g3, _g4, _g5));
    Ok(out)
}
