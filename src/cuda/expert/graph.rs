//! [`MoeLayerGraph`]: one MoE layer at a fixed batch size captured as a CUDA
//! graph. Capacity makes every buffer's size a function of T alone, so the
//! whole layer (gating, selection, next-best rounds, plan, dispatch, gather,
//! both grouped GEMMs, SwiGLU, combine) replays as one launch.

use super::MoeLayer;
use crate::cuda::capture::{capture, Graph};
use crate::cuda::GpuError;
use cudarc::driver::{CudaSlice, CudaStream};
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
/// let mut graph = MoeLayerGraph::capture(&layer, 64)?;
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
/// let graph = MoeLayerGraph::capture(&layer, 64)?;
/// drop(layer); // error[E0505]: cannot move out of `layer` because it is borrowed
/// graph.launch()?;
/// # Ok(()) }
/// ```
pub struct MoeLayerGraph<'a> {
    /// The captured layer: its buffers are baked into the graph.
    _layer: &'a MoeLayer,
    graph: Graph,
    stream: Arc<CudaStream>,
    tokens: usize,
    logits: CudaSlice<f32>,
    x: CudaSlice<u16>,
    out: CudaSlice<u16>,
    load: CudaSlice<u32>,
}

impl<'a> MoeLayerGraph<'a> {
    /// Runs `layer` once eagerly at `tokens` tokens (so that lazy set-up such
    /// as occupancy queries happens outside the graph), then captures one
    /// forward over fresh zeroed input buffers. The layer's context must have
    /// capture rights ([`GpuContext`](crate::cuda::GpuContext)'s docs: a
    /// context capmoe opened has them), else an error.
    pub fn capture(layer: &'a MoeLayer, tokens: usize) -> Result<Self, GpuError> {
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

        let ((), graph) = capture(&layer.ffn().gpu, "captured MoE layer", || {
            let (tmp, plan) = layer.forward(&logits, &x, tokens)?;
            stream.memcpy_dtod(&tmp, &mut out)?;
            let experts_load = plan.load();
            let n = experts_load.len().min(load.len());
            stream.memcpy_dtod(&experts_load.slice(0..n), &mut load.slice_mut(0..n))?;
            Ok::<(), GpuError>(())
        })?;
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
        self.graph.launch()
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
