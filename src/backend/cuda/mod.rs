//! [`CudaBackend`]: the [`Backend`] on one GPU, so that the model (a layer
//! above) runs prefill, decode with the KV cache and generation on it
//! unchanged.
//!
//! Activations and weight matrices are bf16 on the device (weights rounded
//! once at upload from the loader's host tensors); every kernel computes in
//! f32 and rounds its output once. Dense projections and the LM head go
//! through cuBLAS (`cublasGemmEx`, bf16 x bf16 -> f32 compute); the router
//! logits feed the device router as f32 straight from the GEMM, and the
//! LM-head logits leave the device that way ([`Backend::linear_to_host`]). The hand-written kernels are in
//! cuda/model/ (twins: the CPU backend's ops). The MoE layer
//! ([`Backend::moe`]) routes on the device with the router GEMM's f32
//! logits ([`crate::cuda::GpuRouter`], bit-identical to the oracle) and runs
//! the same layer code as [`crate::cuda::MoeLayer`]; the per-primitive
//! entries (dispatch, expert_ffn, combine over a host plan) serve host-routed
//! layers (`reroute:optimal`) and their EP rank replay; a device-routed
//! layer's ranks replay from its own device plan and layout
//! (`ep::EpBackend::rank_ffn`). Decode steps replay one CUDA graph per batch size
//! once opted in ([`CudaBackend::with_decode_graphs`]).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capmoe::backend::{Backend, CudaBackend, HostTensor};
//! use capmoe::cuda::GpuContext;
//! let be = CudaBackend::new(&GpuContext::new(0)?)?;
//! // y = x W^T on the device: x [2, 4] (bf16 on upload), W [3, 4].
//! let x = be.upload(&[1.0; 8], 2, 4)?;
//! let w = be.mat(HostTensor::new("w", vec![3, 4], vec![0.5; 12])?)?;
//! let y = be.linear_to_host(&x, &w)?; // 2 rows of 3 f32
//! # Ok(()) }
//! ```

mod attention;
pub(crate) mod blas;
mod device;
pub(crate) mod moe;
mod random;
pub(crate) mod tensor;

pub use moe::{CudaExperts, CudaRankLayer, DeviceRankLayer};
pub use tensor::{CudaAct, CudaKv, CudaMat, CudaVector};

use crate::backend::shape_err;
use crate::backend::{
    AttnGeom, Backend, BackendError, DeferredRoute, HostExpert, HostTensor, MoeMode, MoeResult,
    MoeWeights, Rope,
};
use crate::cuda::model_ops as ops;
use crate::cuda::GpuError;
use crate::routing::{DispatchLayout, Policy, RouterConfig, RoutingPlan};
use device::bf16_bits;
pub(crate) use device::i32_of;
use std::ops::Range;

pub use device::CudaBackend;

impl CudaBackend {
    /// [`Backend::embed`] of `rows` ids already on the device (each below
    /// the vocabulary: the kernel writes zeros for one that is not).
    pub(crate) fn embed_device(
        &self,
        table: &CudaMat,
        ids: &cudarc::driver::CudaSlice<u32>,
        rows: usize,
    ) -> Result<CudaAct, GpuError> {
        let (vocab, hidden) = (table.out, table.inp);
        if ids.len() < rows {
            return Err(GpuError::Shape {
                what: "device token ids",
                got: ids.len().to_string(),
                expected: format!("at least {rows}"),
            });
        }
        let data = ops::embed(self.gpu.stream(), &table.data, ids, rows, (vocab, hidden))?;
        Ok(CudaAct {
            data,
            rows,
            cols: hidden,
        })
    }

    /// [`Backend::rope`] with the positions (one per row of `x`) and the
    /// frequencies already on the device.
    pub(crate) fn rope_device(
        &self,
        x: &mut CudaAct,
        heads: usize,
        positions: &cudarc::driver::CudaSlice<i32>,
        inv_freq: &cudarc::driver::CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let half = inv_freq.len();
        if positions.len() < x.rows || heads == 0 || x.cols != heads * 2 * half {
            return Err(GpuError::Shape {
                what: "RoPE rows / positions / heads * head_dim",
                got: format!("{} / {} / {}", x.rows, positions.len(), x.cols),
                expected: format!("positions >= rows, cols = {heads} * 2 * {half}"),
            });
        }
        if x.rows == 0 {
            return Ok(());
        }
        let st = self.gpu.stream();
        ops::rope(st, &mut x.data, positions, inv_freq, (x.rows, heads))
    }
}

