//! The CUDA backend's MoE: [`moe_device`], the one device composition
//! (routed on the device, [`layer_forward`]) every device-routed path calls,
//! finished by what the caller keeps; and the primitives over a host-made
//! plan and layout (`reroute:optimal`, empty batches, host-layout replay):
//! dispatch through the routing gather (`capmoe_gather_bf16`), the experts
//! through [`ExpertFfn::forward_layout`] (CUTLASS grouped GEMMs around
//! SwiGLU), combine through `capmoe_combine_bf16`. The host arrays each
//! kernel needs are uploaded, stream-ordered.

use super::tensor::CudaAct;
use super::CudaBackend;
use crate::backend::{Backend, BackendError, DeferredRoute, HostRankLayer, MoeOutput, MoeWeights};
use crate::cuda::expert::{layer_forward, LayerRun};
use crate::cuda::model_ops as ops;
use crate::cuda::routing::rows::{combine_bf16, gather_bf16, HostCombine, HostRows};
use crate::cuda::workspace::give;
use crate::cuda::{
    ExpertFfn, GpuContext, GpuDispatch, GpuError, GpuPlan, GpuRouter, LayerWorkspace, PlanSummary,
};
use crate::routing::{DispatchLayout, PlanTotals, RouterConfig, RoutingPlan, PAD};
use cudarc::driver::CudaSlice;
use std::ops::Range;
use std::sync::Mutex;

/// One layer's experts on the device: bf16 `W13`/`W2` behind the grouped
/// GEMMs, the layer's router bias as last uploaded, and the workspace its
/// eager calls reuse.
pub struct CudaExperts {
    pub(crate) ffn: ExpertFfn,
    /// The host bias this device copy was made from: `MoeWeights::router_bias`
    /// is a public field, so each call compares (E floats) before it reuses.
    bias: Mutex<Option<(Vec<f32>, CudaSlice<f32>)>>,
    /// The buffers `Backend::moe` calls give back and take again
    /// ([`moe_device_pooled`]).
    work: Mutex<LayerWorkspace>,
}

impl CudaExperts {
    pub(crate) fn new(ffn: ExpertFfn) -> Self {
        let work = Mutex::new(LayerWorkspace::new(ffn.gpu.stream()));
        Self {
            ffn,
            bias: Mutex::new(None),
            work,
        }
    }

    /// Free device buffers the layer's workspace holds between eager calls.
    pub fn workspace_buffers(&self) -> usize {
        self.work
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .buffers()
    }

