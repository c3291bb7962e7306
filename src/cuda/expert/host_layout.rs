//! The expert FFN over a dispatch layout made on the host (the CPU oracle's
//! `DispatchLayout`), for callers that route on the host: the CUDA backend's
//! `reroute:optimal` layers and one EP rank's replay of such a layer (a
//! device-routed layer's ranks replay from its device layout:
//! `ExpertFfn::forward_experts`).

use super::expert_ffn::ExpertFfn;
use crate::cuda::error::to_i32;
use crate::cuda::{GpuError, GpuGemmArgs};
use crate::routing::{DispatchLayout, PAD};
use cudarc::driver::CudaSlice;
use std::ops::Range;

impl ExpertFfn {
    /// Routed rows `[layout.rows(), H]` (bf16, expert-major as `layout` lays
    /// them out) to the outputs of experts `experts` only, `[layout.rows(),
    /// H]`, unweighted. Rows of other experts and padding rows are not
    /// written. The grouped GEMMs get `experts.len()` groups, so one EP
    /// rank's work runs alone. The layout's problem sizes and pointers are
    /// built on the host (`DispatchLayout::gemm_args`, the twin of the
    /// device kernel) and uploaded: stream-ordered, no sync.
    pub fn forward_layout(
        &self,
        layout: &DispatchLayout,
        rows: &CudaSlice<u16>,
        experts: Range<usize>,
    ) -> Result<CudaSlice<u16>, GpuError> {
        let (e, hidden) = (self.shape.experts, self.shape.hidden);
        if layout.counts().len() != e {
            return Err(GpuError::Shape {
                what: "layout's experts",
                got: layout.counts().len().to_string(),
                expected: format!("{e} (the FFN's)"),
            });
        }
        if experts.start > experts.end || experts.end > e {
            return Err(GpuError::Shape {
                what: "expert range",
                got: format!("{}..{}", experts.start, experts.end),
                expected: format!("a range inside 0..{e}"),
            });
        }
        let n_rows = layout.rows();
        self.check_rows(rows, n_rows)?;
        let st = self.gpu.stream();
        let offs = layout.offsets();
        let (first, last) = (offs[experts.start] as usize, offs[experts.end] as usize);
        if !layout.counts()[experts.clone()].iter().any(|&c| c > 0) {
            // SAFETY: no rows of the range: nothing reads the output.
            return Ok(unsafe { st.alloc::<u16>((n_rows * hidden).max(1)) }?);
        }
        // The batch's T and k, for the tuned variant choice: T from the
        // largest token id, k as served rows per token.
        let live = layout.row_tokens().iter().filter(|&&t| t != PAD);
        let tokens = live.clone().max().map_or(1, |&t| t as usize + 1);
        let top_k = live.count().div_ceil(tokens).max(1);
        let pick = self.variants_for(tokens, top_k);

        // Only the range's rows are live for SwiGLU: the rest read as padding.
        let mut row_token = vec![PAD; n_rows.max(1)];
        row_token[first..last].copy_from_slice(&layout.row_tokens()[first..last]);
        let row_token = st.clone_htod(&row_token)?;
        let total = st.clone_htod(&[to_i32("layout rows", n_rows)?])?;

        // The layout's GEMM arguments for the range, made on the host.
        let upload = |n: usize, k: usize, [a, b, c]: [u64; 3]| -> Result<GpuGemmArgs, GpuError> {
            let args = layout.gemm_args(n, k, 2, a, b, c)?;
            let r = experts.clone();
            let problems: Vec<i32> = args.problems[r.clone()]
                .iter()
                .flat_map(|p| [p.m, p.n, p.k])
                .collect();
            Ok(GpuGemmArgs {
                problems: st.clone_htod(&problems)?,
                ptrs: [
                    st.clone_htod(&args.a[r.clone()])?,
                    st.clone_htod(&args.b[r.clone()])?,
                    st.clone_htod(&args.c[r])?,
                ],
            })
        };
        self.pipeline(
            rows,
            n_rows,
            pick,
            0..experts.len(),
            (&row_token, &total, 0..n_rows),
            &upload,
        )
    }
}
