//! Compute backends: the tensor operations and the MoE layer the model is
//! written against (design.md §2). The CPU backend ([`cpu`], f32) and the
//! CUDA backend (`cuda`, bf16, feature `cuda`) sit side by side and implement
//! them, so the model has no per-device branches.
//!
//! Dependencies point down: model -> backend -> routing contract.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
pub mod moe;
mod random;

pub use crate::expert::HostExpert;
pub use crate::io::{HostTensor, ShapeError, Storage};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use error::{BackendError, DeviceError};
pub use moe::{DeferredRoute, HostRankLayer, MoeMode, MoeOutput, MoeResult, MoeWeights};
pub use random::{name_seed, name_seed32, random_host_tensor, RandomInit};

use crate::routing::{DispatchLayout, PlanTotals, RouterConfig, RoutingPlan};
use std::ops::Range;

/// Attention geometry of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnGeom {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`; GQA).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Query `i` attends keys `j` with `i - window < j <= i` (Mistral's
    /// sliding window); `None` is plain causal attention.
    pub window: Option<usize>,
    /// Score scale, `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// RoPE frequencies (the default, unscaled rotary embedding of Llama/Mixtral:
/// rotate the two halves of each head).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `theta^(-2i/d)` for `i < d/2`, computed in f32 as transformers does.
    pub inv_freq: Vec<f32>,
}

impl Rope {
    /// The frequencies for heads of width `head_dim` (even) and base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }
    /// `(cos, sin)` of angle `pos * inv_freq[i]`, angle rounded to f32.
    #[inline]
    pub fn cos_sin(&self, pos: usize, i: usize) -> (f32, f32) {
        let a = (pos as f32 * self.inv_freq[i]) as f64;
        (a.cos() as f32, a.sin() as f32)
    }
}

/// The shape of one MoE layer's experts (every expert's `w1`, `w3` are
/// `[intermediate, hidden]`, `w2` is `[hidden, intermediate]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertsShape {
    /// Experts in the layer.
    pub experts: usize,
    /// Hidden size (each expert's input and output width).
    pub hidden: usize,
    /// Intermediate size of each expert's FFN.
    pub intermediate: usize,
}

/// `BackendError::Shape` with what was given and what was expected.
pub(crate) fn shape_err(what: &'static str, got: Vec<usize>, expected: Vec<usize>) -> BackendError {
    BackendError::Shape {
        what,
        got,
        expected,
    }
}

/// The argument checks every backend's [`Backend::rope`] makes on
/// `x = [rows, cols]`: `cols = heads * head_dim` with `head_dim = 2 *
/// inv_freq.len() >= 2`, and one position per row.
pub(crate) fn check_rope(
    rows: usize,
    cols: usize,
    heads: usize,
    positions: &[usize],
    rope: &Rope,
) -> Result<(), BackendError> {
    let hd = cols.checked_div(heads).unwrap_or(0);
    if heads == 0 || hd == 0 || hd * heads != cols || hd != 2 * rope.inv_freq.len() {
        return Err(shape_err(
            "rope heads x head_dim",
            vec![cols],
            vec![heads, 2 * rope.inv_freq.len()],
        ));
    }
    if positions.len() != rows {
        return Err(shape_err(
            "rope positions",
            vec![positions.len()],
            vec![rows],
        ));
    }
    Ok(())
}

