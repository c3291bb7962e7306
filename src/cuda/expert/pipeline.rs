//! The device pipeline behind [`ExpertFfn::forward`] and its siblings:
//! GEMM1 -> SwiGLU -> GEMM2 over routed rows, and one grouped GEMM over a
//! range of the experts.

use super::expert_ffn::ExpertFfn;
use super::gemm::{self, GroupedCall};
use super::select::VariantPair;
use super::variants::CompiledVariant;
use crate::cuda::error::to_i32;
use crate::cuda::launch;
use crate::cuda::GpuError;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use std::ops::Range;

impl ExpertFfn {
    /// Checks that `rows` holds `n_rows` rows of H.
    pub(super) fn check_rows(&self, rows: &CudaSlice<u16>, n_rows: usize) -> Result<(), GpuError> {
        let hidden = self.shape.hidden;
        if rows.len() < n_rows * hidden {
            return Err(GpuError::Shape {
                what: "routed rows (elements)",
                got: rows.len().to_string(),
                expected: format!("at least rows * hidden = {n_rows} * {hidden}"),
            });
        }
        Ok(())
    }

    /// GEMM1 -> SwiGLU -> GEMM2 over `n_rows` routed rows, groups `groups`
    /// of the arguments per GEMM. `make_args(n, k, [a, b, d])` makes a GEMM's
    /// device arguments over those base addresses; `live` (row tokens, PAD
    /// for rows to skip, the row count on the device, and the span of rows
    /// that may be live) tells SwiGLU which rows are real.
    pub(super) fn pipeline(
        &self,
        rows: &CudaSlice<u16>,
        n_rows: usize,
        pick: VariantPair,
        groups: Range<usize>,
        live: (&CudaSlice<u32>, &CudaSlice<i32>, Range<usize>),
        make_args: &dyn Fn(usize, usize, [u64; 3]) -> Result<crate::cuda::GpuGemmArgs, GpuError>,
    ) -> Result<CudaSlice<u16>, GpuError> {
        let (hidden, inter) = (self.shape.hidden, self.shape.intermediate);
        let st = self.gpu.stream();
        // Unset contents (correctness, not soundness: `uninit`): GEMM1 writes
        // every real row of h13, SwiGLU every real row of h, GEMM2 every real
        // row of y; other rows are never read (GEMM2 and combine read real rows only).
        let mut h13 = crate::cuda::uninit::<u16>(st, n_rows * 2 * inter)?;
        let mut h = crate::cuda::uninit::<u16>(st, n_rows * inter)?;
        let mut y = crate::cuda::uninit::<u16>(st, n_rows * hidden)?;

        // GEMM1: h13 = rows W13^T.
        let (a, _ga) = rows.device_ptr(st);
        let (b, _gb) = self.w13.device_ptr(st);
        let (c, _gc) = h13.device_ptr_mut(st);
        let args1 = make_args(2 * inter, hidden, [a, b, c])?;
        self.run_groups(pick.gemm1, &args1, 0, groups.clone(), 2 * inter, hidden)?;
        drop((_ga, _gb, _gc));
        args1.recycle();

        // SwiGLU: h = silu(h13[:, 0::2]) * h13[:, 1::2] on the real rows of
        // the span (row r of the span is row span.start + r of the buffers).
        let span = live.2;
        if span.end > n_rows || span.start > span.end {
            return Err(GpuError::Shape {
                what: "SwiGLU row span",
                got: format!("{}..{}", span.start, span.end),
                expected: format!("within 0..{n_rows}"),
            });
        }
        let (src, _g1) = h13.device_ptr(st);
        let (rt, _g2) = live.0.device_ptr(st);
        let (tr, _g3) = live.1.device_ptr(st);
        let (dst, _g4) = h.device_ptr_mut(st);
        let at = span.start as u64;
        // SAFETY: h13 holds n_rows * 2I, h n_rows * I bf16, and the span's
        // rows lie inside (checked); the live arrays are sized for n_rows
        // rows (callers' contract), so row_token + span.start is too;
        // I % 8 == 0 (FfnShape), so each offset row stays 16-byte aligned.
        unsafe {
            launch::swiglu_bf16(
                src + at * 2 * inter as u64 * 2,
                rt + at * 4,
                tr,
                span.len() as i64,
                to_i32("intermediate", inter)?,
                dst + at * inter as u64 * 2,
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4));

        // GEMM2: y = h W2^T.
        let (a, _ga) = h.device_ptr(st);
        let (b, _gb) = self.w2.device_ptr(st);
        let (c, _gc) = y.device_ptr_mut(st);
        let args2 = make_args(hidden, inter, [a, b, c])?;
        self.run_groups(pick.gemm2, &args2, 1, groups, hidden, inter)?;
        drop((_ga, _gb, _gc));
        args2.recycle();
        crate::cuda::workspace::give(h13);
        crate::cuda::workspace::give(h);
        Ok(y)
    }

