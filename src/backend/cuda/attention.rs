//! Attention of several sequences over their caches: the new keys and
//! values are appended (device copies), then one kernel launch per sequence
//! (`cuda/model/attention.cu`).

use super::tensor::{CudaAct, CudaKv};
use crate::backend::AttnGeom;
use crate::cuda::model::launch::{self as model_launch, AttnShape};
use crate::cuda::GpuError;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use std::ops::Range;
use std::sync::Arc;

fn i32_of(what: &'static str, v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::TooLarge { what, value: v })
}

/// Appends rows `span` of `k`/`v` to `cache`. Shapes checked by the caller.
fn append(
    st: &Arc<CudaStream>,
    cache: &mut CudaKv,
    k: &CudaAct,
    v: &CudaAct,
    span: &Range<usize>,
) -> Result<(), GpuError> {
    let n = span.len();
    cache.reserve(st, n)?;
    let w = cache.kv_heads * cache.head_dim;
    let (at, end) = (cache.len * w, (cache.len + n) * w);
    let src = span.start * w..span.end * w;
    let (kc, vc) = (cache.k.as_mut(), cache.v.as_mut());
    let (Some(kc), Some(vc)) = (kc, vc) else {
        unreachable!("reserve allocates both buffers")
    };
    st.memcpy_dtod(&k.data.slice(src.clone()), &mut kc.slice_mut(at..end))?;
    st.memcpy_dtod(&v.data.slice(src), &mut vc.slice_mut(at..end))?;
    cache.len += n;
    Ok(())
}

/// See `Backend::attention`; shapes and spans checked by the caller.
pub(crate) fn attention(
    st: &Arc<CudaStream>,
    q: &CudaAct,
    k: &CudaAct,
    v: &CudaAct,
    caches: &mut [&mut CudaKv],
    spans: &[Range<usize>],
    geom: &AttnGeom,
) -> Result<CudaAct, GpuError> {
    let qw = geom.heads * geom.head_dim;
    // SAFETY: every row belongs to one span (checked by the caller) and each
    // span's rows are written by its launch.
    let mut out = unsafe { st.alloc::<u16>((q.rows * qw).max(1)) }?;
    for (cache, span) in caches.iter_mut().zip(spans) {
        if span.is_empty() {
            continue;
        }
        append(st, cache, k, v, span)?;
        let s = AttnShape {
            n: i32_of("attention rows", span.len())?,
            len: i32_of("cache length", cache.len)?,
            heads: i32_of("heads", geom.heads)?,
            kv_heads: i32_of("kv heads", geom.kv_heads)?,
            head_dim: i32_of("head dim", geom.head_dim)?,
            window: i32_of("sliding window", geom.window.unwrap_or(0))?,
            scale: geom.scale,
        };
        let rows = span.start * qw..span.end * qw;
        let (Some(kc), Some(vc)) = (cache.k.as_ref(), cache.v.as_ref()) else {
            unreachable!("append allocates both buffers")
        };
        let qv = q.data.slice(rows.clone());
        let (qp, _g1) = qv.device_ptr(st);
        let (kp, _g2) = kc.device_ptr(st);
        let (vp, _g3) = vc.device_ptr(st);
        let mut o = out.slice_mut(rows);
        let (op, _g4) = o.device_ptr_mut(st);
        // SAFETY: q/out hold the span's n * heads * head_dim bf16, the caches
        // len * kv_heads * head_dim written positions; all alive (guards) until
        // the stream has run the launch.
        unsafe { model_launch::attention(s, qp, kp, vp, op, st.cu_stream() as _)? };
    }
    Ok(CudaAct {
        data: out,
        rows: q.rows,
        cols: qw,
    })
}
