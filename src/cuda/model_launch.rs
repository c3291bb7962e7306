//! `result` layer of the model kernels: each launcher of [`super::model_ffi`]
//! behind an `unsafe fn` with its `# Safety` contract, status codes turned
//! into [`GpuError`]. The safe caller is `cuda::backend`, which checks every
//! shape and keeps cudarc's pointer guards alive across the call.

use super::error::GpuError;
use super::ffi::Stream;
use super::launch::{check, DevPtr};
use super::model_ffi as ffi;
use std::ffi::c_void;

fn p(d: DevPtr) -> *const c_void {
    d as *const c_void
}

fn m(d: DevPtr) -> *mut c_void {
    d as *mut c_void
}

/// `out[r] = table[ids[r]]`.
///
/// # Safety
/// `table` holds `vocab * hidden` bf16, `ids` `rows` u32, `out`
/// `rows * hidden` bf16, all device memory of the current context, valid
/// until `stream` has run the kernel.
pub unsafe fn embed(
    table: DevPtr,
    ids: DevPtr,
    rows: i32,
    vocab: i32,
    hidden: i32,
    out: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_embed",
        ffi::capmoe_model_embed(
            p(table),
            ids as *const u32,
            rows,
            vocab,
            hidden,
            m(out),
            stream,
        ),
    )
}

/// RMSNorm of `rows` bf16 rows of `cols`.
///
/// # Safety
/// `x` and `out` hold `rows * cols` bf16 (they may not overlap), `w` `cols`
/// f32, device memory valid until `stream` has run the kernel.
pub unsafe fn rmsnorm(
    x: DevPtr,
    w: DevPtr,
    rows: i32,
    cols: i32,
    eps: f32,
    out: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_rmsnorm",
        ffi::capmoe_model_rmsnorm(p(x), w as *const f32, rows, cols, eps, m(out), stream),
    )
}

/// RoPE in place.
///
/// # Safety
/// `x` holds `rows * heads * 2 * half` bf16, `positions` `rows` i32,
/// `inv_freq` `half` f32, device memory valid until `stream` has run the
/// kernel.
pub unsafe fn rope(
    x: DevPtr,
    positions: DevPtr,
    inv_freq: DevPtr,
    rows: i32,
    heads: i32,
    half: i32,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_rope",
        ffi::capmoe_model_rope(
            m(x),
            positions as *const i32,
            inv_freq as *const f32,
            rows,
            heads,
            half,
            stream,
        ),
    )
}

/// `x += y` over `n` bf16.
///
/// # Safety
/// `x` and `y` hold `n` bf16 each, device memory valid until `stream` has
/// run the kernel.
pub unsafe fn add(x: DevPtr, y: DevPtr, n: i64, stream: Stream) -> Result<(), GpuError> {
    check(
        "capmoe_model_add",
        ffi::capmoe_model_add(m(x), p(y), n, stream),
    )
}

/// `out[r] = x[idx[r]]`, a zero row where `idx[r] >= src_rows`.
///
/// # Safety
/// `x` holds `src_rows * cols` bf16, `idx` `rows` u32, `out` `rows * cols`
/// bf16, device memory valid until `stream` has run the kernel.
pub unsafe fn gather_rows(
    x: DevPtr,
    idx: DevPtr,
    rows: i32,
    src_rows: i32,
    cols: i32,
    out: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_gather_rows",
        ffi::capmoe_model_gather_rows(
            p(x),
            idx as *const u32,
            rows,
            src_rows,
            cols,
            m(out),
            stream,
        ),
    )
}

/// Shapes of one attention launch.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// New query rows.
    pub n: i32,
    /// Cache length, the new rows included.
    pub len: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    /// 0: plain causal.
    pub window: i32,
    pub scale: f32,
}

/// One sequence's attention over its cache.
///
/// # Safety
/// `q` and `out` hold `n * heads * head_dim` bf16, `k_cache` and `v_cache`
/// at least `len * kv_heads * head_dim` bf16 with positions `0..len`
/// written, device memory valid until `stream` has run the kernel.
pub unsafe fn attention(
    s: AttnShape,
    q: DevPtr,
    k_cache: DevPtr,
    v_cache: DevPtr,
    out: DevPtr,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_attention",
        ffi::capmoe_model_attention(
            p(q),
            p(k_cache),
            p(v_cache),
            s.n,
            s.len,
            s.heads,
            s.kv_heads,
            s.head_dim,
            s.window,
            s.scale,
            m(out),
            stream,
        ),
    )
}
