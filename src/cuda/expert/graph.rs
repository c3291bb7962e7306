//! [`MoeLayerGraph`]: one MoE layer at a fixed batch size captured as a CUDA
//! graph. Capacity makes every buffer's size a function of T alone, so the
//! whole layer (gating, selection, next-best rounds, plan, dispatch, gather,
//! both grouped GEMMs, SwiGLU, combine) replays as one launch.

use super::MoeLayer;
use crate::cuda::GpuError;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream};
use std::sync::Arc;

/// A captured [`MoeLayer::forward`] over persistent input and output buffers.
///
/// Write the router logits `[T, E]` and hidden states `[T, H]` into
/// [`inputs_mut`](Self::inputs_mut) (on the layer's stream), [`launch`](Self::launch),
/// and read [`output`](Self::output) `[T, H]` and [`load`](Self::load) (the
/// plan's per-expert load). Every temporary of the layer is allocated and
/// freed inside the graph (stream-ordered memory nodes), so relaunching needs
/// nothing from the host.
///
/// ```no_run
/// # fn main() -> Result<(), capmoe::cuda::GpuError> {
/// use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter, MoeLayer, MoeLayerGraph};
/// use capmoe::routing::RouterConfig;
/// let gpu = GpuContext::new(0)?;
/// let ffn = ExpertFfn::random(&gpu, FfnShape::new(8, 4096, 14336)?, 1)?;
/// let cfg = RouterConfig::new(2, "drop:score".parse()?).with_capacity_factor(1.5);
/// let layer = MoeLayer::new(GpuRouter::new(&gpu, cfg)?, ffn)?;
/// // SAFETY: no other thread uses this GPU context while the layer is captured.
/// let mut graph = unsafe { MoeLayerGraph::capture(&layer, 64)? };
/// let (logits, x) = graph.inputs_mut();
/// gpu.stream().memcpy_htod(&vec![0.0f32; 64 * 8], logits)?;
/// graph.launch()?;
/// let out = gpu.stream().clone_dtoh(graph.output())?;
/// # Ok(()) }
/// ```
///
/// The graph holds raw pointers into the layer's weights and workspaces, so
/// it borrows the layer: dropping the layer while the graph lives does not
/// compile.
///
/// ```compile_fail,E0505
/// # fn main() -> Result<(), capmoe::cuda::GpuError> {
/// # use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter, MoeLayer, MoeLayerGraph};
/// # use capmoe::routing::RouterConfig;
/// # let gpu = GpuContext::new(0)?;
/// # let ffn = ExpertFfn::random(&gpu, FfnShape::new(8, 64, 128)?, 1)?;
/// # let layer = MoeLayer::new(GpuRouter::new(&gpu, RouterConfig::new(2, "none".parse()?))?, ffn)?;
/// let graph = unsafe { MoeLayerGraph::capture(&layer, 64)? };
/// drop(layer); // error[E0505]: cannot move out of `layer` because it is borrowed
/// graph.launch()?;
/// # Ok(()) }
/// ```
pub struct MoeLayerGraph<'a> {
    /// The captured layer: its buffers are baked into the graph.
    _layer: &'a MoeLayer,
    graph: CudaGraph,
    stream: Arc<CudaStream>,
    tokens: usize,
    logits: CudaSlice<f32>,
    x: CudaSlice<u16>,
    out: CudaSlice<u16>,
    load: CudaSlice<u32>,
}

/// Turns cudarc's cross-stream event tracking back on when dropped (also
/// when the capture fails half way), if it was on before.
pub(crate) struct TrackingOff<'a>(&'a Arc<cudarc::driver::CudaContext>, bool);

impl<'a> TrackingOff<'a> {
    /// Switches tracking off for `ctx` until the guard drops.
    ///
    /// # Safety
    /// As [`MoeLayerGraph::capture`]: no other thread may enqueue work on any
    /// stream of `ctx` while the guard lives.
    pub(crate) unsafe fn new(ctx: &'a Arc<cudarc::driver::CudaContext>) -> Self {
        let on = ctx.is_event_tracking();
        // SAFETY: the caller's contract.
        unsafe { ctx.disable_event_tracking() };
        Self(ctx, on)
    }
}

