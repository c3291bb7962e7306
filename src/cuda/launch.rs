//! `result` layer: each launcher of [`super::sys`] behind an `unsafe fn` that
//! turns its status code into a [`GpuError`]. Launchers with runs of
//! same-typed arguments take their `sys` parameter struct (named fields);
//! [`ptr`] and [`ptr_mut`] turn cudarc's device addresses into its fields.
//! Callers (`routing`, `expert`, `model::ops`) validate every shape first.

use super::error::GpuError;
use super::sys;
use std::ffi::{c_int, CStr};

/// A device pointer as cudarc hands it out.
pub type DevPtr = u64;

/// The stream handle every launcher takes (`cudaStream_t`, cudarc's `CUstream`).
pub type Stream = sys::capmoe_stream_t;

/// Shapes shared by the routing launchers.
pub type Shape = sys::capmoe_shape;

/// A device address as a `const` pointer field of a parameter struct.
pub fn ptr<T>(d: DevPtr) -> *const T {
    d as *const T
}

/// A device address as a `mut` pointer field of a parameter struct.
pub fn ptr_mut<T>(d: DevPtr) -> *mut T {
    d as *mut T
}

pub(crate) fn check(launcher: &'static str, code: c_int) -> Result<(), GpuError> {
    if code == sys::CAPMOE_STATUS_OK {
        return Ok(());
    }
    // SAFETY: capmoe_status_string returns a static NUL-terminated string for any code.
    let message = unsafe { CStr::from_ptr(sys::capmoe_status_string(code)) }
        .to_string_lossy()
        .into_owned();
    Err(GpuError::Launch {
        launcher,
        code,
        message,
    })
}

/// Fused gating.
///
/// # Safety
/// `logits` holds `tokens * experts` f32, `probs` as many, `topk`
/// `tokens * k` i32, `topk_sum` `tokens` f32 and `error` one i32 (zeroed by
/// the caller), all device memory of the current context, valid until
/// `stream` has run the kernel.
pub unsafe fn gate(a: &sys::capmoe_gate_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_gate", sys::capmoe_gate(a, stream))
}

/// Bytes of workspace [`select`] needs for `slots` slots over `experts`
/// experts (a pure size query).
pub fn select_workspace(slots: i64, experts: i32) -> usize {
    // SAFETY: pure size query (cub's temp-storage sizing); touches no memory.
    unsafe { sys::capmoe_select_workspace(slots, experts) }
}

/// Capacity selection for `drop:*` or `expand:local`.
///
/// # Safety
/// `probs`/`topk` come from [`gate`] for `a.shape`; `served` holds
/// `tokens * stride` i32 (stride `k`, or `k + experts / ranks` with expand);
/// `workspace` holds `workspace_bytes >= select_workspace(tokens * stride, experts)`.
pub unsafe fn select(a: &sys::capmoe_select_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_select", sys::capmoe_select(a, stream))
}

/// `reroute:next-best` in synchronous rounds.
///
/// # Safety
/// As [`select`] with stride `k`; `last` holds `tokens` i32 and `flags`
/// `CAPMOE_NB_FLAGS` i32.
pub unsafe fn next_best(a: &sys::capmoe_next_best_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_next_best", sys::capmoe_next_best(a, stream))
}

/// Bytes of workspace [`plan`] needs for `tokens` tokens at top-`k`
/// (a pure size query).
pub fn plan_workspace(tokens: i32, k: i32) -> usize {
    // SAFETY: pure size query.
    unsafe { sys::capmoe_plan_workspace(tokens, k) }
}

/// Compacts served slots into the CSR plan.
///
/// # Safety
/// Inputs from [`gate`] and a selection with `stride`; `offsets` holds
/// `tokens + 1` i32; the four per-assignment outputs `tokens * stride`
/// entries; `load` `experts` u32; `overflow` `tokens * k` i32;
/// `overflow_count` one i32; `workspace_bytes >= plan_workspace(tokens, k)`.
pub unsafe fn plan(a: &sys::capmoe_plan_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_plan", sys::capmoe_plan(a, stream))
}

/// u32 words of one plan record of `experts` experts (`capmoe_plan_stats`'
/// record: its head, then the loads rounded up to even words; a pure size
/// query).
pub fn plan_record_words(experts: i32) -> i32 {
    // SAFETY: a pure function of its argument (no memory, no device).
    unsafe { sys::capmoe_plan_record_words(experts) }
}

/// Writes a plan's record (its checks, `capmoe_plan_stat` totals and loads).
///
/// # Safety
/// `probs` (`tokens * experts` f32), `topk` (`tokens * k` i32) and
/// `nonfinite` (one u64) from [`gate`], `offsets` (`tokens + 1` i32),
/// `expert_ids` and `probs_out` (at least `offsets[tokens]` entries) and
/// `load` (`experts` u32) from [`plan`] over the same shape;
/// `next_best_flags` null or `CAPMOE_NB_FLAGS` i32; `record` holds
/// `capmoe_plan_record_words(experts)` u32, 8-byte aligned.
pub unsafe fn plan_stats(a: &sys::capmoe_plan_stats_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_plan_stats", sys::capmoe_plan_stats(a, stream))
}

/// Bytes of workspace [`dispatch`] needs for `max_assign` assignments
/// over `experts` experts (a pure size query).
pub fn dispatch_workspace(max_assign: i64, experts: i32) -> usize {
    // SAFETY: pure size query.
    unsafe { sys::capmoe_dispatch_workspace(max_assign, experts) }
}

