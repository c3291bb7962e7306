//! `result` layer: each launcher behind an `unsafe fn` that turns its status
//! code into a [`GpuError`]. Callers (router.rs) validate every shape first.

use super::error::GpuError;
use super::ffi;
use std::ffi::{c_int, c_void, CStr};

/// A device pointer as cudarc hands it out.
pub type DevPtr = u64;

pub(crate) fn check(launcher: &'static str, code: c_int) -> Result<(), GpuError> {
    if code == 0 {
        return Ok(());
    }
    let message = if code == -2 {
        "CUTLASS rejected the problem (can_implement or initialize failed)".to_string()
    } else if code < 0 {
        "an argument was rejected by the launcher's own checks".to_string()
    } else {
        // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
        unsafe { CStr::from_ptr(ffi::cudaGetErrorString(code)) }
            .to_string_lossy()
            .into_owned()
    };
    Err(GpuError::Launch {
        launcher,
        code,
        message,
    })
}

fn p<T>(d: DevPtr) -> *const T {
    d as *const T
}

fn m<T>(d: DevPtr) -> *mut T {
    d as *mut T
}

/// Shapes shared by the routing launchers.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub tokens: i32,
    pub experts: i32,
    pub k: i32,
}

/// Fused gating.
///
/// # Safety
/// `logits` holds `tokens * experts` f32, `probs` as many, `topk`
/// `tokens * k` i32 and `topk_sum` `tokens` f32, all device memory of the
/// current context, valid until `stream` has run the kernel.
pub unsafe fn gate(
    s: Shape,
    logits: DevPtr,
    probs: DevPtr,
    topk: DevPtr,
    topk_sum: DevPtr,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_gate",
        ffi::capmoe_gate(
            p(logits),
            s.tokens,
            s.experts,
            s.k,
            m(probs),
            m(topk),
            m(topk_sum),
            stream,
        ),
    )
}

pub fn select_workspace(slots: i64, experts: i32) -> usize {
    // SAFETY: pure size query (cub's temp-storage sizing); touches no memory.
    unsafe { ffi::capmoe_select_workspace(slots, experts) }
}

/// Capacity selection for `drop:*` (`expand = false`) or `expand:local`.
///
/// # Safety
/// `probs`/`topk` come from [`gate`] for shape `s`; `served` holds
/// `tokens * stride` i32 (stride `k`, or `k + experts / ranks` with expand);
/// `workspace` holds `workspace_bytes >= select_workspace(tokens * stride, experts)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn select(
    s: Shape,
    probs: DevPtr,
    topk: DevPtr,
    experts_per_bin: i32,
    ranks: i32,
    cap: i32,
    rank: i32,
    seed: u64,
    expand: bool,
    workspace: DevPtr,
    workspace_bytes: usize,
    served: DevPtr,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_select",
        ffi::capmoe_select(
            p(probs),
            p(topk),
            s.tokens,
            s.experts,
            s.k,
            experts_per_bin,
            ranks,
            cap,
            rank,
            seed,
            c_int::from(expand),
            m::<c_void>(workspace),
            workspace_bytes,
            m(served),
            stream,
        ),
    )
}

/// `reroute:next-best` in synchronous rounds.
///
/// # Safety
/// As [`select`] with stride `k`; `last` holds `tokens` i32 and `flags` 2 i32.
#[allow(clippy::too_many_arguments)]
pub unsafe fn next_best(
    s: Shape,
    probs: DevPtr,
    topk: DevPtr,
    experts_per_bin: i32,
    cap: i32,
    max_rounds: i32,
    workspace: DevPtr,
    workspace_bytes: usize,
    served: DevPtr,
    last: DevPtr,
    flags: DevPtr,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_next_best",
        ffi::capmoe_next_best(
            p(probs),
            p(topk),
            s.tokens,
            s.experts,
            s.k,
            experts_per_bin,
            cap,
            max_rounds,
            m::<c_void>(workspace),
            workspace_bytes,
            m(served),
            m(last),
            m(flags),
            stream,
        ),
    )
}

pub fn plan_workspace(tokens: i32, k: i32) -> usize {
    // SAFETY: pure size query.
    unsafe { ffi::capmoe_plan_workspace(tokens, k) }
}

/// Device outputs of [`plan`].
pub struct PlanOut {
    pub offsets: DevPtr,
    pub expert_ids: DevPtr,
    pub token_ids: DevPtr,
    pub weights: DevPtr,
    pub probs: DevPtr,
    pub load: DevPtr,
    pub overflow: DevPtr,
    pub overflow_count: DevPtr,
}

