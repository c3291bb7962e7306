//! `result` layer for the generated CUTLASS launchers: one grouped GEMM.

use super::variants::CompiledVariant;
use crate::cuda::ffi::Stream;
use crate::cuda::launch::{check, DevPtr};
use crate::cuda::GpuError;
use std::ffi::c_void;

/// Device arguments of one grouped GEMM over `groups` experts:
/// `D_g = A_g B_g^T` (see `expert::variants`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupedCall {
    pub groups: i32,
    /// `3 * groups` i32 `{m, n, k}`.
    pub problems: DevPtr,
    pub max_n: i32,
    pub max_k: i32,
    /// `groups` device pointers each.
    pub a: DevPtr,
    pub b: DevPtr,
    pub d: DevPtr,
    /// `groups` i64 leading dimensions each.
    pub lda: DevPtr,
    pub ldb: DevPtr,
    pub ldd: DevPtr,
    pub workspace: DevPtr,
    pub workspace_bytes: usize,
    pub sm_count: i32,
}

/// Workspace bytes `v` needs for `groups` groups on `sm_count` SMs.
pub(crate) fn workspace_bytes(v: &CompiledVariant, groups: i32, sm_count: i32) -> usize {
    // SAFETY: a pure size query of the CUTLASS kernel's arguments; no memory is touched.
    unsafe { (v.workspace)(groups, sm_count) }
}

/// Launches `v` on `stream`.
///
/// # Safety
/// Every pointer in `c` is device memory of the current context that stays
/// alive until `stream` has run the kernel: `problems` holds `3 * groups`
/// i32 whose `n <= max_n` and `k <= max_k`; `a`, `b`, `d` hold `groups`
/// pointers to matrices of at least `m * lda`, `n * ldb` and `m * ldd` bf16;
/// the leading-dimension arrays hold `groups` i64 each; `workspace` holds at
/// least [`workspace_bytes`] for the same `groups` and `sm_count`; `v` runs
/// on this GPU (`Variant::runs_on`).
pub(crate) unsafe fn grouped_gemm(
    v: &CompiledVariant,
    c: &GroupedCall,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        v.variant.name,
        (v.run)(
            c.groups,
            c.problems as *const i32,
            c.max_n,
            c.max_k,
            c.a as *const *const c_void,
            c.lda as *const i64,
            c.b as *const *const c_void,
            c.ldb as *const i64,
            c.d as *const *mut c_void,
            c.ldd as *const i64,
            c.workspace as *mut c_void,
            c.workspace_bytes,
            c.sm_count,
            stream,
        ),
    )
}
