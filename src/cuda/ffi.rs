//! `sys` layer: the `extern "C"` launchers in cuda/routing/ and cuda/expert/,
//! exactly as declared there (the CUTLASS variants' launchers are generated:
//! see `ffn::variants`). Every pointer is a device pointer; `stream` is a
//! `cudaStream_t` (cudarc's `CUstream` is the same handle). Return value: 0 on
//! success, a `cudaError_t` (> 0), or -1 for a rejected argument.

use std::ffi::{c_char, c_int, c_void};

pub type Stream = *mut c_void;

extern "C" {
    pub fn capmoe_gate(
        logits: *const f32,
        tokens: c_int,
        experts: c_int,
        top_k: c_int,
        probs: *mut f32,
        topk: *mut c_int,
        topk_sum: *mut f32,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_select_workspace(slots: i64, experts: c_int) -> usize;

    pub fn capmoe_select(
        probs: *const f32,
        topk: *const c_int,
        tokens: c_int,
        experts: c_int,
        k: c_int,
        experts_per_bin: c_int,
        ranks: c_int,
        cap: c_int,
        rank: c_int,
        seed: u64,
        expand: c_int,
        workspace: *mut c_void,
        workspace_bytes: usize,
        served: *mut c_int,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_next_best(
        probs: *const f32,
        topk: *const c_int,
        tokens: c_int,
        experts: c_int,
        k: c_int,
        experts_per_bin: c_int,
        cap: c_int,
        max_rounds: c_int,
        workspace: *mut c_void,
        workspace_bytes: usize,
        served: *mut c_int,
        last: *mut c_int,
        flags: *mut c_int,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_plan_workspace(tokens: c_int, top_k: c_int) -> usize;

    pub fn capmoe_plan(
        probs: *const f32,
        topk: *const c_int,
        topk_sum: *const f32,
        served: *const c_int,
        tokens: c_int,
        experts: c_int,
        top_k: c_int,
        stride: c_int,
        renormalize: c_int,
        workspace: *mut c_void,
        workspace_bytes: usize,
        offsets: *mut c_int,
        expert_ids: *mut c_int,
        token_ids: *mut c_int,
        weights: *mut f32,
        probs_out: *mut f32,
        load: *mut u32,
        overflow: *mut c_int,
        overflow_count: *mut c_int,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_dispatch_workspace(max_assign: i64, experts: c_int) -> usize;

    pub fn capmoe_dispatch(
        offsets: *const c_int,
        expert_ids: *const c_int,
        token_ids: *const c_int,
        weights: *const f32,
        load: *const u32,
        tokens: c_int,
        experts: c_int,
        max_assign: i64,
        tile: c_int,
        workspace: *mut c_void,
        workspace_bytes: usize,
        padded: *mut c_int,
        row_token: *mut u32,
        row_weight: *mut f32,
        assignment_row: *mut c_int,
        total_rows: *mut c_int,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_gather_bf16(
        x: *const c_void,
        row_token: *const u32,
        total_rows: *const c_int,
        max_rows: i64,
        hidden: c_int,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_combine_f32(
        offsets: *const c_int,
        weights: *const f32,
        assignment_row: *const c_int,
        y: *const f32,
        tokens: c_int,
        hidden: c_int,
        out: *mut f32,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_combine_bf16(
        offsets: *const c_int,
        weights: *const f32,
        assignment_row: *const c_int,
        y: *const c_void,
        tokens: c_int,
        hidden: c_int,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_gemm_args(
        padded: *const c_int,
        load: *const u32,
        experts: c_int,
        n: c_int,
        k: c_int,
        elem_bytes: u64,
        a: u64,
        b: u64,
        c: u64,
        problems: *mut c_int,
        a_ptrs: *mut u64,
        b_ptrs: *mut u64,
        c_ptrs: *mut u64,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_swiglu_bf16(
        h13: *const c_void,
        row_token: *const u32,
        total_rows: *const c_int,
        max_rows: i64,
        inter: c_int,
        h: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_fill_hash_bf16(
        out: *mut c_void,
        n: u64,
        seed: u32,
        scale: f32,
        stream: Stream,
    ) -> c_int;

    /// From the statically linked CUDA runtime.
    pub fn cudaGetErrorString(error: c_int) -> *const c_char;
}