/// Lays the plan out in expert-contiguous padded rows.
///
/// # Safety
/// The plan inputs come from [`plan`] with room for `max_assign`
/// assignments; `padded` holds `experts + 1` i32; the row buffers
/// `max_assign + experts * (tile - 1)` entries; `assignment_row`
/// `max_assign` i32; `total_rows` one i32;
/// `workspace_bytes >= dispatch_workspace(max_assign, experts)`.
pub unsafe fn dispatch(a: &sys::capmoe_dispatch_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_dispatch", sys::capmoe_dispatch(a, stream))
}

/// Gathers bf16 token rows into dispatch order.
///
/// # Safety
/// `x` holds `tokens * hidden` bf16; `out` `max_rows * hidden` bf16;
/// `row_token`/`total_rows` from [`dispatch`] with the same `max_rows`;
/// `hidden % 8 == 0`.
pub unsafe fn gather_bf16(
    x: DevPtr,
    row_token: DevPtr,
    total_rows: DevPtr,
    max_rows: i64,
    hidden: i32,
    out: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_gather_bf16",
        sys::capmoe_gather_bf16(
            ptr(x),
            ptr(row_token),
            ptr(total_rows),
            max_rows,
            hidden,
            ptr_mut(out),
            stream,
        ),
    )
}

/// Weighted gather back to token order, f32.
///
/// # Safety
/// `offsets`/`weights` from [`plan`], `assignment_row` from [`dispatch`];
/// `y` holds the dispatch's rows times `hidden` f32; `out` `tokens * hidden`.
pub unsafe fn combine_f32(a: &sys::capmoe_combine_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_combine_f32", sys::capmoe_combine_f32(a, stream))
}

/// Weighted gather back to token order, bf16 in and out (f32 accumulation).
///
/// # Safety
/// As [`combine_f32`] with bf16 `y` and `out`.
pub unsafe fn combine_bf16_args(
    a: &sys::capmoe_combine_args,
    stream: Stream,
) -> Result<(), GpuError> {
    check("capmoe_combine_bf16", sys::capmoe_combine_bf16(a, stream))
}

/// Grouped-GEMM problem sizes and addresses from a dispatch layout.
///
/// # Safety
/// `padded` (`experts + 1` i32) from [`dispatch`] and `load` (`experts` u32)
/// from [`plan`]; `problems` holds `3 * experts` i32 and each pointer array
/// `experts` u64. `a`, `b`, `c` are only written into the arrays, never read.
pub unsafe fn gemm_args(a: &sys::capmoe_gemm_args_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_gemm_args", sys::capmoe_gemm_args(a, stream))
}

/// The SwiGLU pass between the expert FFN's two GEMMs.
///
/// # Safety
/// `h13` holds `max_rows * 2 * inter` bf16 (interleaved gate/up pairs), `h`
/// `max_rows * inter` bf16; `row_token`/`total_rows` come from [`dispatch`]
/// with the same `max_rows`; `inter % 8 == 0`; all on the current context and
/// alive until `stream` has run the kernel.
pub unsafe fn swiglu_bf16(
    h13: DevPtr,
    row_token: DevPtr,
    total_rows: DevPtr,
    max_rows: i64,
    inter: i32,
    h: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_swiglu_bf16",
        sys::capmoe_swiglu_bf16(
            ptr(h13),
            ptr(row_token),
            ptr(total_rows),
            max_rows,
            inter,
            ptr_mut(h),
            stream,
        ),
    )
}

/// Fills `n` bf16 with the hashed uniform init (twin: `expert::init`).
///
/// # Safety
/// `out` holds at least `n` bf16 of device memory of the current context,
/// alive until `stream` has run the kernel.
pub unsafe fn fill_hash_bf16(
    out: DevPtr,
    n: u64,
    seed: u32,
    scale: f32,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_fill_hash_bf16",
        sys::capmoe_fill_hash_bf16(ptr_mut(out), n, seed, scale, stream),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_have_messages() {
        // Host-only: capmoe_status_string touches no device.
        for (code, needle) in [
            (sys::CAPMOE_STATUS_BAD_ARGUMENT, "rejected by the launcher"),
            (sys::CAPMOE_STATUS_REJECTED, "CUTLASS"),
            (-99, "unknown"),
        ] {
            let e = check("probe", code).unwrap_err().to_string();
            assert!(e.contains(needle), "{code}: {e}");
        }
        assert!(check("probe", sys::CAPMOE_STATUS_OK).is_ok());
        // A positive code is a cudaError_t (2 = cudaErrorMemoryAllocation).
        let e = check("probe", 2).unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
    }

    #[test]
    fn launchers_refuse_a_null_parameter_struct() {
        // The checks run before anything touches the device or the stream.
        // SAFETY: a null struct pointer is refused by the launcher itself.
        let code = unsafe { sys::capmoe_gate(std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(code, sys::CAPMOE_STATUS_BAD_ARGUMENT);
        let a = sys::capmoe_gate_args {
            logits: std::ptr::null(),
            bias: std::ptr::null(),
            shape: Shape::default(), // 0 experts: refused
            probs: std::ptr::null_mut(),
            topk: std::ptr::null_mut(),
            topk_sum: std::ptr::null_mut(),
            nonfinite: std::ptr::null_mut(),
        };
        // SAFETY: refused on its shape; no pointer is read.
        let code = unsafe { sys::capmoe_gate(&a, std::ptr::null_mut()) };
        assert_eq!(code, sys::CAPMOE_STATUS_BAD_ARGUMENT);
    }
}
