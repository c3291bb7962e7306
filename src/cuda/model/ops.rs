//! `safe` layer of the model kernels (cuda/model/): typed device buffers and
//! a shape in, every length the launch relies on checked, the ABI struct
//! built and the kernel queued on `st`. Outputs that a kernel writes in full
//! are allocated here (uninitialised), so no caller needs `unsafe`.
//!
//! Buffers are anything cudarc can hand out a device pointer for
//! ([`CudaSlice`], its views); their guards live across the launch. Sizes are
//! `usize` and converted to the kernels' 32-bit sizes here ([`to_i32`]).

use super::launch::{self, AttnShape};
use crate::cuda::error::to_i32;
use crate::cuda::launch::{ptr as p, ptr_mut as m, Stream};
use crate::cuda::{sys, GpuError};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

fn raw(st: &CudaStream) -> Stream {
    st.cu_stream() as Stream
}

/// `len >= need` or a [`GpuError::Shape`] naming `what`.
fn at_least(what: &'static str, len: usize, need: usize) -> Result<(), GpuError> {
    if len >= need {
        return Ok(());
    }
    Err(GpuError::Shape {
        what,
        got: format!("{len} elements"),
        expected: format!("at least {need}"),
    })
}

/// `a * b`, or [`GpuError::TooLarge`] naming `what`.
fn mul(what: &'static str, a: usize, b: usize) -> Result<usize, GpuError> {
    a.checked_mul(b)
        .ok_or(GpuError::TooLarge { what, value: a })
}

