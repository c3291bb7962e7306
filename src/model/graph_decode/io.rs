//! The decode graph's [`LayerIo`]: RoPE, attention and the MoE layer over
//! device positions and the static KV cache.

use super::state::DecodeState;
use crate::backend::cuda::tensor::CudaAct;
use crate::backend::cuda::CudaBackend;
use crate::cuda::model::ops;
use crate::cuda::PlanSummary;
use crate::model::{LayerIo, Model, ModelError};
use crate::routing::RouterConfig;
use cudarc::driver::CudaSlice;

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
        let io = ops::DecodeAttnIo {
            q: &q.data,
            k: &k.data,
            v: &v.data,
            positions: &self.state.positions,
            k_cache: &mut self.state.k[layer],
            v_cache: &mut self.state.v[layer],
        };
        let dims = ops::AttnDims {
            n: batch,
            len: self.max_positions,
            heads: g.heads,
            kv_heads: g.kv_heads,
            head_dim: g.head_dim,
            window: g.window,
            scale: g.scale,
        };
        let out = ops::decode_attention(st, io, dims)?;
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
        use crate::backend::cuda::moe::{moe_device, KeepSummary};
        let (out, summary) = moe_device::<KeepSummary>(model.backend(), w, &h, self.router)?;
        self.summaries.push(summary);
        Ok(out)
    }
}
