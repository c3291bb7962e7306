//! [`GpuDispatch`]: a plan's expert-contiguous padded rows on the device, and
//! the grouped-GEMM arguments made from them.

use super::buffers::{alloc, as_u32, scratch};
use super::GpuPlan;
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::{DispatchLayout, DispatchParts, GemmProblem, GroupedGemmArgs, RoutingError};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// Expert-contiguous padded rows of a [`GpuPlan`], on the device.
pub struct GpuDispatch {
    pub(super) tile: usize,
    pub(super) max_rows: usize,
    pub(super) padded: CudaSlice<i32>,
    pub(super) row_token: CudaSlice<u32>,
    pub(super) row_weight: CudaSlice<f32>,
    pub(super) assignment_row: CudaSlice<i32>,
    pub(super) total_rows: CudaSlice<i32>,
}

impl GpuDispatch {
    /// Hands the buffers to the active layer workspace, if any (else drops them).
    pub(crate) fn recycle(self) {
        crate::cuda::workspace::give(self.padded);
        crate::cuda::workspace::give(self.row_token);
        crate::cuda::workspace::give(self.row_weight);
        crate::cuda::workspace::give(self.assignment_row);
        crate::cuda::workspace::give(self.total_rows);
    }
}

impl GpuPlan {
    /// Lays the plan out in expert-contiguous rows padded to `tile`.
    pub fn dispatch(&self, tile: usize) -> Result<GpuDispatch, GpuError> {
        if tile == 0 {
            return Err(crate::RoutingError::ZeroTile.into());
        }
        let st = &self.stream;
        let experts = self.experts();
        let max_assign = self.max_assignments();
        let max_rows = max_assign + experts * (tile - 1);
        to_i32("dispatch rows", max_rows)?;
        let mut d = GpuDispatch {
            tile,
            max_rows,
            padded: alloc(st, experts + 1)?,
            row_token: scratch(st, max_rows)?,
            row_weight: scratch(st, max_rows)?,
            assignment_row: scratch(st, max_assign)?,
            total_rows: alloc(st, 1)?,
        };
        let bytes = launch::dispatch_workspace(max_assign as i64, self.shape.experts);
        let mut ws = scratch::<u8>(st, bytes)?;
        let (o, _g1) = self.offsets.device_ptr(st);
        let (x, _g2) = self.expert_ids.device_ptr(st);
        let (ti, _g3) = self.token_ids.device_ptr(st);
        let (w, _g4) = self.weights.device_ptr(st);
        let (l, _g5) = self.load.device_ptr(st);
        let (wsp, _g6) = ws.device_ptr_mut(st);
        let (pd, _g7) = d.padded.device_ptr_mut(st);
        let (rt, _g8) = d.row_token.device_ptr_mut(st);
        let (rw, _g9) = d.row_weight.device_ptr_mut(st);
        let (ar, _g10) = d.assignment_row.device_ptr_mut(st);
        let (tr, _g11) = d.total_rows.device_ptr_mut(st);
        let a = sys::capmoe_dispatch_args {
            offsets: ptr(o),
            expert_ids: ptr(x),
            token_ids: ptr(ti),
            weights: ptr(w),
            load: ptr(l),
            tokens: self.shape.tokens,
            experts: self.shape.experts,
            max_assign: max_assign as i64,
            tile: tile as i32,
            workspace: ptr_mut(wsp),
            workspace_bytes: bytes,
            padded: ptr_mut(pd),
            row_token: ptr_mut(rt),
            row_weight: ptr_mut(rw),
            assignment_row: ptr_mut(ar),
            total_rows: ptr_mut(tr),
        };
        // SAFETY: row buffers hold max_rows, assignment_row max_assign, workspace from the launcher's query.
        unsafe { launch::dispatch(&a, st.cu_stream() as Stream)? };
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7, _g8, _g9, _g10, _g11));
        crate::cuda::workspace::give(ws);
        Ok(d)
    }
}

/// Grouped-GEMM arguments on the device: `problems` is `3 * E` i32
/// (`GemmCoord` layout), `ptrs` the A, B and C address arrays.
pub struct GpuGemmArgs {
    /// `3 * E` i32: `(m, n, k)` per expert.
    pub problems: CudaSlice<i32>,
    /// A, B and C byte addresses, `E` each.
    pub ptrs: [CudaSlice<u64>; 3],
}

impl GpuGemmArgs {
    /// Hands the buffers to the active layer workspace, if any (else drops them).
    pub(crate) fn recycle(self) {
        let [a, b, c] = self.ptrs;
        crate::cuda::workspace::give(self.problems);
        crate::cuda::workspace::give(a);
        crate::cuda::workspace::give(b);
        crate::cuda::workspace::give(c);
    }

