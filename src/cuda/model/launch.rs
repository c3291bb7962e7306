//! `result` layer of the model kernels (cuda/model/): each launcher of
//! [`crate::cuda::sys`] behind an `unsafe fn` with its `# Safety` contract,
//! status codes turned into [`GpuError`]. The safe callers (the typed
//! functions of [`super::ops`]) check
//! every shape and keep cudarc's pointer guards alive across the call.

use crate::cuda::error::GpuError;
use crate::cuda::launch::{check, ptr as p, ptr_mut as m, DevPtr, Stream};
use crate::cuda::sys;

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
    let a = sys::capmoe_embed_args {
        table: p(table),
        ids: p(ids),
        rows,
        vocab,
        hidden,
        out: m(out),
    };
    check("capmoe_model_embed", sys::capmoe_model_embed(&a, stream))
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
        sys::capmoe_model_rmsnorm(p(x), p(w), rows, cols, eps, m(out), stream),
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
    let a = sys::capmoe_rope_args {
        x: m(x),
        positions: p(positions),
        inv_freq: p(inv_freq),
        rows,
        heads,
        half,
    };
    check("capmoe_model_rope", sys::capmoe_model_rope(&a, stream))
}

/// `x += y` over `n` bf16.
///
/// # Safety
/// `x` and `y` hold `n` bf16 each, device memory valid until `stream` has
/// run the kernel.
pub unsafe fn add(x: DevPtr, y: DevPtr, n: i64, stream: Stream) -> Result<(), GpuError> {
    check(
        "capmoe_model_add",
        sys::capmoe_model_add(m(x), p(y), n, stream),
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
    let a = sys::capmoe_gather_rows_args {
        x: p(x),
        idx: p(idx),
        rows,
        src_rows,
        cols,
        out: m(out),
    };
    check(
        "capmoe_model_gather_rows",
        sys::capmoe_model_gather_rows(&a, stream),
    )
}

/// Shapes of one attention launch: `n` new query rows, cache length `len`
/// (the new rows included), `window` 0 for plain causal.
pub type AttnShape = sys::capmoe_attn_shape;

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
    let a = sys::capmoe_attn_args {
        q: p(q),
        k_cache: p(k_cache),
        v_cache: p(v_cache),
        out: m(out),
        shape: s,
    };
    check(
        "capmoe_model_attention",
        sys::capmoe_model_attention(&a, stream),
    )
}

/// One decode step's key/value append and attention over the static cache
/// (the args' doc in capmoe_abi.h); the args struct carries the device
/// pointers and shapes.
///
/// # Safety
/// `q` and `out` hold `batch * heads * head_dim` bf16, `k` and `v`
/// `batch * kv_heads * head_dim`, `positions` `batch` i32, `k_cache` and
/// `v_cache` `batch * max_positions * kv_heads * head_dim` bf16 with each
/// sequence's rows `0..positions[b]` written; device memory valid until
/// `stream` has run the kernels.
pub unsafe fn decode_attention(
    a: &sys::capmoe_decode_attn_args,
    stream: Stream,
) -> Result<(), GpuError> {
    check(
        "capmoe_model_decode_attention",
        sys::capmoe_model_decode_attention(a, stream),
    )
}

/// The greedy pick of a decode step, and the decode graph's own advance.
///
/// # Safety
/// `logits` holds `rows * vocab` f32, `nonfinite` `rows` u64, `next` `rows`
/// u32, `ids` (when not null) `rows` u32 and `positions` (when not null)
/// `rows` i32; device memory valid until `stream` has run the kernel.
pub unsafe fn greedy(a: &sys::capmoe_greedy_args, stream: Stream) -> Result<(), GpuError> {
    check("capmoe_model_greedy", sys::capmoe_model_greedy(a, stream))
}