impl Backend for CudaBackend {
    type Mat = CudaMat;
    type Vector = CudaVector;
    type Act = CudaAct;
    type Kv = CudaKv;
    type Experts = CudaExperts;
    type DeviceRoute = crate::cuda::PlanSummary;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn mat(&self, t: HostTensor) -> Result<CudaMat, BackendError> {
        if t.shape().len() != 2 || t.is_empty() {
            return Err(shape_err(
                "matrix weight (2-D, non-empty)",
                t.shape().to_vec(),
                vec![0, 0],
            ));
        }
        let (out, inp) = (t.shape()[0], t.shape()[1]);
        let data = self.gpu.stream().clone_htod(&bf16_bits(t.data()))?;
        Ok(CudaMat { data, out, inp })
    }
    fn mat_shape(&self, m: &CudaMat) -> (usize, usize) {
        (m.out, m.inp)
    }
    fn vector(&self, t: HostTensor) -> Result<CudaVector, BackendError> {
        if t.shape().len() != 1 || t.is_empty() {
            return Err(shape_err(
                "vector weight (1-D, non-empty)",
                t.shape().to_vec(),
                vec![0],
            ));
        }
        let data = self.gpu.stream().clone_htod(t.data())?;
        Ok(CudaVector { data, len: t.len() })
    }
    fn experts(&self, host: Vec<HostExpert>) -> Result<CudaExperts, BackendError> {
        let mut ffn = crate::cuda::ExpertFfn::from_host(&self.gpu, &host)?;
        if let Some((g1, g2)) = &self.gemm_variants {
            ffn = ffn.with_variants(g1, g2)?;
        }
        Ok(CudaExperts::new(ffn))
    }
    fn num_experts(experts: &CudaExperts) -> usize {
        experts.ffn.shape().experts
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaAct, BackendError> {
        if data.len() != rows * cols {
            return Err(shape_err("upload", vec![data.len()], vec![rows, cols]));
        }
        Ok(self.upload_bits(&bf16_bits(data), rows, cols)?)
    }
    fn download(&self, x: &CudaAct) -> Result<Vec<f32>, BackendError> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let bits = self.gpu.stream().clone_dtoh(&x.data.slice(..x.len()))?;
        Ok(bits
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect())
    }
    fn act_shape(&self, x: &CudaAct) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn embed(&self, table: &CudaMat, ids: &[u32]) -> Result<CudaAct, BackendError> {
        let (vocab, hidden) = (table.out, table.inp);
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &i)| i as usize >= vocab) {
            return Err(BackendError::TokenOutOfRange {
                id,
                position,
                vocab,
            });
        }
        if ids.is_empty() {
            return Ok(CudaAct {
                data: self.alloc(0)?,
                rows: 0,
                cols: hidden,
            });
        }
        let ids_d = self.gpu.stream().clone_htod(ids)?;
        Ok(self.embed_device(table, &ids_d, ids.len())?)
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaVector, eps: f32) -> Result<CudaAct, BackendError> {
        if w.len != x.cols {
            return Err(shape_err("rms_norm weight", vec![w.len], vec![x.cols]));
        }
        let data = ops::rmsnorm(self.gpu.stream(), &x.data, &w.data, (x.rows, x.cols), eps)?;
        Ok(CudaAct {
            data,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn linear(&self, x: &CudaAct, w: &CudaMat) -> Result<CudaAct, BackendError> {
        if w.inp != x.cols {
            return Err(shape_err(
                "linear input",
                vec![x.rows, x.cols],
                vec![x.rows, w.inp],
            ));
        }
        let data = if x.rows == 0 {
            self.alloc(0)?
        } else {
            blas::linear::<u16>(&self.blas, x, w)?
        };
        Ok(CudaAct {
            data,
            rows: x.rows,
            cols: w.out,
        })
    }

    fn linear_to_host(&self, x: &CudaAct, w: &CudaMat) -> Result<Vec<f32>, BackendError> {
        if w.inp != x.cols {
            return Err(shape_err(
                "linear input",
                vec![x.rows, x.cols],
                vec![x.rows, w.inp],
            ));
        }
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        let y = blas::linear::<f32>(&self.blas, x, w)?;
        Ok(self.gpu.stream().clone_dtoh(&y)?)
    }

    fn add_assign(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), BackendError> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            return Err(shape_err("add", vec![y.rows, y.cols], vec![x.rows, x.cols]));
        }
        let n = x.len();
        ops::add(self.gpu.stream(), &mut x.data, &y.data, n)?;
        Ok(())
    }

    fn select_rows(&self, x: &CudaAct, rows: &[usize]) -> Result<CudaAct, BackendError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(shape_err("select_rows index", vec![r], vec![x.rows]));
        }
        let st = self.gpu.stream();
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = st.clone_htod(if idx.is_empty() { &[0][..] } else { &idx })?;
        let data = ops::gather_rows(st, &x.data, (x.rows, x.cols), &idx, rows.len())?;
        Ok(CudaAct {
            data,
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        heads: usize,
        positions: &[usize],
        rope: &Rope,
    ) -> Result<(), BackendError> {
        crate::backend::check_rope(x.rows, x.cols, heads, positions, rope)?;
        if x.rows == 0 {
            return Ok(());
        }
        let pos = positions
            .iter()
            .map(|&p| i32_of("position", p))
            .collect::<Result<Vec<i32>, _>>()?;
        let st = self.gpu.stream();
        let pos = st.clone_htod(&pos)?;
        let inv = st.clone_htod(&rope.inv_freq)?;
        Ok(self.rope_device(x, heads, &pos, &inv)?)
    }

    fn new_kv(&self, kv_heads: usize, head_dim: usize) -> CudaKv {
        CudaKv::new(kv_heads, head_dim)
    }
    fn kv_len(&self, kv: &CudaKv) -> usize {
        kv.len
    }

    fn attention(
        &self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        caches: &mut [&mut CudaKv],
        spans: &[Range<usize>],
        geom: &AttnGeom,
    ) -> Result<CudaAct, BackendError> {
        if geom.head_dim > 256 {
            return Err(shape_err(
                "attention head_dim (at most 256 on the GPU)",
                vec![geom.head_dim],
                vec![256],
            ));
        }
        let cache_shapes: Vec<(usize, usize)> =
            caches.iter().map(|c| (c.kv_heads, c.head_dim)).collect();
        crate::backend::check_attention(
            (q.rows, q.cols),
            (k.rows, k.cols),
            (v.rows, v.cols),
            &cache_shapes,
            spans,
            geom,
        )?;
        Ok(attention::attention(
            self.gpu.stream(),
            q,
            k,
            v,
            caches,
            spans,
            geom,
        )?)
    }

    fn dispatch(&self, x: &CudaAct, layout: &DispatchLayout) -> Result<CudaAct, BackendError> {
        Ok(moe::dispatch(&self.gpu, x, layout)?)
    }

    fn expert_ffn(
        &self,
        rows: &CudaAct,
        layout: &DispatchLayout,
        experts: &CudaExperts,
        range: Range<usize>,
    ) -> Result<CudaAct, BackendError> {
        let n_experts = layout.counts().len();
        let have = Self::num_experts(experts);
        if range.start > range.end || range.end > n_experts || have != n_experts {
            return Err(BackendError::ExpertRange {
                start: range.start,
                end: range.end,
                experts: have.min(n_experts),
            });
        }
        if rows.rows != layout.rows() || rows.cols != experts.ffn.shape().hidden {
            return Err(shape_err(
                "dispatched rows",
                vec![rows.rows, rows.cols],
                vec![layout.rows(), experts.ffn.shape().hidden],
            ));
        }
        Ok(moe::expert_ffn(&self.gpu, rows, layout, experts, range)?)
    }

    fn combine(
        &self,
        plan: &RoutingPlan,
        layout: &DispatchLayout,
        expert_out: &CudaAct,
    ) -> Result<CudaAct, BackendError> {
        if expert_out.rows != layout.rows() || plan.len() != layout.assignment_rows().len() {
            return Err(shape_err(
                "combine: expert rows / assignments",
                vec![expert_out.rows, layout.assignment_rows().len()],
                vec![layout.rows(), plan.len()],
            ));
        }
        Ok(moe::combine(&self.gpu, plan, layout, expert_out)?)
    }

    /// Routes on the device: the router GEMM's f32 logits stay there, the
    /// bias is added in the gating kernel, and the layer runs through the
    /// same code as [`crate::cuda::MoeLayer`]. `reroute:optimal` has no
    /// device router yet and routes on the host (the plan is the same: both
    /// are the oracle's), as does an empty batch. Under [`MoeMode::Plan`]
    /// the plan comes back for the caller's record (one download per
    /// layer); under [`MoeMode::Deferred`] it stays on the device as a
    /// [`crate::cuda::PlanSummary`]: no host sync in the layer.
    fn moe(
        &self,
        w: &MoeWeights<Self>,
        x: &CudaAct,
        router: &RouterConfig,
        mode: MoeMode,
    ) -> Result<MoeResult<Self>, BackendError> {
        if router.policy == Policy::RerouteOptimal || x.rows == 0 {
            return Ok(MoeResult::Plan(w.forward_host(self, x, router)?));
        }
        Ok(match mode {
            MoeMode::Plan => {
                MoeResult::Plan(moe::moe_device_pooled::<moe::KeepPlan>(self, w, x, router)?)
            }
            MoeMode::Deferred => {
                let (out, summary) =
                    moe::moe_device_pooled::<moe::KeepSummary>(self, w, x, router)?;
                MoeResult::Deferred(out, DeferredRoute::Device(summary))
            }
        })
    }

    /// Every device summary in one download; see [`crate::cuda::settle`].
    fn settle(
        &self,
        routes: Vec<DeferredRoute<Self::DeviceRoute>>,
    ) -> Result<Vec<crate::routing::PlanTotals>, BackendError> {
        moe::settle(self, routes)
    }
}