    /// Copies the arguments back (synchronises).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<GroupedGemmArgs, GpuError> {
        let p = stream.clone_dtoh(&self.problems)?;
        let problems = p
            .chunks_exact(3)
            .map(|c| GemmProblem {
                m: c[0],
                n: c[1],
                k: c[2],
            })
            .collect();
        let [a, b, c] = [0, 1, 2].map(|i| stream.clone_dtoh(&self.ptrs[i]));
        Ok(GroupedGemmArgs {
            problems,
            a: a?,
            b: b?,
            c: c?,
        })
    }
}

impl GpuDispatch {
    /// Problem sizes and A/B/C addresses for the experts' grouped GEMM, made
    /// on the device (see `DispatchLayout::gemm_args` for the layout).
    pub fn gemm_args(
        &self,
        plan: &GpuPlan,
        n: usize,
        k: usize,
        elem_bytes: u64,
        abc: [u64; 3],
    ) -> Result<GpuGemmArgs, GpuError> {
        if elem_bytes == 0 {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "element size",
                len: 0,
                expected: 2,
            }
            .into());
        }
        let st = &plan.stream;
        let experts = plan.experts();
        // Not zeroed: the kernel writes every entry (a thread per expert), and
        // four memsets per GEMM would be fixed cost in every timed forward.
        let mut args = GpuGemmArgs {
            problems: scratch(st, 3 * experts)?,
            ptrs: [
                scratch(st, experts)?,
                scratch(st, experts)?,
                scratch(st, experts)?,
            ],
        };
        let (pd, _g1) = self.padded.device_ptr(st);
        let (ld, _g2) = plan.load.device_ptr(st);
        let (pr, _g3) = args.problems.device_ptr_mut(st);
        let [pa, pb, pc] = &mut args.ptrs;
        let (a, _g4) = pa.device_ptr_mut(st);
        let (b, _g5) = pb.device_ptr_mut(st);
        let (c, _g6) = pc.device_ptr_mut(st);
        let ga = sys::capmoe_gemm_args_args {
            padded: ptr(pd),
            load: ptr(ld),
            experts: plan.shape.experts,
            n: to_i32("GEMM n", n)?,
            k: to_i32("GEMM k", k)?,
            elem_bytes,
            a: abc[0],
            b: abc[1],
            c: abc[2],
            problems: ptr_mut(pr),
            a_ptrs: ptr_mut(a),
            b_ptrs: ptr_mut(b),
            c_ptrs: ptr_mut(c),
        };
        // SAFETY: problems holds 3E, each pointer array E; padded/load come from this plan.
        unsafe { launch::gemm_args(&ga, st.cu_stream() as Stream)? };
        drop((_g1, _g2, _g3, _g4, _g5, _g6));
        Ok(args)
    }

    /// Segment padding multiple, in rows.
    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Row capacity of the buffers (`max_assign + E (tile - 1)`).
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The token of each row (`PAD` for padding), for kernels that skip padding.
    pub(crate) fn row_token(&self) -> &CudaSlice<u32> {
        &self.row_token
    }

    /// Rows in use (`padded[E]`), one i32 on the device.
    pub(crate) fn total_rows(&self) -> &CudaSlice<i32> {
        &self.total_rows
    }

    /// Copies the layout back (synchronises), trimmed to the rows in use, as
    /// the CPU oracle's [`DispatchLayout`] (checked by
    /// [`DispatchLayout::from_parts`]).
    pub fn to_host(&self, plan: &GpuPlan) -> Result<DispatchLayout, GpuError> {
        let st = &plan.stream;
        let total = st.clone_dtoh(&self.total_rows)?[0] as usize;
        let experts = plan.experts();
        let mut offsets = as_u32(st.clone_dtoh(&self.padded)?);
        offsets.truncate(experts + 1);
        let mut row_tokens = st.clone_dtoh(&self.row_token)?;
        let mut row_weights = st.clone_dtoh(&self.row_weight)?;
        if total > row_tokens.len() {
            let what = "dispatch rows in use (beyond the buffer)";
            return Err(RoutingError::ShapeMismatch {
                what,
                len: total,
                expected: row_tokens.len(),
            }
            .into());
        }
        row_tokens.truncate(total);
        row_weights.truncate(total);
        let n = st.clone_dtoh(&plan.offsets)?[plan.tokens()] as usize;
        let mut assignment_rows = as_u32(st.clone_dtoh(&self.assignment_row)?);
        assignment_rows.truncate(n);
        let parts = DispatchParts {
            tile: self.tile,
            offsets,
            row_tokens,
            row_weights,
            assignment_rows,
            overflow: plan.overflow_unchecked()?,
        };
        Ok(DispatchLayout::from_parts(parts, plan.tokens())?)
    }
}