    /// One grouped GEMM over the experts with device-made arguments; `which`
    /// picks the leading-dimension arrays (0: GEMM1, 1: GEMM2).
    pub(super) fn run(
        &self,
        v: &CompiledVariant,
        args: &crate::cuda::GpuGemmArgs,
        which: usize,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        self.run_groups(v, args, which, 0..self.shape.experts, n, k)
    }

    /// [`Self::run`] over entries `groups` of `args` (within E).
    pub(super) fn run_groups(
        &self,
        v: &CompiledVariant,
        args: &crate::cuda::GpuGemmArgs,
        which: usize,
        groups: Range<usize>,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        let [pa, pb, pd] = &args.ptrs;
        let enough = [pa, pb, pd].iter().all(|p| p.len() >= groups.end);
        if groups.is_empty()
            || groups.end > self.shape.experts
            || args.problems.len() < 3 * groups.end
            || !enough
        {
            return Err(GpuError::Shape {
                what: "grouped GEMM groups",
                got: format!("{}..{}", groups.start, groups.end),
                expected: format!(
                    "a non-empty range within 0..{} with arguments for each",
                    self.shape.experts
                ),
            });
        }
        let first = groups.start as u64;
        let groups = groups.len();
        let st = self.gpu.stream();
        let (problems, _g0) = args.problems.device_ptr(st);
        // The range's entries: problems are int[3], pointers u64.
        let problems = problems + first * 3 * 4;
        let (a, _g1) = pa.device_ptr(st);
        let (b, _g2) = pb.device_ptr(st);
        let (d, _g3) = pd.device_ptr(st);
        let (a, b, d) = (a + first * 8, b + first * 8, d + first * 8);
        let [la, lb, ld] = &self.ld[which];
        let (lda, _g4) = la.device_ptr(st);
        let (ldb, _g5) = lb.device_ptr(st);
        let (ldd, _g6) = ld.device_ptr(st);
        let (ws, _g7) = self.workspace.device_ptr(st);
        let call = GroupedCall {
            groups: to_i32("groups", groups)?,
            problems,
            max_n: to_i32("GEMM n", n)?,
            max_k: to_i32("GEMM k", k)?,
            a,
            b,
            d,
            lda,
            ldb,
            ldd,
            workspace: ws,
            workspace_bytes: self.workspace.len(),
            sm_count: self.sm_count as i32,
        };
        // SAFETY: `args` holds (at least) entries first..first + groups (checked) of (n, k) and
        // pointers into buffers sized for them (made by `GpuDispatch::gemm_args`
        // or `forward_layout` from the same layout); the ld arrays hold E >=
        // groups entries matching the dense layouts; the workspace was sized for
        // every runnable variant at E groups and this SM count (it does not grow
        // with fewer groups); `v` is runnable.
        unsafe { gemm::grouped_gemm(v, &call, st.cu_stream() as _) }
    }
}