/// A buffer of `n` bf16 (at least one element) that the caller's kernel
/// writes in full before anything reads it.
fn output(st: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<u16>, GpuError> {
    // SAFETY: every caller below launches a kernel that writes all `n`
    // elements (or launches nothing for n = 0, when nothing is read).
    Ok(unsafe { st.alloc::<u16>(n.max(1)) }?)
}

/// `out[r] = table[ids[r]]` for `rows` token ids over a `[vocab, hidden]` bf16
/// table; an id `>= vocab` gives a zero row. Returns `[rows, hidden]` bf16.
pub(crate) fn embed(
    st: &Arc<CudaStream>,
    table: &impl DevicePtr<u16>,
    ids: &impl DevicePtr<u32>,
    rows: usize,
    (vocab, hidden): (usize, usize),
) -> Result<CudaSlice<u16>, GpuError> {
    at_least(
        "embedding table",
        table.len(),
        mul("vocab * hidden", vocab, hidden)?,
    )?;
    at_least("token ids", ids.len(), rows)?;
    let mut out = output(st, mul("rows * hidden", rows, hidden)?)?;
    if rows == 0 {
        return Ok(out);
    }
    let (t, _g1) = table.device_ptr(st);
    let (i, _g2) = ids.device_ptr(st);
    let (o, _g3) = out.device_ptr_mut(st);
    let (r, v, h) = (
        to_i32("tokens", rows)?,
        to_i32("vocab", vocab)?,
        to_i32("hidden", hidden)?,
    );
    // SAFETY: table holds vocab * hidden, ids rows, out rows * hidden
    // (checked and allocated above); the guards outlive the launch.
    unsafe { launch::embed(t, i, r, v, h, o, raw(st))? };
    drop((_g1, _g2, _g3));
    Ok(out)
}

/// RMSNorm of `[rows, cols]` bf16 `x` with `cols` f32 weights; returns a new
/// `[rows, cols]` bf16 buffer.
pub(crate) fn rmsnorm(
    st: &Arc<CudaStream>,
    x: &impl DevicePtr<u16>,
    w: &impl DevicePtr<f32>,
    (rows, cols): (usize, usize),
    eps: f32,
) -> Result<CudaSlice<u16>, GpuError> {
    let n = mul("rows * cols", rows, cols)?;
    at_least("rmsnorm input", x.len(), n)?;
    at_least("rmsnorm weight", w.len(), cols)?;
    let mut out = output(st, n)?;
    if rows == 0 {
        return Ok(out);
    }
    let (xp, _g1) = x.device_ptr(st);
    let (wp, _g2) = w.device_ptr(st);
    let (op, _g3) = out.device_ptr_mut(st);
    let (r, c) = (to_i32("rows", rows)?, to_i32("cols", cols)?);
    // SAFETY: x and out hold rows * cols bf16 (out is a new buffer, so they
    // do not overlap), w cols f32; the guards outlive the launch.
    unsafe { launch::rmsnorm(xp, wp, r, c, eps, op, raw(st))? };
    drop((_g1, _g2, _g3));
    Ok(out)
}

/// RoPE in place on `[rows, heads * 2 * half]` bf16 `x`, one position per
/// row, `half = inv_freq.len()` frequencies.
pub(crate) fn rope(
    st: &Arc<CudaStream>,
    x: &mut impl DevicePtrMut<u16>,
    positions: &impl DevicePtr<i32>,
    inv_freq: &impl DevicePtr<f32>,
    (rows, heads): (usize, usize),
) -> Result<(), GpuError> {
    let half = inv_freq.len();
    let width = mul("heads * head dim", heads, 2 * half)?;
    at_least("rope input", x.len(), mul("rows * width", rows, width)?)?;
    at_least("rope positions", positions.len(), rows)?;
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let (pp, _g1) = positions.device_ptr(st);
    let (ip, _g2) = inv_freq.device_ptr(st);
    let (xp, _g3) = x.device_ptr_mut(st);
    let (r, h, f) = (
        to_i32("rows", rows)?,
        to_i32("heads", heads)?,
        to_i32("half head dim", half)?,
    );
    // SAFETY: x holds rows * heads * 2 * half bf16, positions rows i32,
    // inv_freq half f32 (checked); the guards outlive the launch.
    unsafe { launch::rope(xp, pp, ip, r, h, f, raw(st)) }
}

/// `x += y` over the first `n` bf16 of each.
pub(crate) fn add(
    st: &Arc<CudaStream>,
    x: &mut impl DevicePtrMut<u16>,
    y: &impl DevicePtr<u16>,
    n: usize,
) -> Result<(), GpuError> {
    at_least("add target", x.len(), n)?;
    at_least("add operand", y.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).map_err(|_| GpuError::TooLarge {
        what: "elements",
        value: n,
    })?;
    let (yp, _g1) = y.device_ptr(st);
    let (xp, _g2) = x.device_ptr_mut(st);
    // SAFETY: both hold n bf16 (checked); `&mut x` and `&y` are distinct
    // buffers (or disjoint views); the guards outlive the launch.
    unsafe { launch::add(xp, yp, n64, raw(st)) }
}

/// `out[r] = x[idx[r]]` for `rows` indices into
/// `[src_rows, cols]` bf16 `x`; an index `>= src_rows` (such as `PAD`) gives
/// a zero row. Returns `[rows, cols]` bf16.
pub(crate) fn gather_rows(
    st: &Arc<CudaStream>,
    x: &impl DevicePtr<u16>,
    (src_rows, cols): (usize, usize),
    idx: &impl DevicePtr<u32>,
    rows: usize,
) -> Result<CudaSlice<u16>, GpuError> {
    at_least(
        "gather source",
        x.len(),
        mul("source rows * cols", src_rows, cols)?,
    )?;
    at_least("gather indices", idx.len(), rows)?;
    let mut out = output(st, mul("rows * cols", rows, cols)?)?;
    if rows == 0 {
        return Ok(out);
    }
    let (xp, _g1) = x.device_ptr(st);
    let (ip, _g2) = idx.device_ptr(st);
    let (op, _g3) = out.device_ptr_mut(st);
    let (r, s, c) = (
        to_i32("rows", rows)?,
        to_i32("source rows", src_rows)?,
        to_i32("cols", cols)?,
    );
    // SAFETY: x holds src_rows * cols, idx rows u32 (the kernel zero-fills
    // rows whose index is out of range), out rows * cols; guards outlive it.
    unsafe { launch::gather_rows(xp, ip, r, s, c, op, raw(st))? };
    drop((_g1, _g2, _g3));
    Ok(out)
}

/// One attention launch's sizes: `n` new query rows, cache length `len` (the
/// new rows included), head counts and size, `window` (`None`: plain causal)
/// and the softmax scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AttnDims {
    pub n: usize,
    pub len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

impl AttnDims {
    fn abi(&self) -> Result<AttnShape, GpuError> {
        Ok(AttnShape {
            n: to_i32("attention rows", self.n)?,
            len: to_i32("cache length", self.len)?,
            heads: to_i32("heads", self.heads)?,
            kv_heads: to_i32("kv heads", self.kv_heads)?,
            head_dim: to_i32("head dim", self.head_dim)?,
            window: to_i32("sliding window", self.window.unwrap_or(0))?,
            scale: self.scale,
        })
    }
}

/// One sequence's attention: `[n, heads * head_dim]` bf16 queries `q` over
/// caches of at least `[len, kv_heads * head_dim]` bf16, into `out` (as `q`).
/// The launcher refuses `n > len`, `heads % kv_heads != 0`, `head_dim > 256`.
pub(crate) fn attention(
    st: &Arc<CudaStream>,
    q: &impl DevicePtr<u16>,
    (k_cache, v_cache): (&impl DevicePtr<u16>, &impl DevicePtr<u16>),
    dims: AttnDims,
    out: &mut impl DevicePtrMut<u16>,
) -> Result<(), GpuError> {
    let qn = mul("rows * heads", dims.n, dims.heads)?;
    let qn = mul("attention queries", qn, dims.head_dim)?;
    let kv = mul("cache * kv heads", dims.len, dims.kv_heads)?;
    let kv = mul("cache elements", kv, dims.head_dim)?;
    at_least("attention queries", q.len(), qn)?;
    at_least("attention output", out.len(), qn)?;
    at_least("key cache", k_cache.len(), kv)?;
    at_least("value cache", v_cache.len(), kv)?;
    if dims.n > dims.len {
        return Err(GpuError::Shape {
            what: "attention rows (n <= cache length)",
            got: format!("n {} over a cache of {}", dims.n, dims.len),
            expected: format!("n <= {}", dims.len),
        });
    }
    if qn == 0 {
        return Ok(());
    }
    let s = dims.abi()?;
    let (qp, _g1) = q.device_ptr(st);
    let (kp, _g2) = k_cache.device_ptr(st);
    let (vp, _g3) = v_cache.device_ptr(st);
    let (op, _g4) = out.device_ptr_mut(st);
    // SAFETY: q and out hold n * heads * head_dim bf16, the caches len *
    // kv_heads * head_dim (checked); the guards outlive the launch.
    unsafe { launch::attention(s, qp, kp, vp, op, raw(st)) }
}

/// The decode step's buffers: the batch's new `q`, `k`, `v` rows, each
/// sequence's position, the static caches.
pub(crate) struct DecodeAttnIo<'a, Q, K, P, C> {
    pub q: &'a Q,
    pub k: &'a K,
    pub v: &'a K,
    pub positions: &'a P,
    pub k_cache: &'a mut C,
    pub v_cache: &'a mut C,
}

