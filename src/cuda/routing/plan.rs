//! [`GpuPlan`]: a routed batch on the device, and its copy back to the
//! oracle's [`RoutingPlan`].

use super::buffers::{alloc, as_u32, scratch};
use super::gate::Gated;
use super::select::Selected;
use crate::cuda::launch::{self, ptr, ptr_mut, Shape, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::{CapacityInfo, Gate, Overflow, PlanParts, RouterConfig, RoutingPlan};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// A routed batch, resident on the device.
pub struct GpuPlan {
    pub(super) stream: Arc<CudaStream>,
    pub(super) cfg: RouterConfig,
    pub(super) capacity: Option<CapacityInfo>,
    pub(super) shape: Shape,
    pub(super) stride: usize,
    pub(super) rounds: usize,
    pub(super) gated: Gated,
    pub(super) offsets: CudaSlice<i32>,
    pub(super) expert_ids: CudaSlice<i32>,
    pub(super) token_ids: CudaSlice<i32>,
    pub(super) weights: CudaSlice<f32>,
    pub(super) probs_out: CudaSlice<f32>,
    pub(super) load: CudaSlice<u32>,
    pub(super) overflow: CudaSlice<i32>,
    pub(super) overflow_count: CudaSlice<i32>,
    pub(super) flags: Option<CudaSlice<i32>>,
}

impl GpuPlan {
    /// The plan step: compacts the selection into the CSR plan.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        st: Arc<CudaStream>,
        cfg: &RouterConfig,
        capacity: Option<CapacityInfo>,
        shape: Shape,
        stride: usize,
        rounds: usize,
        gated: Gated,
        selected: Selected,
    ) -> Result<Self, GpuError> {
        let (tokens, experts, k) = (
            shape.tokens as usize,
            shape.experts as usize,
            shape.k as usize,
        );
        let n = tokens * stride;
        let mut p = GpuPlan {
            offsets: scratch(&st, tokens + 1)?,
            expert_ids: scratch(&st, n)?,
            token_ids: scratch(&st, n)?,
            weights: scratch(&st, n)?,
            probs_out: scratch(&st, n)?,
            load: alloc(&st, experts)?,
            overflow: scratch(&st, tokens * k)?,
            overflow_count: alloc(&st, 1)?,
            stream: st,
            cfg: cfg.clone(),
            capacity,
            shape,
            stride,
            rounds,
            gated,
            flags: selected.flags,
        };
        let st = &p.stream;
        let bytes = launch::plan_workspace(shape.tokens, shape.k);
        let mut ws = scratch::<u8>(st, bytes)?;
        let g = &p.gated;
        let (pp, _g1) = g.probs.device_ptr(st);
        let (tk, _g2) = g.topk.device_ptr(st);
        let (ts, _g3) = g.topk_sum.device_ptr(st);
        // `none` serves the top-k itself (stride k).
        let (sv, _g4) = selected.served.as_ref().unwrap_or(&g.topk).device_ptr(st);
        let (w, _g5) = ws.device_ptr_mut(st);
        let (o, _o1) = p.offsets.device_ptr_mut(st);
        let (x, _o2) = p.expert_ids.device_ptr_mut(st);
        let (ti, _o3) = p.token_ids.device_ptr_mut(st);
        let (wt, _o4) = p.weights.device_ptr_mut(st);
        let (po, _o5) = p.probs_out.device_ptr_mut(st);
        let (ld, _o6) = p.load.device_ptr_mut(st);
        let (of, _o7) = p.overflow.device_ptr_mut(st);
        let (oc, _o8) = p.overflow_count.device_ptr_mut(st);
        let a = sys::capmoe_plan_args {
            probs: ptr(pp),
            topk: ptr(tk),
            topk_sum: ptr(ts),
            served: ptr(sv),
            shape,
            stride: stride as i32,
            renormalize: i32::from(cfg.renormalize),
            workspace: ptr_mut(w),
            workspace_bytes: bytes,
            offsets: ptr_mut(o),
            expert_ids: ptr_mut(x),
            token_ids: ptr_mut(ti),
            weights: ptr_mut(wt),
            probs_out: ptr_mut(po),
            load: ptr_mut(ld),
            overflow: ptr_mut(of),
            overflow_count: ptr_mut(oc),
        };
        // SAFETY: every output sized from tokens, stride, k and experts above.
        unsafe { launch::plan(&a, st.cu_stream() as Stream)? };
        drop((_g1, _g2, _g3, _g4, _g5));
        drop((_o1, _o2, _o3, _o4, _o5, _o6, _o7, _o8));
        crate::cuda::workspace::give(ws);
        if let Some(s) = selected.served {
            crate::cuda::workspace::give(s);
        }
        Ok(p)
    }

    /// Hands the buffers to the active layer workspace, if any (else drops them).
    pub(crate) fn recycle(self) {
        self.gated.recycle();
        crate::cuda::workspace::give(self.offsets);
        crate::cuda::workspace::give(self.expert_ids);
        crate::cuda::workspace::give(self.token_ids);
        crate::cuda::workspace::give(self.weights);
        crate::cuda::workspace::give(self.probs_out);
        crate::cuda::workspace::give(self.load);
        crate::cuda::workspace::give(self.overflow);
        crate::cuda::workspace::give(self.overflow_count);
        if let Some(f) = self.flags {
            crate::cuda::workspace::give(f);
        }
    }

    /// Tokens `T`.
    pub fn tokens(&self) -> usize {
        self.shape.tokens as usize
    }

    /// Experts `E`.
    pub fn experts(&self) -> usize {
        self.shape.experts as usize
    }

    /// The stream the plan's buffers are ordered on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The configuration this plan was routed under.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Upper bound on served assignments (`tokens * stride`); buffers hold this many.
    pub fn max_assignments(&self) -> usize {
        self.tokens() * self.stride
    }

    /// The first NaN or Inf logit the gating kernel saw (synchronises).
    fn check_finite(&self) -> Result<(), GpuError> {
        nonfinite_error(
            self.stream.clone_dtoh(&self.gated.nonfinite)?[0],
            self.experts(),
        )
    }

    /// Copies the plan back (this synchronises) and checks it: a NaN or Inf
    /// logit is [`crate::RoutingError::NonFiniteLogit`], as on the CPU.
    pub fn to_host(&self) -> Result<RoutingPlan, GpuError> {
        let st = &self.stream;
        self.check_finite()?;
        if let Some(flags) = &self.flags {
            let f = st.clone_dtoh(flags)?;
            if f[sys::CAPMOE_NB_CONVERGED as usize] != 1 {
                return Err(GpuError::NotConverged {
                    rounds: self.rounds,
                });
            }
        }
        let (t, e, k) = (self.tokens(), self.experts(), self.shape.k as usize);
        let g = &self.gated;
        let mut probs = st.clone_dtoh(&g.probs)?;
        probs.truncate(t * e);
        let mut topk = as_u32(st.clone_dtoh(&g.topk)?);
        topk.truncate(t * k);
        let mut topk_sum = st.clone_dtoh(&g.topk_sum)?;
        topk_sum.truncate(t);
        let gate = Gate::from_parts(e, k, probs, topk, topk_sum)?;
        let offsets = as_u32(st.clone_dtoh(&self.offsets)?);
        let n = offsets.get(t).copied().unwrap_or(0) as usize;
        let mut expert = as_u32(st.clone_dtoh(&self.expert_ids)?);
        expert.truncate(n);
        let mut weight = st.clone_dtoh(&self.weights)?;
        weight.truncate(n);
        let mut prob = st.clone_dtoh(&self.probs_out)?;
        prob.truncate(n);
        let mut offsets = offsets;
        offsets.truncate(t + 1);
        let parts = PlanParts {
            offsets,
            expert,
            weight,
            prob,
        };
        Ok(RoutingPlan::from_parts(
            &gate,
            parts,
            self.cfg.policy,
            self.capacity,
            self.cfg.renormalize,
        )?)
    }

    /// Per-expert served counts on the device (at least E u32).
    pub(crate) fn load(&self) -> &CudaSlice<u32> {
        &self.load
    }

    /// Per-expert served counts (synchronises).
    pub fn load_host(&self) -> Result<Vec<u32>, GpuError> {
        let mut v = self.stream.clone_dtoh(&self.load)?;
        v.truncate(self.experts());
        Ok(v)
    }

    /// The compacted overflow list (synchronises).
    pub fn overflow_host(&self) -> Result<Vec<Overflow>, GpuError> {
        self.check_finite()?;
        self.overflow_unchecked()
    }

    /// The overflow list without the non-finite check: the layout of a
    /// flagged plan still comes back (its ranges are checked, not its values).
    pub(crate) fn overflow_unchecked(&self) -> Result<Vec<Overflow>, GpuError> {
        let n = self.stream.clone_dtoh(&self.overflow_count)?[0] as usize;
        let idx = self.stream.clone_dtoh(&self.overflow)?;
        let topk = self.stream.clone_dtoh(&self.gated.topk)?;
        let k = self.shape.k as usize;
        let Some(idx) = idx.get(..n) else {
            let what = "overflow count (beyond its buffer)";
            return Err(crate::RoutingError::ShapeMismatch {
                what,
                len: n,
                expected: idx.len(),
            }
            .into());
        };
        idx.iter()
            .map(|&i| {
                let expert = topk.get(i as usize).ok_or(GpuError::Launch {
                    launcher: "capmoe_plan",
                    code: sys::CAPMOE_STATUS_BAD_ARGUMENT,
                    message: format!("overflow index {i} is outside the top-k"),
                })?;
                Ok(Overflow {
                    token: (i as usize / k) as u32,
                    expert: *expert as u32,
                })
            })
            .collect()
    }
}

/// The gating kernel's non-finite record `v` (0: none; else the complement
/// of `index << 32 | bits` of the first NaN or Inf logit) as the error.
pub(super) fn nonfinite_error(v: u64, experts: usize) -> Result<(), GpuError> {
    if v == 0 {
        return Ok(());
    }
    let key = !v;
    let at = (key >> 32) as usize;
    let e = experts.max(1);
    Err(crate::RoutingError::NonFiniteLogit {
        token: at / e,
        expert: at % e,
        value: f32::from_bits(key as u32),
    }
    .into())
}
