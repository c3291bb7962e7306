//! The one safe door to the hashed bf16 init kernel: allocate, then fill in full.

use super::{launch, GpuError};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use std::sync::Arc;

/// `n` bf16 (raw bits) uniform in `[-scale, scale)` from the hash stream `seed`, drawn on the
/// device and stream-ordered on `stream` (CPU twin: `expert::init`). At least one element is
/// allocated, as CUDA allocations are never empty.
pub fn hashed_bf16(
    stream: &Arc<CudaStream>,
    n: usize,
    seed: u32,
    scale: f32,
) -> Result<CudaSlice<u16>, GpuError> {
    if !scale.is_finite() {
        return Err(GpuError::Shape {
            what: "hashed init scale",
            got: format!("{scale}"),
            expected: "a finite number".into(),
        });
    }
    // SAFETY: every element is written by the kernel below before anything can read it.
    let mut buf = unsafe { stream.alloc::<u16>(n.max(1)) }?;
    {
        let (ptr, _guard) = buf.device_ptr_mut(stream);
        // SAFETY: `ptr` holds at least `n` bf16 of this stream's context; `buf` (and the guard)
        // outlive the launch, which is ordered on `stream` before any later use of `buf`.
        unsafe { launch::fill_hash_bf16(ptr, n as u64, seed, scale, stream.cu_stream() as _)? };
    }
    Ok(buf)
}
