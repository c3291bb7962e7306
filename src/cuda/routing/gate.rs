//! The gating kernel's wrapper (cuda/routing/gate.cu; twin:
//! `crate::routing::gate`): softmax, top-k and the non-finite check, the first
//! step of [`super::GpuRouter::route`].

use super::buffers::{alloc, scratch};
use super::select::raw;
use crate::cuda::launch::{self, ptr, ptr_mut, Shape};
use crate::cuda::{sys, GpuError};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// The gating kernel's outputs.
pub(super) struct Gated {
    pub probs: CudaSlice<f32>,
    pub topk: CudaSlice<i32>,
    pub topk_sum: CudaSlice<f32>,
    /// 0, or `!(flat index << 32 | f32 bits)` of the first NaN/Inf logit.
    pub nonfinite: CudaSlice<u64>,
}

impl Gated {
    /// Hands the buffers to the active layer workspace, if any (else drops them).
    pub(super) fn recycle(self) {
        crate::cuda::workspace::give(self.probs);
        crate::cuda::workspace::give(self.topk);
        crate::cuda::workspace::give(self.topk_sum);
        crate::cuda::workspace::give(self.nonfinite);
    }
}

/// Launches the gating kernel over `[tokens, experts]` logits (`shape`,
/// checked by the caller), with an optional per-expert bias.
pub(super) fn gate(
    st: &Arc<CudaStream>,
    shape: Shape,
    logits: &CudaSlice<f32>,
    bias: Option<&CudaSlice<f32>>,
) -> Result<Gated, GpuError> {
    let (t, e, k) = (
        shape.tokens as usize,
        shape.experts as usize,
        shape.k as usize,
    );
    let mut g = Gated {
        probs: scratch(st, t * e)?,
        topk: scratch(st, t * k)?,
        topk_sum: scratch(st, t)?,
        nonfinite: alloc(st, 1)?,
    };
    let (l, _gl) = logits.device_ptr(st);
    let bias = bias.map(|b| b.device_ptr(st));
    let (pp, _gp) = g.probs.device_ptr_mut(st);
    let (tk, _gt) = g.topk.device_ptr_mut(st);
    let (ts, _gs) = g.topk_sum.device_ptr_mut(st);
    let (nf, _gn) = g.nonfinite.device_ptr_mut(st);
    let a = sys::capmoe_gate_args {
        logits: ptr(l),
        bias: bias.as_ref().map_or(std::ptr::null(), |(b, _)| ptr(*b)),
        shape,
        probs: ptr_mut(pp),
        topk: ptr_mut(tk),
        topk_sum: ptr_mut(ts),
        nonfinite: ptr_mut(nf),
    };
    // SAFETY: buffers sized for `shape` just above (logits and bias by the
    // caller's checks); the guards live across the launch.
    unsafe { launch::gate(&a, raw(st))? };
    drop((_gl, bias, _gp, _gt, _gs, _gn));
    Ok(g)
}