    /// The device expert FFN (weights and grouped-GEMM variants).
    pub fn ffn(&self) -> &ExpertFfn {
        &self.ffn
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Token rows into the layout's rows (padding rows zero).
pub(crate) fn dispatch(
    gpu: &GpuContext,
    x: &CudaAct,
    layout: &DispatchLayout,
) -> Result<CudaAct, GpuError> {
    let st = gpu.stream();
    let map = HostRows::upload(st, layout, x.rows)?;
    let data = gather_bf16(st, &x.data, x.cols, &map.map())?;
    Ok(CudaAct {
        data,
        rows: layout.rows(),
        cols: x.cols,
    })
}

/// Experts `range` on their rows; returns rows `offsets[range.start] ..
/// offsets[range.end]` (padding zero), as `Backend::expert_ffn`.
pub(crate) fn expert_ffn(
    gpu: &GpuContext,
    rows: &CudaAct,
    layout: &DispatchLayout,
    experts: &CudaExperts,
    range: Range<usize>,
) -> Result<CudaAct, GpuError> {
    let st = gpu.stream();
    let hidden = rows.cols;
    let y = experts
        .ffn
        .forward_layout(layout, &rows.data, range.clone())?;
    let offs = layout.offsets();
    let (first, last) = (offs[range.start] as usize, offs[range.end] as usize);
    let n = last - first;
    // The range's rows, padding zeroed (forward_layout leaves padding and
    // other experts' rows unwritten): a row gather with PAD for padding.
    let idx: Vec<u32> = layout.row_tokens()[first..last]
        .iter()
        .enumerate()
        .map(|(i, &t)| if t == PAD { PAD } else { (first + i) as u32 })
        .collect();
    let idx = st.clone_htod(if idx.is_empty() { &[PAD][..] } else { &idx })?;
    let data = ops::gather_rows(st, &y, (layout.rows(), hidden), &idx, n)?;
    Ok(CudaAct {
        data,
        rows: n,
        cols: hidden,
    })
}

/// Weighted gather back to token order (`routing::combine`'s semantics, f32
/// accumulation, one bf16 rounding).
pub(crate) fn combine(
    gpu: &GpuContext,
    plan: &RoutingPlan,
    layout: &DispatchLayout,
    y: &CudaAct,
) -> Result<CudaAct, GpuError> {
    let st = gpu.stream();
    let map = HostCombine::upload(st, plan, layout)?;
    let data = combine_bf16(st, &map.map(), &y.data, y.cols)?;
    Ok(CudaAct {
        data,
        rows: plan.tokens(),
        cols: y.cols,
    })
}

/// Runs `f` with the device router of `router`, the router GEMM's f32
/// logits of `x` and the layer's device bias (uploaded once and reused
/// while the host bias is unchanged: no copy or allocation per call).
fn with_router<R>(
    be: &CudaBackend,
    w: &MoeWeights<CudaBackend>,
    x: &CudaAct,
    router: &RouterConfig,
    f: impl FnOnce(&GpuRouter, &CudaSlice<f32>, Option<&CudaSlice<f32>>) -> Result<R, GpuError>,
) -> Result<R, crate::backend::BackendError> {
    let shape = w.experts.ffn.shape();
    if x.cols != shape.hidden {
        return Err(crate::backend::shape_err(
            "MoE input [tokens, hidden]",
            vec![x.rows, x.cols],
            vec![x.rows, shape.hidden],
        ));
    }
    let (e, h) = be.mat_shape(&w.gate);
    if (e, h) != (shape.experts, shape.hidden) {
        return Err(crate::backend::shape_err(
            "router [experts, hidden]",
            vec![e, h],
            vec![shape.experts, shape.hidden],
        ));
    }
    let st = be.gpu.stream();
    let logits = super::blas::linear::<f32>(&be.blas, x, &w.gate)?;
    let mut cached = w
        .experts
        .bias
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &w.router_bias {
        Some(b) if b.len() != shape.experts => {
            return Err(crate::backend::shape_err(
                "router bias",
                vec![b.len()],
                vec![shape.experts],
            ))
        }
        Some(b) if !cached.as_ref().is_some_and(|(host, _)| same_bits(host, b)) => {
            *cached = Some((b.clone(), st.clone_htod(b)?));
        }
        _ => {}
    }
    let bias = w.router_bias.as_ref().and(cached.as_ref().map(|(_, d)| d));
    let gpu_router = GpuRouter::new(&be.gpu, router.clone())?;
    let r = f(&gpu_router, &logits, bias)?;
    give(logits);
    Ok(r)
}

/// `ep::EpBackend::route_only` on the device: the router GEMM and the device
/// router, the plan dropped (stream-ordered; nothing read back).
pub(crate) fn route_only(
    be: &CudaBackend,
    w: &MoeWeights<CudaBackend>,
    x: &CudaAct,
    router: &RouterConfig,
) -> Result<(), crate::backend::BackendError> {
    let e = w.experts.ffn.shape().experts;
    with_router(be, w, x, router, |r, logits, bias| {
        r.route_biased(logits, bias, x.rows, e).map(drop)
    })
}

/// What the CUDA backend keeps of a layer for EP rank replay: the device
/// plan, its dispatch layout and gathered rows (and the layout's host twin,
/// for each rank's row span); or, for a host-routed layer
/// (`reroute:optimal`, an empty batch), the host layout and rows.
pub enum CudaRankLayer {
    /// Routed on the host.
    Host(Box<HostRankLayer<CudaBackend>>),
    /// Routed on the device.
    Device(Box<DeviceRankLayer>),
}

/// A device-routed layer kept for EP rank replay.
pub struct DeviceRankLayer {
    /// The host twin of `dispatch` (bit for bit: the emulated tests check it).
    pub layout: DispatchLayout,
    /// The device plan.
    pub plan: GpuPlan,
    /// Its device dispatch layout.
    pub dispatch: GpuDispatch,
    /// The rows it gathered, `[max rows, hidden]`.
    pub rows: CudaSlice<u16>,
}

/// What a caller keeps of [`moe_device`]'s layer: the composition is one,
/// the finish differs.
pub(crate) trait Keep {
    type Out;
    /// `out` is the layer's output, `run` its device plan, layout and rows.
    fn finish(be: &CudaBackend, out: CudaAct, run: DeviceParts) -> Result<Self::Out, BackendError>;
}

/// A device-routed layer's plan, dispatch layout and gathered rows.
pub(crate) struct DeviceParts {
    plan: GpuPlan,
    dispatch: GpuDispatch,
    rows: CudaSlice<u16>,
}

/// The plan reduced to its [`PlanSummary`] (totals enqueued, no read-back, so
/// no host sync): `MoeMode::Deferred` and the decode graph.
pub(crate) struct KeepSummary;
/// The plan downloaded and its layout made on the host: `MoeMode::Plan`.
pub(crate) struct KeepPlan;
/// As [`KeepPlan`], and the device plan, layout and rows kept for EP rank
/// replay: `ep::EpBackend::moe_kept`.
pub(crate) struct KeepReplay;

impl Keep for KeepSummary {
    type Out = (CudaAct, PlanSummary);
    fn finish(_: &CudaBackend, out: CudaAct, run: DeviceParts) -> Result<Self::Out, BackendError> {
        let summary = run.plan.into_summary()?;
        run.dispatch.recycle();
        give(run.rows);
        Ok((out, summary))
    }
}

fn host_plan(
    be: &CudaBackend,
    gplan: &GpuPlan,
) -> Result<(RoutingPlan, DispatchLayout), BackendError> {
    let plan = gplan.to_host()?;
    let layout = DispatchLayout::new(&plan, be.dispatch_tile())?;
    Ok((plan, layout))
}

impl Keep for KeepPlan {
    type Out = MoeOutput<CudaBackend>;
    fn finish(be: &CudaBackend, out: CudaAct, run: DeviceParts) -> Result<Self::Out, BackendError> {
        let (plan, layout) = host_plan(be, &run.plan)?;
        run.plan.recycle();
        run.dispatch.recycle();
        give(run.rows);
        Ok(MoeOutput { out, plan, layout })
    }
}

impl Keep for KeepReplay {
    type Out = (MoeOutput<CudaBackend>, CudaRankLayer);
    fn finish(be: &CudaBackend, out: CudaAct, run: DeviceParts) -> Result<Self::Out, BackendError> {
        let (plan, layout) = host_plan(be, &run.plan)?;
        let kept = CudaRankLayer::Device(Box::new(DeviceRankLayer {
            layout: layout.clone(),
            plan: run.plan,
            dispatch: run.dispatch,
            rows: run.rows,
        }));
        Ok((MoeOutput { out, plan, layout }, kept))
    }
}

/// The CUDA backend's one device MoE composition, which every device-routed
/// path calls (eager, deferred, the decode graph's capture, EP replay's
/// record): the router GEMM and bias ([`with_router`]), then
/// [`layer_forward`] (route on the device, dispatch, gather, expert FFN,
/// combine), all stream-ordered; then `K`'s finish.
pub(crate) fn moe_device<K: Keep>(
    be: &CudaBackend,
    w: &MoeWeights<CudaBackend>,
    x: &CudaAct,
    router: &RouterConfig,
) -> Result<K::Out, BackendError> {
    let ffn = &w.experts.ffn;
    let LayerRun {
        out,
        plan,
        dispatch,
        rows,
    } = with_router(be, w, x, router, |r, logits, bias| {
        layer_forward(r, ffn, logits, bias, &x.data, x.rows)
    })?;
    let out = CudaAct {
        data: out,
        rows: x.rows,
        cols: ffn.shape().hidden,
    };
    K::finish(
        be,
        out,
        DeviceParts {
            plan,
            dispatch,
            rows,
        },
    )
}

/// [`moe_device`] with the layer's workspace active (`Backend::moe`, eager):
/// its temporaries, plan, layout and rows go back to the workspace and the
/// next call at a shape it has seen takes them again, so such a call
/// allocates only what it hands out (its output, and under `KeepSummary`
/// the summary's record). The workspace keeps the last call's buffers only
/// (a call at a new shape drops the old shape's), so it never grows past
/// one call's worth. Not while the stream captures a graph (a graph's
/// buffers must stay its own), nor when another thread holds the workspace
/// or a workspace is already active on this thread: then it is [`moe_device`].
pub(crate) fn moe_device_pooled<K: Keep>(
    be: &CudaBackend,
    w: &MoeWeights<CudaBackend>,
    x: &CudaAct,
    router: &RouterConfig,
) -> Result<K::Out, BackendError> {
    let st = be.gpu.stream();
    let idle = st.capture_status().is_ok_and(|s| {
        s == cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
    });
    match w.experts.work.try_lock() {
        Ok(mut ws) if idle && ws.is_on(st) && !crate::cuda::workspace::active_here() => {
            ws.with_pool(true, |_| moe_device::<K>(be, w, x, router))
        }
        _ => moe_device::<K>(be, w, x, router),
    }
}

/// `ep::EpBackend::moe_kept` on the device: [`moe_device`] keeping [`KeepReplay`].
pub(crate) fn forward_kept(
    be: &CudaBackend,
    w: &MoeWeights<CudaBackend>,
    x: &CudaAct,
    router: &RouterConfig,
) -> Result<(MoeOutput<CudaBackend>, CudaRankLayer), BackendError> {
    moe_device::<KeepReplay>(be, w, x, router)
}

/// `ep::EpBackend::rank_ffn` of a kept layer: on the device layout, the range's
/// groups of the device-made GEMM arguments and its rows (no upload), the
/// rows then copied out in one device copy.
pub(crate) fn rank_ffn(
    be: &CudaBackend,
    layer: &CudaRankLayer,
    experts: &CudaExperts,
    range: Range<usize>,
) -> Result<CudaAct, crate::backend::BackendError> {
    let d = match layer {
        CudaRankLayer::Host(h) => return h.ffn(be, experts, range),
        CudaRankLayer::Device(d) => d,
    };
    let (layout, plan, dispatch, rows) = (&d.layout, &d.plan, &d.dispatch, &d.rows);
    let hidden = experts.ffn.shape().hidden;
    let offs = layout.offsets();
    if range.start > range.end || range.end + 1 > offs.len() {
        return Err(BackendError::ExpertRange {
            start: range.start,
            end: range.end,
            experts: offs.len().saturating_sub(1),
        });
    }
    let span = offs[range.start] as usize..offs[range.end] as usize;
    let y = experts
        .ffn
        .forward_experts(plan, dispatch, rows, range, span.clone())?;
    let st = be.gpu.stream();
    let n = span.len() * hidden;
    let mut out = be.alloc(n)?;
    if n > 0 {
        st.memcpy_dtod(
            &y.slice(span.start * hidden..span.end * hidden),
            &mut out.slice_mut(..n),
        )?;
    }
    Ok(CudaAct {
        data: out,
        rows: span.len(),
        cols: hidden,
    })
}

/// `Backend::settle`: the device summaries in one download, each error
/// named by its layer.
pub(crate) fn settle(
    be: &CudaBackend,
    routes: Vec<DeferredRoute<PlanSummary>>,
) -> Result<Vec<PlanTotals>, BackendError> {
    let mut layers = Vec::new();
    let mut summaries = Vec::new();
    let mut out: Vec<Option<PlanTotals>> = Vec::with_capacity(routes.len());
    for (l, r) in routes.into_iter().enumerate() {
        match r {
            DeferredRoute::Host(totals) => out.push(Some(totals)),
            DeferredRoute::Device(s) => {
                layers.push(l);
                summaries.push(s);
                out.push(None);
            }
        }
    }
    if !summaries.is_empty() {
        let totals = crate::cuda::settle(be.gpu.stream(), &summaries)?;
        for (l, v) in layers.into_iter().zip(totals) {
            out[l] = Some(v.map_err(|e| BackendError::Layer {
                layer: l,
                source: Box::new(e.into()),
            })?);
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}
