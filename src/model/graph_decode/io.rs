//! The decode graph's [`LayerIo`]: RoPE, attention and the MoE layer over
//! device positions and the static KV cache.

use super::state::DecodeState;
use crate::backend::cuda::tensor::CudaAct;
use crate::backend::cuda::{i32_of, CudaBackend};
use crate::cuda::model::launch as model_launch;
use crate::cuda::{sys, PlanSummary};
use crate::model::{LayerIo, Model, ModelError};
use crate::routing::RouterConfig;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// The step's [`LayerIo`]: positions and caches on the device.
pub(super) struct GraphIo<'a> {
    pub(super) state: &'a mut DecodeState,
    pub(super) inv_freq: &'a CudaSlice<f32>,
    pub(super) max_positions: usize,
    pub(super) router: &'a RouterConfig,
    pub(super) summaries: Vec<PlanSummary>,
}

impl LayerIo<CudaBackend> for GraphIo<'_> {
    fn rope(
        &mut self,
        model: &Model<CudaBackend>,
        x: &mut CudaAct,
        heads: usize,
    ) -> Result<(), ModelError> {
        Ok(model
            .backend()
            .rope_device(x, heads, &self.state.positions, self.inv_freq)?)
    }

    fn attend(
        &mut self,
        model: &Model<CudaBackend>,
        layer: usize,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
    ) -> Result<CudaAct, ModelError> {
        let be = model.backend();
        let st = be.gpu.stream();
        let g = model.geom();
        let (batch, qw, kvw) = (
            self.state.batch,
            g.heads * g.head_dim,
            g.kv_heads * g.head_dim,
        );
        if (q.rows, q.cols, k.rows, k.cols, v.rows, v.cols) != (batch, qw, batch, kvw, batch, kvw) {
            return Err(ModelError::Backend(crate::backend::shape_err(
                "decode q, k, v [batch, width]",
                vec![q.rows, q.cols, k.rows, k.cols, v.rows, v.cols],
                vec![batch, qw, batch, kvw, batch, kvw],
            )));
        }
        if g.head_dim > 256 {
            return Err(ModelError::Backend(crate::backend::shape_err(
                "attention head_dim (at most 256 on the GPU)",
                vec![g.head_dim],
                vec![256],
            )));
        }
        let mut out = be.alloc(batch * qw)?;
        let (qp, _g1) = q.data.device_ptr(st);
        let (kp, _g2) = k.data.device_ptr(st);
        let (vp, _g3) = v.data.device_ptr(st);
        let (pp, _g4) = self.state.positions.device_ptr(st);
        let (kc, _g5) = self.state.k[layer].device_ptr_mut(st);
        let (vc, _g6) = self.state.v[layer].device_ptr_mut(st);
        let (op, _g7) = out.device_ptr_mut(st);
        let a = sys::capmoe_decode_attn_args {
            q: qp as _,
            k: kp as _,
            v: vp as _,
            positions: pp as _,
            k_cache: kc as _,
            v_cache: vc as _,
            out: op as _,
            batch: i32_of("decode batch", batch)?,
            max_positions: i32_of("static cache positions", self.max_positions)?,
            heads: i32_of("heads", g.heads)?,
            kv_heads: i32_of("kv heads", g.kv_heads)?,
            head_dim: i32_of("head dim", g.head_dim)?,
            window: i32_of("sliding window", g.window.unwrap_or(0))?,
            scale: g.scale,
        };
        // SAFETY: shapes checked above; the caches hold batch * max_positions
        // rows of kvw (DecodeState::alloc), positions batch i32 below
        // max_positions (GraphDecoder::step checks the host mirror before
        // each replay); all alive until the stream has run the kernels.
        unsafe { model_launch::decode_attention(&a, be.raw())? };
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7));
        Ok(CudaAct {
            data: out,
            rows: batch,
            cols: qw,
        })
    }

    fn moe(
        &mut self,
        model: &Model<CudaBackend>,
        layer: usize,
        h: CudaAct,
    ) -> Result<CudaAct, ModelError> {
        let w = &model.layers[layer].moe;
        let (out, summary) =
            crate::backend::cuda::moe::forward_deferred(model.backend(), w, &h, self.router)?;
        self.summaries.push(summary);
        Ok(out)
    }
}