/// One decode step's key/value append and attention over the static caches
/// (`[batch, max_positions, kv_heads * head_dim]` bf16): sequence `b`'s new
/// row goes to its cache row `positions[b]`, then attends. A position outside
/// `0..max_positions` appends nothing and gives a zero output row (the
/// kernel's own check). `dims.n` is the batch, `dims.len` `max_positions`.
/// Returns `[batch, heads * head_dim]` bf16.
pub(crate) fn decode_attention<Q, K, P, C>(
    st: &Arc<CudaStream>,
    io: DecodeAttnIo<'_, Q, K, P, C>,
    dims: AttnDims,
) -> Result<CudaSlice<u16>, GpuError>
where
    Q: DevicePtr<u16>,
    K: DevicePtr<u16>,
    P: DevicePtr<i32>,
    C: DevicePtrMut<u16>,
{
    let (batch, maxp) = (dims.n, dims.len);
    let qw = mul("heads * head dim", dims.heads, dims.head_dim)?;
    let kvw = mul("kv heads * head dim", dims.kv_heads, dims.head_dim)?;
    let qn = mul("decode queries", batch, qw)?;
    let cache = mul(
        "cache elements",
        mul("batch * positions", batch, maxp)?,
        kvw,
    )?;
    at_least("decode queries", io.q.len(), qn)?;
    at_least("decode keys", io.k.len(), batch * kvw)?;
    at_least("decode values", io.v.len(), batch * kvw)?;
    at_least("decode positions", io.positions.len(), batch)?;
    at_least("key cache", io.k_cache.len(), cache)?;
    at_least("value cache", io.v_cache.len(), cache)?;
    let mut out = output(st, qn)?;
    if qn == 0 {
        return Ok(out);
    }
    let (qp, _g1) = io.q.device_ptr(st);
    let (kp, _g2) = io.k.device_ptr(st);
    let (vp, _g3) = io.v.device_ptr(st);
    let (pp, _g4) = io.positions.device_ptr(st);
    let (kc, _g5) = io.k_cache.device_ptr_mut(st);
    let (vc, _g6) = io.v_cache.device_ptr_mut(st);
    let (op, _g7) = out.device_ptr_mut(st);
    let a = sys::capmoe_decode_attn_args {
        q: p(qp),
        k: p(kp),
        v: p(vp),
        positions: p(pp),
        k_cache: m(kc),
        v_cache: m(vc),
        out: m(op),
        batch: to_i32("decode batch", batch)?,
        max_positions: to_i32("static cache positions", maxp)?,
        heads: to_i32("heads", dims.heads)?,
        kv_heads: to_i32("kv heads", dims.kv_heads)?,
        head_dim: to_i32("head dim", dims.head_dim)?,
        window: to_i32("sliding window", dims.window.unwrap_or(0))?,
        scale: dims.scale,
    };
    // SAFETY: every length checked above; out-of-range positions are skipped
    // by the kernels; the guards outlive the launch.
    unsafe { launch::decode_attention(&a, raw(st))? };
    drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7));
    Ok(out)
}

