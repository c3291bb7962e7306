//! Attention of several sequences over their caches: the new keys and
//! values are appended (device copies), then one kernel launch per sequence
//! (`cuda/model/attention.cu`).

use super::tensor::{CudaAct, CudaKv};
use crate::backend::AttnGeom;
use crate::cuda::model_ops::{self as ops, AttnDims};
use crate::cuda::GpuError;
use cudarc::driver::CudaStream;
use std::ops::Range;
use std::sync::Arc;

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
    // Not zeroed: every row belongs to one span (checked by the caller) and
    // each span's rows are written by its launch.
    let mut out = crate::cuda::uninit::<u16>(st, q.rows * qw)?;
    for (cache, span) in caches.iter_mut().zip(spans) {
        if span.is_empty() {
            continue;
        }
        append(st, cache, k, v, span)?;
        let dims = AttnDims {
            n: span.len(),
            len: cache.len,
            heads: geom.heads,
            kv_heads: geom.kv_heads,
            head_dim: geom.head_dim,
            window: geom.window,
            scale: geom.scale,
        };
        let rows = span.start * qw..span.end * qw;
        let (Some(kc), Some(vc)) = (cache.k.as_ref(), cache.v.as_ref()) else {
            unreachable!("append allocates both buffers")
        };
        let qv = q.data.slice(rows.clone());
        let mut o = out.slice_mut(rows);
        ops::attention(st, &qv, (kc, vc), dims, &mut o)?;
    }
    Ok(CudaAct {
        data: out,
        rows: q.rows,
        cols: qw,
    })
}
