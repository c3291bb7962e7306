//! [`GpuPlan`]'s gather of token rows into dispatch order and the weighted
//! combine back (the bf16 ones through [`super::rows`]).

use super::buffers::scratch;
use super::rows::{self, CombineMap, RowMap};
use super::{GpuDispatch, GpuPlan};
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

impl GpuPlan {
    /// `out[t] = sum_i w_i y[row_i]` for f32 expert outputs `y` laid out by `d`.
    pub fn combine_f32(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<f32>,
        hidden: usize,
    ) -> Result<CudaSlice<f32>, GpuError> {
        if hidden == 0 || y.len() < d.max_rows * hidden {
            let what = "expert outputs (rows x hidden, hidden >= 1)";
            return Err(crate::RoutingError::ShapeMismatch {
                what,
                len: y.len(),
                expected: d.max_rows * hidden.max(1),
            }
            .into());
        }
        let st = &self.stream;
        let t = self.tokens();
        let mut out = scratch::<f32>(st, t * hidden)?;
        let (o, _g1) = self.offsets.device_ptr(st);
        let (w, _g2) = self.weights.device_ptr(st);
        let (a, _g3) = d.assignment_row.device_ptr(st);
        let (yp, _g4) = y.device_ptr(st);
        let (op, _g5) = out.device_ptr_mut(st);
        let args = sys::capmoe_combine_args {
            offsets: ptr(o),
            weights: ptr(w),
            assignment_row: ptr(a),
            y: ptr(yp),
            tokens: t as i32,
            hidden: to_i32("hidden", hidden)?,
            out: ptr_mut(op),
        };
        // SAFETY: the plan's offsets and weights and the dispatch's rows come
        // from the routing kernels of this plan; y checked above, out holds
        // tokens * hidden.
        unsafe { launch::combine_f32(&args, st.cu_stream() as Stream)? };
        drop((_g1, _g2, _g3, _g4, _g5));
        Ok(out)
    }

    /// Combine for bf16 expert outputs (raw u16 bits), f32 accumulation,
    /// bf16 result `[T, hidden]`.
    pub fn combine_bf16(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        rows::combine_bf16(&self.stream, &CombineMap::of_dispatch(self, d), y, hidden)
    }

    /// Gathers bf16 token activations `[T, hidden]` (as raw u16 bits) into dispatch rows.
    pub fn gather_bf16(
        &self,
        d: &GpuDispatch,
        x: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        // T = 0 may pass a one-element buffer (cudarc cannot allocate zero
        // bytes), as `route` allows for its logits.
        if hidden != 0 && x.len() != self.tokens() * hidden && !(self.tokens() == 0 && x.len() <= 1)
        {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "token activations",
                len: x.len(),
                expected: self.tokens() * hidden,
            }
            .into());
        }
        rows::gather_bf16(&self.stream, x, hidden, &RowMap::of_dispatch(self, d))
    }
}
