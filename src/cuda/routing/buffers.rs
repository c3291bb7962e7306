//! Device buffers of the routing path: zeroed or scratch, never zero bytes.

use crate::cuda::GpuError;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;

/// A zeroed device buffer of `n` elements (at least 1: no zero-byte allocs).
pub(super) fn alloc<T: DeviceRepr + ValidAsZeroBits + Send + 'static>(
    s: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>, GpuError> {
    if let Some(b) = crate::cuda::workspace::take_zeroed(s, n)? {
        return Ok(b);
    }
    Ok(s.alloc_zeros::<T>(n.max(1))?)
}

/// An uninitialised device buffer of `n` elements (at least 1), for outputs
/// and scratch the kernels overwrite: zeroing them would be one more launch
/// and pass over memory per buffer on the routing hot path.
pub(super) fn scratch<T: DeviceRepr + Send + 'static>(
    s: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>, GpuError> {
    if let Some(b) = crate::cuda::workspace::take(s, n) {
        return Ok(b);
    }
    // SAFETY: callers only use this for buffers whose every read element is
    // first written by a kernel on the same stream: gate writes probs/topk/
    // topk_sum in full, select and next-best write every served slot, cub and
    // the launchers write their workspace before reading it, the plan, dispatch
    // and combine outputs are read only up to the counts the kernels wrote
    // (offsets[T], total_rows, T * hidden), clear_rows fills every row,
    // gemm_args writes all 3E problem sizes and E pointers of each array, and
    // capmoe_plan_stats writes its whole record (totals zeroed first).
    Ok(unsafe { s.alloc::<T>(n.max(1)) }?)
}

pub(super) fn as_u32(v: Vec<i32>) -> Vec<u32> {
    v.into_iter().map(|x| x as u32).collect()
}