/// The argument checks every backend's [`Backend::attention`] makes: `q`,
/// `k`, `v` as `(rows, cols)` with the widths `geom` implies, one cache
/// `(kv_heads, head_dim)` per span, and spans contiguous over every row.
pub(crate) fn check_attention(
    q: (usize, usize),
    k: (usize, usize),
    v: (usize, usize),
    caches: &[(usize, usize)],
    spans: &[Range<usize>],
    geom: &AttnGeom,
) -> Result<(), BackendError> {
    let (qw, kw) = (geom.heads * geom.head_dim, geom.kv_heads * geom.head_dim);
    if geom.kv_heads == 0 || geom.heads % geom.kv_heads != 0 || geom.head_dim == 0 {
        return Err(shape_err(
            "attention heads / kv heads (heads a multiple of kv heads, head_dim >= 1)",
            vec![geom.heads, geom.kv_heads, geom.head_dim],
            vec![geom.kv_heads.max(1) * (geom.heads / geom.kv_heads.max(1)).max(1)],
        ));
    }
    if q.1 != qw || k.1 != kw || v.1 != kw || k.0 != q.0 || v.0 != q.0 {
        return Err(shape_err(
            "attention q/k/v",
            vec![q.0, q.1, k.0, k.1, v.0, v.1],
            vec![q.0, qw, q.0, kw, q.0, kw],
        ));
    }
    if caches.len() != spans.len() {
        return Err(shape_err(
            "attention caches vs spans",
            vec![caches.len()],
            vec![spans.len()],
        ));
    }
    let mut next = 0;
    for s in spans {
        if s.start != next || s.end < s.start || s.end > q.0 {
            return Err(shape_err(
                "attention spans (contiguous, covering every row)",
                vec![s.start, s.end],
                vec![next, q.0],
            ));
        }
        next = s.end;
    }
    if next != q.0 {
        return Err(shape_err(
            "attention spans (contiguous, covering every row)",
            vec![next],
            vec![q.0],
        ));
    }
    if let Some(c) = caches
        .iter()
        .find(|c| **c != (geom.kv_heads, geom.head_dim))
    {
        return Err(shape_err(
            "attention cache kv heads x head_dim",
            vec![c.0, c.1],
            vec![geom.kv_heads, geom.head_dim],
        ));
    }
    Ok(())
}

/// A compute backend. `Act` is a row-major activation matrix on the device,
/// `Mat` a weight matrix `[out, in]` (as stored by PyTorch's `nn.Linear`),
/// `Vector` a 1-D weight and `Kv` one sequence's key/value cache for one
/// layer.
pub trait Backend: Send + Sync + Sized {
    /// A weight matrix `[out, in]`.
    type Mat: Send + Sync;
    /// A 1-D weight (e.g. a norm's scale).
    type Vector: Send + Sync;
    /// A row-major activation matrix `[rows, cols]` on the device.
    type Act: Send + Sync;
    /// One sequence's key/value cache for one layer.
    type Kv: Send;
    /// One MoE layer's experts in the form this backend runs them, prepared
    /// once from the host weights by [`Backend::experts`] (the CPU keeps the
    /// per-expert host tensors; CUDA stacks them into one bf16 grouped-GEMM
    /// operand).
    type Experts: Send + Sync;
    /// What [`Backend::moe`] leaves on the device of one layer's routing
    /// under [`MoeMode::Deferred`], until [`Backend::settle`]
    /// (`std::convert::Infallible` for a backend that routes on the host).
    type DeviceRoute: Send;

    /// A short name for reports ("cpu", "cuda"); the default is the type's
    /// name.
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Takes a 2-D host weight `[out, in]`.
    fn mat(&self, t: HostTensor) -> Result<Self::Mat, BackendError>;
    /// `(out, in)` of a weight matrix.
    fn mat_shape(&self, m: &Self::Mat) -> (usize, usize);
    /// Takes a 1-D host weight.
    fn vector(&self, t: HostTensor) -> Result<Self::Vector, BackendError>;
    /// Takes one layer's experts, as host tensors `[out, in]` (shapes
    /// checked by the loader).
    fn experts(&self, host: Vec<HostExpert>) -> Result<Self::Experts, BackendError>;
    /// Number of experts in a prepared set.
    fn num_experts(experts: &Self::Experts) -> usize;

    /// Copies host values `[rows, cols]` to the device.
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Act, BackendError>;
    /// Copies an activation back to the host, row-major.
    fn download(&self, x: &Self::Act) -> Result<Vec<f32>, BackendError>;
    /// `(rows, cols)` of an activation.
    fn act_shape(&self, x: &Self::Act) -> (usize, usize);

