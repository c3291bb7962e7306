//! `result` layer for the generated CUTLASS launchers: one grouped GEMM.

use super::variants::CompiledVariant;
use crate::cuda::launch::{check, ptr, ptr_mut, DevPtr, Stream};
use crate::cuda::{sys, GpuError};

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
    let args = sys::capmoe_gg_args {
        groups: c.groups,
        problems: ptr(c.problems),
        max_n: c.max_n,
        max_k: c.max_k,
        a: ptr(c.a),
        b: ptr(c.b),
        d: ptr(c.d),
        lda: ptr(c.lda),
        ldb: ptr(c.ldb),
        ldd: ptr(c.ldd),
        workspace: ptr_mut(c.workspace),
        workspace_bytes: c.workspace_bytes,
        sm_count: c.sm_count,
    };
    check(v.variant.name, (v.run)(&args, stream))
}