impl Drop for TrackingOff<'_> {
    fn drop(&mut self) {
        if self.1 {
            // SAFETY: restores the previous state; slices made while it was
            // off are the graph's own temporaries, already freed inside the
            // capture.
            unsafe { self.0.enable_event_tracking() };
        }
    }
}

impl<'a> MoeLayerGraph<'a> {
    /// Runs `layer` once eagerly at `tokens` tokens (so that lazy set-up such
    /// as occupancy queries happens outside the graph), then captures one
    /// forward over fresh zeroed input buffers.
    ///
    /// # Safety
    /// During the capture cudarc's cross-stream event tracking is switched
    /// off for the whole CUDA context (waits on events recorded outside a
    /// capture are illegal inside it): no other thread may enqueue work on
    /// any stream of this context until `capture` returns. The layer itself
    /// uses one stream.
    pub unsafe fn capture(layer: &'a MoeLayer, tokens: usize) -> Result<Self, GpuError> {
        let shape = layer.ffn().shape();
        if tokens == 0 {
            return Err(GpuError::Shape {
                what: "tokens of a captured MoE layer",
                got: "0".into(),
                expected: "at least 1 (a graph of nothing is not worth a launch)".into(),
            });
        }
        let stream = layer.ffn().gpu.stream().clone();
        let logits = stream.alloc_zeros::<f32>(tokens * shape.experts)?;
        let x = stream.alloc_zeros::<u16>(tokens * shape.hidden)?;
        let mut out = stream.alloc_zeros::<u16>(tokens * shape.hidden)?;
        let mut load = stream.alloc_zeros::<u32>(shape.experts)?;
        // Warm-up outside the capture: first-call queries and the tune cache.
        drop(layer.forward(&logits, &x, tokens)?);
        stream.synchronize()?;

        let ctx = stream.context().clone();
        // SAFETY: the caller's contract (no other thread on this context).
        let tracking = unsafe { TrackingOff::new(&ctx) };
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
        let captured = (|| -> Result<(), GpuError> {
            let (tmp, plan) = layer.forward(&logits, &x, tokens)?;
            stream.memcpy_dtod(&tmp, &mut out)?;
            let experts_load = plan.load();
            let n = experts_load.len().min(load.len());
            stream.memcpy_dtod(&experts_load.slice(0..n), &mut load.slice_mut(0..n))?;
            Ok(())
        })();
        // End the capture in every case, so the stream is usable again.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        drop(tracking);
        captured?;
        let graph = graph?.ok_or_else(|| GpuError::Shape {
            what: "captured MoE layer",
            got: "an empty graph".into(),
            expected: "the layer's kernels".into(),
        })?;
        graph.upload()?;
        Ok(Self {
            _layer: layer,
            graph,
            stream,
            tokens,
            logits,
            x,
            out,
            load,
        })
    }

    /// Tokens `T` the graph was captured for (fixed).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The input buffers the graph reads: router logits `[T, E]` (f32) and
    /// hidden states `[T, H]` (bf16 bits). Write them on the layer's stream.
    pub fn inputs_mut(&mut self) -> (&mut CudaSlice<f32>, &mut CudaSlice<u16>) {
        (&mut self.logits, &mut self.x)
    }

    /// Replays the layer on its stream (no host sync).
    pub fn launch(&self) -> Result<(), GpuError> {
        Ok(self.graph.launch()?)
    }

    /// The layer's output `[T, H]` (bf16 bits) of the last launch.
    pub fn output(&self) -> &CudaSlice<u16> {
        &self.out
    }

    /// Per-expert load of the last launch's plan (E u32).
    pub fn load(&self) -> &CudaSlice<u32> {
        &self.load
    }

    /// The stream the graph launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}
