//! The device's default memory pool, which every stream-ordered allocation
//! (`cuMemAllocAsync`: capmoe's temporaries) draws from.
//!
//! Its release threshold defaults to 0: at every synchronisation the pool
//! hands its free memory back to the OS, and the next step maps it again.
//! Decode syncs once per token, so capmoe raises the threshold to the
//! maximum, once per device in the process, on the contexts it opens
//! ([`GpuContext::new`](super::GpuContext::new)); a caller's engine keeps
//! its own pool policy. Memory stays reserved for the pool, not leaked: it
//! is reused by later allocations and freed with the context.

use super::GpuError;
use cudarc::driver::sys::{self, CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD};
use cudarc::driver::CudaContext;
use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};

/// Devices (ordinals) whose default pool already keeps its memory.
static KEPT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn default_pool(ctx: &CudaContext) -> Result<sys::CUmemoryPool, GpuError> {
    ctx.bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device is the context's.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()? };
    Ok(pool)
}

/// Sets the release threshold of `ctx`'s device's default pool to the
/// maximum, unless done before in this process. A failure is returned and
/// the next call tries again.
pub(crate) fn keep_memory(ctx: &CudaContext) -> Result<(), GpuError> {
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.contains(&ctx.ordinal()) {
        return Ok(());
    }
    let pool = default_pool(ctx)?;
    let mut max = u64::MAX;
    // SAFETY: the release threshold is a cuuint64_t, read from `max`.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut max as *mut u64).cast::<c_void>(),
        )
        .result()?
    };
    kept.push(ctx.ordinal());
    Ok(())
}

/// The release threshold of `ctx`'s device's default pool, in bytes.
pub(crate) fn release_threshold(ctx: &CudaContext) -> Result<u64, GpuError> {
    let pool = default_pool(ctx)?;
    let mut v = 0u64;
    // SAFETY: the release threshold is a cuuint64_t, written to `v`.
    unsafe {
        sys::cuMemPoolGetAttribute(
            pool,
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut v as *mut u64).cast::<c_void>(),
        )
        .result()?
    };
    Ok(v)
}
