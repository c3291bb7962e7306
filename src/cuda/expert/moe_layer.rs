//! [`MoeLayer`]: routing, dispatch, the expert FFN and combine on one stream.

use super::ExpertFfn;
use crate::cuda::workspace::{give, LayerWorkspace};
use crate::cuda::{GpuDispatch, GpuError, GpuPlan, GpuRouter};
use cudarc::driver::CudaSlice;

/// Rows per expert are padded to this many in the dispatch layout. The
/// grouped GEMMs take each expert's real row count, so padding buys nothing
/// there; 1 keeps the buffers at `T * k` rows.
const DISPATCH_TILE: usize = 1;

/// A sparse MoE block on the GPU: a [`GpuRouter`] (any policy it runs) and
/// the experts' [`ExpertFfn`].
///
/// ```no_run
/// # fn main() -> Result<(), capmoe::cuda::GpuError> {
/// use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter, MoeLayer};
/// use capmoe::routing::RouterConfig;
/// let gpu = GpuContext::new(0)?;
/// let ffn = ExpertFfn::random(&gpu, FfnShape::new(8, 4096, 14336)?, 1)?;
/// let cfg = RouterConfig::new(2, "reroute:next-best".parse()?).with_capacity_factor(1.5);
/// let layer = MoeLayer::new(GpuRouter::new(&gpu, cfg)?, ffn)?;
/// let logits = gpu.stream().alloc_zeros::<f32>(16 * 8)?;
/// let x = gpu.stream().alloc_zeros::<u16>(16 * 4096)?;
/// let (out, plan) = layer.forward(&logits, &x, 16)?; // out: [16, 4096] bf16
/// # Ok(()) }
/// ```
pub struct MoeLayer {
    router: GpuRouter,
    ffn: ExpertFfn,
}

impl MoeLayer {
    /// A layer that routes with `router` and runs `ffn`'s experts.
    pub fn new(router: GpuRouter, ffn: ExpertFfn) -> Result<Self, GpuError> {
        Ok(Self { router, ffn })
    }

    /// The router.
    pub fn router(&self) -> &GpuRouter {
        &self.router
    }

    /// The experts' FFN weights and kernels.
    pub fn ffn(&self) -> &ExpertFfn {
        &self.ffn
    }

    /// Router logits `[T, E]` (f32) and hidden states `x [T, H]` (bf16) on
    /// the device to the layer's output `[T, H]` (bf16): each token's served
    /// experts' outputs weighted by the routing weights, zero for a token
    /// that lost every expert (the residual carries it). Returns the plan too.
    pub fn forward(
        &self,
        logits: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        tokens: usize,
    ) -> Result<(CudaSlice<u16>, GpuPlan), GpuError> {
        let run = layer_forward(&self.router, &self.ffn, logits, None, x, tokens)?;
        Ok((run.out, run.plan))
    }

    /// Sizes `ws` for calls of `tokens` tokens before the first real one:
    /// one call of [`MoeLayer::forward_in`] on zero logits and activations
    /// (uniform routing, so every policy takes its usual path), after which
    /// a call at that shape allocates nothing.
    pub fn prepare(&self, ws: &mut LayerWorkspace, tokens: usize) -> Result<(), GpuError> {
        let shape = self.ffn.shape();
        let st = self.ffn.gpu.stream();
        let n = |w: usize| {
            tokens.checked_mul(w).ok_or(GpuError::TooLarge {
                what: "prepare tokens",
                value: tokens,
            })
        };
        let logits = st.alloc_zeros::<f32>(n(shape.experts)?.max(1))?;
        let x = st.alloc_zeros::<u16>(n(shape.hidden)?.max(1))?;
        self.forward_in(ws, &logits, &x, tokens).map(drop)
    }

    /// [`MoeLayer::forward`] with its device buffers taken from `ws` and
    /// given back to it: after a first call at a shape, a call at the same
    /// shape allocates nothing. The output and plan stay in `ws` until its
    /// next call, which reuses their buffers. Same values as `forward`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), capmoe::cuda::GpuError> {
    /// use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter, LayerWorkspace, MoeLayer};
    /// use capmoe::routing::RouterConfig;
    /// let gpu = GpuContext::new(0)?;
    /// let ffn = ExpertFfn::random(&gpu, FfnShape::new(8, 4096, 14336)?, 1)?;
    /// let layer = MoeLayer::new(GpuRouter::new(&gpu, RouterConfig::new(2, "drop:score".parse()?))?, ffn)?;
    /// let mut ws = LayerWorkspace::new(gpu.stream());
    /// let logits = gpu.stream().alloc_zeros::<f32>(4 * 8)?;
    /// let x = gpu.stream().alloc_zeros::<u16>(4 * 4096)?;
    /// for _step in 0..16 {
    ///     let (out, _plan) = layer.forward_in(&mut ws, &logits, &x, 4)?; // no allocation after the first
    ///     let _bits = gpu.stream().clone_dtoh(out)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn forward_in<'w>(
        &self,
        ws: &'w mut LayerWorkspace,
        logits: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        tokens: usize,
    ) -> Result<(&'w CudaSlice<u16>, &'w GpuPlan), GpuError> {
        ws.with_pool(false, |last| {
            if let Some(run) = last.take() {
                run.recycle();
            }
            *last = Some(layer_forward(
                &self.router,
                &self.ffn,
                logits,
                None,
                x,
                tokens,
            )?);
            Ok::<(), GpuError>(())
        })?;
        let run = ws.last.as_ref().ok_or(GpuError::Shape {
            what: "layer workspace",
            got: "no output".into(),
            expected: "the call's output".into(),
        })?;
        Ok((&run.out, &run.plan))
    }
}

/// What [`layer_forward`] leaves: the output, and the plan, its dispatch
/// layout and the dispatched rows (which EP rank replay reuses).
pub(crate) struct LayerRun {
    pub(crate) out: CudaSlice<u16>,
    pub(crate) plan: GpuPlan,
    pub(crate) dispatch: GpuDispatch,
    pub(crate) rows: CudaSlice<u16>,
}

impl LayerRun {
    /// Hands every buffer to the active layer workspace, if any (else drops them).
    pub(crate) fn recycle(self) {
        give(self.out);
        give(self.rows);
        self.plan.recycle();
        self.dispatch.recycle();
    }
}

/// The one MoE layer on the GPU, shared by [`MoeLayer`] (and so its graph)
/// and the CUDA backend's device composition (`backend::cuda::moe::moe_device`:
/// eager, deferred, the decode graph, EP replay's record): device routing (bias added in the gating
/// kernel), the dispatch layout, the routing gather, the grouped-GEMM
/// experts and the bf16 combine, all enqueued on the router's stream.
pub(crate) fn layer_forward(
    router: &GpuRouter,
    ffn: &ExpertFfn,
    logits: &CudaSlice<f32>,
    bias: Option<&CudaSlice<f32>>,
    x: &CudaSlice<u16>,
    tokens: usize,
) -> Result<LayerRun, GpuError> {
    let shape = ffn.shape();
    let plan = router.route_biased(logits, bias, tokens, shape.experts)?;
    let dispatch = plan.dispatch(DISPATCH_TILE)?;
    let rows = plan.gather_bf16(&dispatch, x, shape.hidden)?;
    let y = ffn.forward(&plan, &dispatch, &rows)?;
    let out = plan.combine_bf16(&dispatch, &y, shape.hidden)?;
    give(y);
    Ok(LayerRun {
        out,
        plan,
        dispatch,
        rows,
    })
}