/// The greedy pick of `rows` rows of `[rows, vocab]` f32 `logits` into a
/// decode record: its first `2 * rows` words are each row's non-finite
/// record (a u64), the next `rows` the picks. With `advance`, the decode
/// graph's own state steps too: `ids[r]` becomes the pick, `positions[r]`
/// grows by one.
pub(crate) fn greedy_into(
    st: &Arc<CudaStream>,
    logits: &impl DevicePtr<f32>,
    (rows, vocab): (usize, usize),
    record: &mut impl DevicePtrMut<u32>,
    advance: Option<(&mut CudaSlice<u32>, &mut CudaSlice<i32>)>,
) -> Result<(), GpuError> {
    at_least(
        "greedy logits",
        logits.len(),
        mul("rows * vocab", rows, vocab)?,
    )?;
    at_least("greedy record", record.len(), mul("3 * rows", 3, rows)?)?;
    if let Some((ids, positions)) = &advance {
        at_least("decode ids", ids.len(), rows)?;
        at_least("decode positions", positions.len(), rows)?;
    }
    if vocab == 0 {
        return Err(GpuError::Shape {
            what: "greedy vocabulary",
            got: "0".into(),
            expected: "at least 1".into(),
        });
    }
    if rows == 0 {
        return Ok(());
    }
    let (lp, _g1) = logits.device_ptr(st);
    let (rp, _g2) = record.device_ptr_mut(st);
    if rp % 8 != 0 {
        return Err(GpuError::Shape {
            what: "greedy record (u64 words first)",
            got: format!("address {rp:#x}"),
            expected: "8-byte aligned".into(),
        });
    }
    let (r32, v32) = (to_i32("decode batch", rows)?, to_i32("vocabulary", vocab)?);
    let (adv, _g3) = match advance {
        Some((ids, positions)) => {
            let (ip, gi) = ids.device_ptr_mut(st);
            let (pp, gp) = positions.device_ptr_mut(st);
            ((m(ip), m(pp)), Some((gi, gp)))
        }
        None => ((std::ptr::null_mut(), std::ptr::null_mut()), None),
    };
    let a = sys::capmoe_greedy_args {
        logits: p(lp),
        rows: r32,
        vocab: v32,
        nonfinite: m(rp),
        next: m(rp + 8 * rows as u64),
        ids: adv.0,
        positions: adv.1,
    };
    // SAFETY: logits holds rows * vocab f32, the record 3 * rows u32 with
    // its first 2 * rows words 8-byte aligned u64s, ids and positions rows
    // each (all checked); the guards outlive the launch.
    unsafe { launch::greedy(&a, raw(st)) }
}
