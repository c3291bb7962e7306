//! Gather of token rows into dispatch order and the weighted combine back.

use super::buffers::scratch;
use super::{GpuDispatch, GpuPlan};
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

/// A combine launcher of [`launch`] (f32 or bf16).
type CombineLauncher = unsafe fn(&sys::capmoe_combine_args, Stream) -> Result<(), GpuError>;

impl GpuPlan {
    /// `out[t] = sum_i w_i y[row_i]` for f32 expert outputs `y` laid out by `d`.
    pub fn combine_f32(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<f32>,
        hidden: usize,
    ) -> Result<CudaSlice<f32>, GpuError> {
        self.combine_with(d, y, hidden, launch::combine_f32)
    }

    /// Combine for bf16 expert outputs (raw u16 bits), f32 accumulation,
    /// bf16 result `[T, hidden]`.
    pub fn combine_bf16(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        self.combine_with(d, y, hidden, launch::combine_bf16_args)
    }

    /// Shape checks and launch shared by the combine variants.
    fn combine_with<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<T>,
        hidden: usize,
        launcher: CombineLauncher,
    ) -> Result<CudaSlice<T>, GpuError> {
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
        let mut out = scratch::<T>(st, t * hidden)?;
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
        // SAFETY: y checked above (the element type matches the launcher at
        // both call sites); out holds tokens * hidden.
        unsafe { launcher(&args, st.cu_stream() as Stream)? };
        drop((_g1, _g2, _g3, _g4, _g5));
        Ok(out)
    }

    /// Gathers bf16 token activations `[T, hidden]` (as raw u16 bits) into dispatch rows.
    pub fn gather_bf16(
        &self,
        d: &GpuDispatch,
        x: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        if hidden == 0 || hidden % 8 != 0 {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "hidden size (a multiple of 8 for 16-byte rows)",
                len: hidden,
                expected: hidden.div_ceil(8).max(1) * 8,
            }
            .into());
        }
        // T = 0 may pass a one-element buffer (cudarc cannot allocate zero
        // bytes), as `route` allows for its logits.
        if x.len() != self.tokens() * hidden && !(self.tokens() == 0 && x.len() <= 1) {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "token activations",
                len: x.len(),
                expected: self.tokens() * hidden,
            }
            .into());
        }
        let st = &self.stream;
        let mut out = scratch::<u16>(st, d.max_rows * hidden)?;
        let (xp, _g1) = x.device_ptr(st);
        let (rt, _g2) = d.row_token.device_ptr(st);
        let (tr, _g3) = d.total_rows.device_ptr(st);
        let (op, _g4) = out.device_ptr_mut(st);
        // SAFETY: shapes checked above; out holds max_rows * hidden.
        unsafe {
            launch::gather_bf16(
                xp,
                rt,
                tr,
                d.max_rows as i64,
                to_i32("hidden", hidden)?,
                op,
                st.cu_stream() as Stream,
            )?
        };
        drop((_g1, _g2, _g3, _g4));
        Ok(out)
    }
}
