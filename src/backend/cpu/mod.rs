//! The CPU backend: f32 everywhere, GEMMs through the `gemm` crate, row
//! loops and attention heads across rayon's thread pool. Weights are
//! [`HostTensor`]s, so f32 checkpoints are used in place from the mapping.

mod attention;
mod experts;
pub(crate) mod gemm;
mod ops;
mod rows;

pub use attention::CpuKv;
pub use gemm::gemm_rate;

use super::{AttnGeom, Backend, BackendError, HostExpert, HostTensor, Rope};
use crate::routing::{DispatchLayout, RoutingPlan};
use std::ops::Range;

/// A row-major `[rows, cols]` f32 matrix in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    /// Row-major values, `rows * cols` long.
    pub data: Vec<f32>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// The CPU backend (stateless; uses rayon's global pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

use crate::backend::shape_err;

impl Backend for CpuBackend {
    type Mat = HostTensor;
    type Vector = HostTensor;
    type Act = CpuTensor;
    type Kv = CpuKv;
    type Experts = Vec<HostExpert>;
    type DeviceRoute = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn mat(&self, t: HostTensor) -> Result<HostTensor, BackendError> {
        if t.shape().len() != 2 {
            return Err(shape_err(
                "matrix weight (2-D)",
                t.shape().to_vec(),
                vec![0, 0],
            ));
        }
        Ok(t)
    }
    fn mat_shape(&self, m: &HostTensor) -> (usize, usize) {
        (m.shape()[0], m.shape()[1])
    }
    fn vector(&self, t: HostTensor) -> Result<HostTensor, BackendError> {
        if t.shape().len() != 1 {
            return Err(shape_err(
                "vector weight (1-D)",
                t.shape().to_vec(),
                vec![0],
            ));
        }
        Ok(t)
    }
    fn experts(&self, host: Vec<HostExpert>) -> Result<Vec<HostExpert>, BackendError> {
        Ok(host)
    }
    fn num_experts(experts: &Vec<HostExpert>) -> usize {
        experts.len()
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor, BackendError> {
        if data.len() != rows * cols {
            return Err(shape_err("upload", vec![data.len()], vec![rows, cols]));
        }
        Ok(CpuTensor {
            data: data.to_vec(),
            rows,
            cols,
        })
    }
    fn download(&self, x: &CpuTensor) -> Result<Vec<f32>, BackendError> {
        Ok(x.data.clone())
    }
    fn act_shape(&self, x: &CpuTensor) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn embed(&self, table: &HostTensor, ids: &[u32]) -> Result<CpuTensor, BackendError> {
        let (vocab, hidden) = self.mat_shape(table);
        let t = table.data();
        let mut data = Vec::with_capacity(ids.len() * hidden);
        for (position, &id) in ids.iter().enumerate() {
            let i = id as usize;
            if i >= vocab {
                return Err(BackendError::TokenOutOfRange {
                    id,
                    position,
                    vocab,
                });
            }
            data.extend_from_slice(&t[i * hidden..(i + 1) * hidden]);
        }
        Ok(CpuTensor {
            data,
            rows: ids.len(),
            cols: hidden,
        })
    }

    fn rms_norm(&self, x: &CpuTensor, w: &HostTensor, eps: f32) -> Result<CpuTensor, BackendError> {
        if w.len() != x.cols {
            return Err(shape_err("rms_norm weight", vec![w.len()], vec![x.cols]));
        }
        Ok(CpuTensor {
            data: ops::rms_norm(&x.data, x.cols, w.data(), eps),
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn linear(&self, x: &CpuTensor, w: &HostTensor) -> Result<CpuTensor, BackendError> {
        let (out, inp) = self.mat_shape(w);
        if inp != x.cols {
            return Err(shape_err(
                "linear input",
                vec![x.rows, x.cols],
                vec![x.rows, inp],
            ));
        }
        // A few rows (decode): W streamed once, not packed (`rows.rs`).
        let data = if x.rows <= rows::SMALL_ROWS {
            rows::linear_rows_par(&x.data, x.rows, inp, w.data(), out)
        } else {
            gemm::linear(&x.data, x.rows, inp, w.data(), out, gemm::threads())
        };
        Ok(CpuTensor {
            data,
            rows: x.rows,
            cols: out,
        })
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<(), BackendError> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            return Err(shape_err("add", vec![y.rows, y.cols], vec![x.rows, x.cols]));
        }
        for (a, &b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn select_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor, BackendError> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                return Err(shape_err("select_rows index", vec![r], vec![x.rows]));
            }
            data.extend_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(CpuTensor {
            data,
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        heads: usize,
        positions: &[usize],
        rope: &Rope,
    ) -> Result<(), BackendError> {
        crate::backend::check_rope(x.rows, x.cols, heads, positions, rope)?;
        ops::rope(&mut x.data, x.cols, heads, positions, rope);
        Ok(())
    }

    fn new_kv(&self, kv_heads: usize, head_dim: usize) -> CpuKv {
        CpuKv::new(kv_heads, head_dim)
    }
    fn kv_len(&self, kv: &CpuKv) -> usize {
        kv.len()
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        caches: &mut [&mut CpuKv],
        spans: &[Range<usize>],
        geom: &AttnGeom,
    ) -> Result<CpuTensor, BackendError> {
        let cache_shapes: Vec<(usize, usize)> =
            caches.iter().map(|c| (c.k.len(), c.head_dim)).collect();
        crate::backend::check_attention(
            (q.rows, q.cols),
            (k.rows, k.cols),
            (v.rows, v.cols),
            &cache_shapes,
            spans,
            geom,
        )?;
        let (qw, kw) = (geom.heads * geom.head_dim, geom.kv_heads * geom.head_dim);
        let mut out = vec![0.0f32; q.rows * qw];
        for (cache, s) in caches.iter_mut().zip(spans) {
            let n = s.len();
            if n == 0 {
                continue;
            }
            attention::attend(
                &q.data[s.start * qw..s.end * qw],
                &k.data[s.start * kw..s.end * kw],
                &v.data[s.start * kw..s.end * kw],
                n,
                cache,
                geom,
                &mut out[s.start * qw..s.end * qw],
            );
        }
        Ok(CpuTensor {
            data: out,
            rows: q.rows,
            cols: qw,
        })
    }

    fn dispatch(&self, x: &CpuTensor, layout: &DispatchLayout) -> Result<CpuTensor, BackendError> {
        Ok(CpuTensor {
            data: layout.scatter(&x.data, x.rows, x.cols)?,
            rows: layout.rows(),
            cols: x.cols,
        })
    }

    fn expert_ffn(
        &self,
        rows: &CpuTensor,
        layout: &DispatchLayout,
        experts: &Vec<HostExpert>,
        range: Range<usize>,
    ) -> Result<CpuTensor, BackendError> {
        let n_experts = layout.counts().len();
        if range.start > range.end || range.end > n_experts || experts.len() != n_experts {
            return Err(BackendError::ExpertRange {
                start: range.start,
                end: range.end,
                experts: experts.len().min(n_experts),
            });
        }
        if rows.rows != layout.rows() {
            return Err(shape_err(
                "dispatched rows",
                vec![rows.rows],
                vec![layout.rows()],
            ));
        }
        let inter = experts.get(range.start).map_or(0, |e| e.w1.shape()[0]);
        if let Some(e) = experts[range.clone()]
            .iter()
            .position(|e| !experts::check_expert(e, rows.cols) || e.w1.shape()[0] != inter)
        {
            let w = &experts[range.start + e].w1;
            return Err(shape_err(
                "expert weights",
                w.shape().to_vec(),
                vec![0, rows.cols],
            ));
        }
        let offs = layout.offsets();
        let n = (offs[range.end] - offs[range.start]) as usize;
        Ok(CpuTensor {
            data: experts::expert_ffn(&rows.data, rows.cols, layout, experts, range),
            rows: n,
            cols: rows.cols,
        })
    }

    fn combine(
        &self,
        plan: &RoutingPlan,
        layout: &DispatchLayout,
        expert_out: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
        Ok(CpuTensor {
            data: crate::routing::combine(plan, layout, &expert_out.data, expert_out.cols)?,
            rows: plan.tokens(),
            cols: expert_out.cols,
        })
    }
}
