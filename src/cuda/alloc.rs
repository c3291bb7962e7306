//! Device buffers whose contents a kernel writes: allocated without the
//! memset that zeroing would cost (one more pass over memory per buffer).

use super::GpuError;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
#[cfg(feature = "nccl")]
use cudarc::driver::{CudaView, CudaViewMut};
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// Element types for which every bit pattern is a valid value (no padding,
/// no niche, no pointer): stale device bits read back are a wrong number,
/// never undefined behaviour.
pub(crate) trait Plain: DeviceRepr + Send + 'static + sealed::Sealed {}

macro_rules! plain {
    ($($t:ty),*) => {$(impl sealed::Sealed for $t {} impl Plain for $t {})*};
}
plain!(u8, u16, u32, u64, i32, i64, f32);

/// `n` elements (at least 1: CUDA allocations are never empty), contents
/// unset. Callers use it for outputs their kernels or copies write before
/// anything reads them (correctness); soundness does not depend on that.
pub(crate) fn uninit<T: Plain>(st: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>, GpuError> {
    if let Some(b) = super::workspace::take(st, n) {
        return Ok(b);
    }
    // SAFETY: cudarc's `alloc` leaves the memory unset. `T: Plain` admits
    // every bit pattern, so a read before a write (a download or a kernel)
    // yields some value of `T`, not undefined behaviour, and the slice is
    // ordered on `st` like any other.
    Ok(unsafe { st.alloc::<T>(n.max(1)) }?)
}

#[cfg(feature = "nccl")]
/// The first `n` elements of `s` as bytes (for byte-typed collectives such
/// as NCCL's, which have no 16-bit integer type); `None` when `s` holds fewer.
pub(crate) fn bytes_of<T: Plain>(s: &CudaSlice<T>, n: usize) -> Option<CudaView<'_, u8>> {
    let len = n.checked_mul(std::mem::size_of::<T>())?;
    // SAFETY: u8 has alignment 1 and admits every bit pattern, and cudarc's
    // transmute refuses a length past the slice's bytes.
    unsafe { s.transmute::<u8>(len) }
}

#[cfg(feature = "nccl")]
/// [`bytes_of`], writable: whatever bytes land there are some `T` (`T: Plain`).
pub(crate) fn bytes_of_mut<T: Plain>(
    s: &mut CudaSlice<T>,
    n: usize,
) -> Option<CudaViewMut<'_, u8>> {
    let len = n.checked_mul(std::mem::size_of::<T>())?;
    // SAFETY: as in bytes_of; every byte pattern written is a valid T.
    unsafe { s.transmute_mut::<u8>(len) }
}
