//! The one safe door to the hashed bf16 init kernel: allocate, then fill in full.

use super::{launch, GpuError};
use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtrMut};
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
    check_scale(scale)?;
    let mut buf = super::alloc::uninit::<u16>(stream, n)?;
    fill_hashed_bf16(stream, &mut buf.slice_mut(..n), seed, scale)?;
    Ok(buf)
}

/// Fills `out` in full as [`hashed_bf16`] would draw `out.len()` values from `seed`
/// (so one buffer can hold several independently seeded draws).
pub(crate) fn fill_hashed_bf16(
    stream: &Arc<CudaStream>,
    out: &mut CudaViewMut<'_, u16>,
    seed: u32,
    scale: f32,
) -> Result<(), GpuError> {
    check_scale(scale)?;
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    let (ptr, _guard) = out.device_ptr_mut(stream);
    // SAFETY: `ptr` holds `n` bf16 of this stream's context; the view (and the guard) outlive
    // the launch, which is ordered on `stream` before any later use of the buffer.
    unsafe { launch::fill_hash_bf16(ptr, n as u64, seed, scale, stream.cu_stream() as _)? };
    Ok(())
}

fn check_scale(scale: f32) -> Result<(), GpuError> {
    if scale.is_finite() {
        return Ok(());
    }
    Err(GpuError::Shape {
        what: "hashed init scale",
        got: format!("{scale}"),
        expected: "a finite number".into(),
    })
}