    /// Rows `ids` of the embedding table `[vocab, hidden]`.
    fn embed(&self, table: &Self::Mat, ids: &[u32]) -> Result<Self::Act, BackendError>;
    /// `w * x / sqrt(mean(x^2) + eps)` per row.
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Act, BackendError>;
    /// `x W^T`: `[rows, in] x [out, in]^T -> [rows, out]`.
    fn linear(&self, x: &Self::Act, w: &Self::Mat) -> Result<Self::Act, BackendError>;
    /// `x W^T` copied to the host as f32 (the router and LM-head logits).
    /// Backends with low-precision activations override it to keep the
    /// GEMM's f32 accumulator instead of rounding it first.
    fn linear_to_host(&self, x: &Self::Act, w: &Self::Mat) -> Result<Vec<f32>, BackendError> {
        self.download(&self.linear(x, w)?)
    }
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), BackendError>;
    /// The listed rows of `x`, in that order.
    fn select_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act, BackendError>;
    /// Applies RoPE in place to `x = [rows, heads * head_dim]`, row `r` at
    /// position `positions[r]`.
    fn rope(
        &self,
        x: &mut Self::Act,
        heads: usize,
        positions: &[usize],
        rope: &Rope,
    ) -> Result<(), BackendError>;

    /// An empty key/value cache for one sequence and one layer.
    fn new_kv(&self, kv_heads: usize, head_dim: usize) -> Self::Kv;
    /// Positions held by a cache.
    fn kv_len(&self, kv: &Self::Kv) -> usize;
    /// Causal GQA attention of several sequences at once. `q`, `k`, `v` hold
    /// the new rows of all sequences, concatenated; sequence `s` owns rows
    /// `spans[s]` and the cache `caches[s]`, whose current length is the
    /// position of its first new row. The new keys and values are appended
    /// to the caches. Returns `[rows, heads * head_dim]`.
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        caches: &mut [&mut Self::Kv],
        spans: &[Range<usize>],
        geom: &AttnGeom,
    ) -> Result<Self::Act, BackendError>;

    /// Gathers token rows into the expert-major layout (padding rows zero).
    fn dispatch(&self, x: &Self::Act, layout: &DispatchLayout) -> Result<Self::Act, BackendError>;
    /// The SwiGLU FFN `w2 (silu(w1 x) * w3 x)` of experts `range` on their
    /// rows of `rows` (the output of [`Backend::dispatch`]): one GEMM per
    /// expert and matrix. Returns the rows `offsets[range.start] ..
    /// offsets[range.end]` of the layout, `[those rows, hidden]`; padding rows
    /// are zero. This is one EP rank's expert work when `range` is the rank's
    /// experts (see [`crate::routing::Placement::expert_group`]).
    fn expert_ffn(
        &self,
        rows: &Self::Act,
        layout: &DispatchLayout,
        experts: &Self::Experts,
        range: Range<usize>,
    ) -> Result<Self::Act, BackendError>;
    /// The weighted gather of expert outputs back to token order
    /// (`routing::combine`'s semantics).
    fn combine(
        &self,
        plan: &RoutingPlan,
        layout: &DispatchLayout,
        expert_out: &Self::Act,
    ) -> Result<Self::Act, BackendError>;

    /// Rows per expert segment in the dispatch layout (the grouped GEMM's
    /// tile; 1 on the CPU).
    fn dispatch_tile(&self) -> usize {
        1
    }

    /// The whole MoE layer on `x` (`[tokens, hidden]`, post-attention-normed):
    /// router GEMM, bias, routing under `router`, dispatch, the experts and
    /// combine. The model calls only this, so a backend owns how it routes.
    /// The default routes on the host with the oracle
    /// ([`MoeWeights::forward_host`]) and always returns the plan; the CUDA
    /// backend routes on the device. Every backend's plan is the oracle's,
    /// bit for bit.
    ///
    /// Under [`MoeMode::Deferred`] the caller needs only the output now: a
    /// device backend may keep the plan where it is, so the layer has no
    /// host sync, and leave its checks (a NaN or Inf router logit,
    /// next-best's convergence) to [`Backend::settle`]. The output is the
    /// one [`MoeMode::Plan`] gives.
    fn moe(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
        mode: MoeMode,
    ) -> Result<MoeResult<Self>, BackendError> {
        let _ = mode;
        Ok(MoeResult::Plan(w.forward_host(self, x, router)?))
    }

    /// Finishes the layers [`Backend::moe`] deferred, in order: their
    /// checks, and each layer's [`PlanTotals`]. A device backend reads
    /// them all back in one download (one sync per forward pass). The first
    /// failing layer's error is returned as [`BackendError::Layer`]. The
    /// default knows host totals only (a backend that returns
    /// [`DeferredRoute::Device`] overrides it).
    fn settle(
        &self,
        routes: Vec<DeferredRoute<Self::DeviceRoute>>,
    ) -> Result<Vec<PlanTotals>, BackendError> {
        routes
            .into_iter()
            .map(|r| match r {
                DeferredRoute::Host(totals) => Ok(totals),
                DeferredRoute::Device(_) => Err(BackendError::Contract(
                    "a backend that defers on the device must override Backend::settle",
                )),
            })
            .collect()
    }
}
