//! The expert FFN over a dispatch layout made on the host (the CPU oracle's
//! `DispatchLayout`), for callers that route on the host: the model's CUDA
//! backend and one EP rank's replay of its experts.

use super::expert_ffn::{to_i32, ExpertFfn};
use crate::cuda::launch;
use crate::cuda::{GpuError, GpuGemmArgs};
use crate::routing::{DispatchLayout, PAD};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
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
        let (e, hidden, inter) = (
            self.shape.experts,
            self.shape.hidden,
            self.shape.intermediate,
        );
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
        if rows.len() < n_rows * hidden {
            return Err(GpuError::Shape {
                what: "routed rows (elements)",
                got: rows.len().to_string(),
                expected: format!("at least layout rows * hidden = {n_rows} * {hidden}"),
            });
        }
        let st = self.gpu.stream();
        // SAFETY (all three): as in `forward`, every row read later is first
        // written: GEMM1 and SwiGLU cover the range's real rows, GEMM2 too.
        let mut h13 = unsafe { st.alloc::<u16>((n_rows * 2 * inter).max(1)) }?;
        let mut h = unsafe { st.alloc::<u16>((n_rows * inter).max(1)) }?;
        let mut y = unsafe { st.alloc::<u16>((n_rows * hidden).max(1)) }?;
        let offs = layout.offsets();
        let (first, last) = (offs[experts.start] as usize, offs[experts.end] as usize);
        let real = layout.counts()[experts.clone()].iter().any(|&c| c > 0);
        if !real {
            return Ok(y);
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

        let upload =
            |a: u64, b: u64, c: u64, n: usize, k: usize| -> Result<GpuGemmArgs, GpuError> {
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
        let groups = experts.len();
        let (a, _ga) = rows.device_ptr(st);
        let (b, _gb) = self.w13.device_ptr(st);
        let (c, _gc) = h13.device_ptr_mut(st);
        let args1 = upload(a, b, c, 2 * inter, hidden)?;
        self.run_groups(pick.gemm1, &args1, 0, groups, 2 * inter, hidden)?;
        drop((_ga, _gb, _gc));

        let (src, _g1) = h13.device_ptr(st);
        let (rt, _g2) = row_token.device_ptr(st);
        let (tr, _g3) = total.device_ptr(st);
        let (dst, _g4) = h.device_ptr_mut(st);
        // SAFETY: h13 holds n_rows * 2I, h n_rows * I, row_token n_rows
        // entries (>= 1) and total one i32 equal to n_rows; I % 8 == 0.
        unsafe {
            launch::swiglu_bf16(
                src,
                rt,
                tr,
                n_rows as i64,
                to_i32("intermediate", inter)?,
                dst,
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4));

        let (a, _ga) = h.device_ptr(st);
        let (b, _gb) = self.w2.device_ptr(st);
        let (c, _gc) = y.device_ptr_mut(st);
        let args2 = upload(a, b, c, hidden, inter)?;
        self.run_groups(pick.gemm2, &args2, 1, groups, hidden, inter)?;
        drop((_ga, _gb, _gc));
        Ok(y)
    }
}