/// Compacts served slots into the CSR plan.
///
/// # Safety
/// Inputs from [`gate`] and a selection with `stride`; `offsets` holds
/// `tokens + 1` i32; the four per-assignment outputs `tokens * stride`
/// entries; `load` `experts` u32; `overflow` `tokens * k` i32;
/// `overflow_count` one i32; `workspace_bytes >= plan_workspace(tokens, k)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn plan(
    s: Shape,
    probs: DevPtr,
    topk: DevPtr,
    topk_sum: DevPtr,
    served: DevPtr,
    stride: i32,
    renormalize: bool,
    workspace: DevPtr,
    workspace_bytes: usize,
    out: &PlanOut,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_plan",
        ffi::capmoe_plan(
            p(probs),
            p(topk),
            p(topk_sum),
            p(served),
            s.tokens,
            s.experts,
            s.k,
            stride,
            c_int::from(renormalize),
            m::<c_void>(workspace),
            workspace_bytes,
            m(out.offsets),
            m(out.expert_ids),
            m(out.token_ids),
            m(out.weights),
            m(out.probs),
            m(out.load),
            m(out.overflow),
            m(out.overflow_count),
            stream,
        ),
    )
}

pub fn dispatch_workspace(max_assign: i64, experts: i32) -> usize {
    // SAFETY: pure size query.
    unsafe { ffi::capmoe_dispatch_workspace(max_assign, experts) }
}

/// Device outputs of [`dispatch`].
pub struct DispatchOut {
    pub padded: DevPtr,
    pub row_token: DevPtr,
    pub row_weight: DevPtr,
    pub assignment_row: DevPtr,
    pub total_rows: DevPtr,
}

/// Lays the plan out in expert-contiguous padded rows.
///
/// # Safety
/// `plan` outputs of [`plan`] with room for `max_assign` assignments;
/// `padded` holds `experts + 1` i32; the row buffers
/// `max_assign + experts * (tile - 1)` entries; `assignment_row`
/// `max_assign` i32; `total_rows` one i32;
/// `workspace_bytes >= dispatch_workspace(max_assign, experts)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dispatch(
    s: Shape,
    plan: &PlanOut,
    max_assign: i64,
    tile: i32,
    workspace: DevPtr,
    workspace_bytes: usize,
    out: &DispatchOut,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_dispatch",
        ffi::capmoe_dispatch(
            p(plan.offsets),
            p(plan.expert_ids),
            p(plan.token_ids),
            p(plan.weights),
            p(plan.load),
            s.tokens,
            s.experts,
            max_assign,
            tile,
            m::<c_void>(workspace),
            workspace_bytes,
            m(out.padded),
            m(out.row_token),
            m(out.row_weight),
            m(out.assignment_row),
            m(out.total_rows),
            stream,
        ),
    )
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
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_gather_bf16",
        ffi::capmoe_gather_bf16(
            p(x),
            p(row_token),
            p(total_rows),
            max_rows,
            hidden,
            m(out),
            stream,
        ),
    )
}

/// Weighted gather back to token order, f32.
///
/// # Safety
/// `offsets`/`weights` from [`plan`], `assignment_row` from [`dispatch`];
/// `y` holds the dispatch's rows times `hidden` f32; `out` `tokens * hidden`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn combine_f32(
    offsets: DevPtr,
    weights: DevPtr,
    assignment_row: DevPtr,
    y: DevPtr,
    tokens: i32,
    hidden: i32,
    out: DevPtr,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_combine_f32",
        ffi::capmoe_combine_f32(
            p(offsets),
            p(weights),
            p(assignment_row),
            p(y),
            tokens,
            hidden,
            m(out),
            stream,
        ),
    )
}

/// Weighted gather back to token order, bf16 in and out (f32 accumulation).
///
/// # Safety
/// As [`combine_f32`] with bf16 `y` and `out`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn combine_bf16(
    offsets: DevPtr,
    weights: DevPtr,
    assignment_row: DevPtr,
    y: DevPtr,
    tokens: i32,
    hidden: i32,
    out: DevPtr,
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_combine_bf16",
        ffi::capmoe_combine_bf16(
            p(offsets),
            p(weights),
            p(assignment_row),
            p::<c_void>(y),
            tokens,
            hidden,
            m::<c_void>(out),
            stream,
        ),
    )
}

/// Grouped-GEMM problem sizes and addresses from a dispatch layout.
///
/// # Safety
/// `padded` (`experts + 1` i32) from [`dispatch`] and `load` (`experts` u32)
/// from [`plan`]; `problems` holds `3 * experts` i32 and each pointer array
/// `experts` u64. `a`, `b`, `c` are only written into the arrays, never read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_args(
    padded: DevPtr,
    load: DevPtr,
    experts: i32,
    n: i32,
    k: i32,
    elem_bytes: u64,
    abc: [u64; 3],
    problems: DevPtr,
    ptrs: [DevPtr; 3],
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_gemm_args",
        ffi::capmoe_gemm_args(
            p(padded),
            p(load),
            experts,
            n,
            k,
            elem_bytes,
            abc[0],
            abc[1],
            abc[2],
            m(problems),
            m(ptrs[0]),
            m(ptrs[1]),
            m(ptrs[2]),
            stream,
        ),
    )
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
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_swiglu_bf16",
        ffi::capmoe_swiglu_bf16(
            p(h13),
            p(row_token),
            p(total_rows),
            max_rows,
            inter,
            m(h),
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
    stream: ffi::Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_fill_hash_bf16",
        ffi::capmoe_fill_hash_bf16(m(out), n, seed, scale, stream),
    )
}
