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
pub use moe::{rank_experts, DeferredRoute, HostRankLayer, MoeOutput, MoeWeights};
pub use random::{name_seed, name_seed32, random_host_tensor, RandomInit};

use crate::routing::{DispatchLayout, PlanTotals, RouterConfig, RoutingPlan};
use std::ops::Range;
use std::time::Instant;

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
    /// What [`Backend::moe_deferred`] leaves on the device of one layer's
    /// routing until [`Backend::settle`] (`Infallible` on the CPU, which
    /// routes on the host).
    type DeviceRoute: Send;
    /// What [`Backend::moe_kept`] keeps of one layer for EP rank replay
    /// ([`crate::model::Model::rank_work`]): the CPU keeps the host layout
    /// and rows ([`HostRankLayer`]); CUDA keeps its device plan, layout and
    /// rows.
    type RankLayer: Send + Sync;

    /// A short name for reports ("cpu", "cuda").
    fn name(&self) -> &'static str;

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

    /// A seeded random weight matrix `name` of `shape` `[out, in]`
    /// (`Model::random`). The default draws it on the host
    /// ([`random_host_tensor`]) and takes it with [`Backend::mat`]; a device
    /// backend may draw on the device instead, with other values (see
    /// the `random` module's note: random models differ between backends).
    fn random_mat(
        &self,
        name: &str,
        shape: [usize; 2],
        init: &RandomInit,
    ) -> Result<Self::Mat, BackendError> {
        self.mat(random_host_tensor(name, &shape, init))
    }
    /// Seeded random experts of layer `layer`; `name(j, m)` is the weight
    /// name of expert `j`'s matrix `m` ("w1", "w2", "w3"). The default draws
    /// every expert's matrices on the host by name, as a checkpoint would
    /// hold them, and takes them with [`Backend::experts`].
    fn random_experts(
        &self,
        layer: usize,
        shape: ExpertsShape,
        name: &dyn Fn(usize, &str) -> String,
        init: &RandomInit,
    ) -> Result<Self::Experts, BackendError> {
        let _ = layer;
        let (h, i) = (shape.hidden, shape.intermediate);
        let host = (0..shape.experts)
            .map(|j| {
                Ok(HostExpert {
                    w1: CpuBackend.mat(random_host_tensor(&name(j, "w1"), &[i, h], init))?,
                    w2: CpuBackend.mat(random_host_tensor(&name(j, "w2"), &[h, i], init))?,
                    w3: CpuBackend.mat(random_host_tensor(&name(j, "w3"), &[i, h], init))?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        self.experts(host)
    }

    /// Runs `f` and returns its value with the time it took, ms. The default
    /// is host wall time, right for a backend whose operations are done when
    /// they return (the CPU). A device backend waits for the work queued
    /// before, then times what `f` queued to its end (CUDA: events on its
    /// stream, then a sync).
    fn timed<T, E: From<BackendError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, f64), E> {
        let t0 = Instant::now();
        let v = f()?;
        Ok((v, t0.elapsed().as_secs_f64() * 1e3))
    }

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
    /// experts (see [`rank_experts`]).
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
    /// ([`MoeWeights::forward_host`]); the CUDA backend routes on the device.
    /// Every backend returns the oracle's plan, bit for bit.
    fn moe(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<MoeOutput<Self>, BackendError> {
        w.forward_host(self, x, router)
    }

    /// [`Backend::moe`] when the caller needs only the output now: a device
    /// backend may keep the plan where it is, so the layer has no host sync,
    /// and leave its checks (a NaN or Inf router logit, next-best's
    /// convergence) to [`Backend::settle`]. The output is the one `moe`
    /// gives. The default runs `moe` and keeps the plan's totals.
    fn moe_deferred(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<(Self::Act, DeferredRoute<Self::DeviceRoute>), BackendError> {
        let m = self.moe(w, x, router)?;
        Ok((m.out, DeferredRoute::Host(m.plan.totals())))
    }

    /// Finishes the layers [`Backend::moe_deferred`] ran, in order: their
    /// checks, and each layer's [`PlanTotals`]. A device backend reads
    /// them all back in one download (one sync per forward pass). The first
    /// failing layer's error is returned as [`BackendError::Layer`].
    fn settle(
        &self,
        routes: Vec<DeferredRoute<Self::DeviceRoute>>,
    ) -> Result<Vec<PlanTotals>, BackendError>;

    /// [`Backend::moe`], also keeping what replaying one EP rank's experts
    /// needs ([`Backend::RankLayer`]). Same output and plan as `moe`.
    fn moe_kept(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<Self>, Self::RankLayer), BackendError>;

    /// The host dispatch layout of a kept layer.
    fn rank_layout(layer: &Self::RankLayer) -> &DispatchLayout;

    /// The FFN of experts `range` on a kept layer: one EP rank's expert
    /// work, as [`Backend::expert_ffn`] on the layer's rows. Returns the rows
    /// `offsets[range.start] .. offsets[range.end]` of its layout, `[those
    /// rows, hidden]`; padding rows are zero on the CPU and unwritten on
    /// CUDA's device layout.
    fn rank_ffn(
        &self,
        layer: &Self::RankLayer,
        experts: &Self::Experts,
        range: Range<usize>,
    ) -> Result<Self::Act, BackendError>;

    /// Routing alone, the plan discarded: what a layer pays to route `x`
    /// (router GEMM, bias, the policy), for the benchmark's routing time.
    /// The default is [`MoeWeights::route`] (on the host); CUDA routes on the
    /// device.
    fn route_only(
        &self,
        w: &MoeWeights<Self>,
        x: &Self::Act,
        router: &RouterConfig,
    ) -> Result<(), BackendError> {
        w.route(self, x, router).map(drop)
    }
}
