//! [`ExpertFfn`]: the experts' weights on the device and their forward pass,
//! GEMM1 -> SwiGLU -> GEMM2, all stream-ordered with no host sync.

use super::gemm;
use super::select::{self, VariantPair};
use super::variants::CompiledVariant;
use crate::cuda::error::to_i32;
use crate::cuda::{GpuContext, GpuDispatch, GpuError, GpuPlan};
use crate::expert::tune::TuneCache;
use crate::expert::FfnShape;
use crate::expert::HostExpert;
use crate::expert::{init, interleave};
use cudarc::driver::CudaSlice;
use std::ops::Range;
use std::sync::RwLock;

/// The experts of one MoE layer on one GPU, bf16.
///
/// `W13 [E, 2I, H]` holds each expert's gate and up projections with rows
/// interleaved (row `2j` = `w1[j]`, `2j+1` = `w3[j]`), so GEMM1's output
/// pairs the two operands of SwiGLU side by side; `W2 [E, H, I]`.
///
/// ```no_run
/// # fn main() -> Result<(), capmoe::cuda::GpuError> {
/// use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuRouter};
/// use capmoe::routing::RouterConfig;
/// let gpu = GpuContext::new(0)?;
/// let shape = FfnShape { experts: 8, hidden: 512, intermediate: 1024 };
/// let ffn = ExpertFfn::random(&gpu, shape, 7)?;
/// let router = GpuRouter::new(&gpu, RouterConfig::new(2, "drop:score".parse()?).with_capacity_factor(1.5))?;
/// let logits = gpu.stream().clone_htod(&vec![0.5f32; 64 * 8])?;
/// let x = gpu.stream().alloc_zeros::<u16>(64 * 512)?;
/// let plan = router.route(&logits, 64, 8)?;
/// let d = plan.dispatch(1)?;
/// let rows = plan.gather_bf16(&d, &x, 512)?;
/// let y = ffn.forward(&plan, &d, &rows)?; // unweighted expert outputs, [max_rows, H]
/// let out = plan.combine_bf16(&d, &y, 512)?; // [T, H]
/// # Ok(()) }
/// ```
pub struct ExpertFfn {
    pub(crate) gpu: GpuContext,
    pub(super) shape: FfnShape,
    pub(super) cc: (u32, u32),
    pub(super) sm_count: u32,
    pub(super) gpu_name: String,
    pub(super) runnable: Vec<&'static CompiledVariant>,
    fixed: Option<VariantPair>,
    pub(super) tuned: RwLock<TuneCache>,
    pub(super) w13: CudaSlice<u16>,
    pub(super) w2: CudaSlice<u16>,
    /// Per-group leading dimensions (lda, ldb, ldd) of GEMM1 and GEMM2.
    pub(super) ld: [[CudaSlice<i64>; 3]; 2],
    pub(super) workspace: CudaSlice<u8>,
}

fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

impl ExpertFfn {
    /// Uploads host f32 expert weights (the CPU model's), rounded to bf16
    /// with W1 and W3 interleaved.
    pub fn from_host(gpu: &GpuContext, experts: &[HostExpert]) -> Result<Self, GpuError> {
        let Some(first) = experts.first() else {
            return Err(GpuError::Shape {
                what: "experts",
                got: "0".into(),
                expected: "at least one expert".into(),
            });
        };
        let &[inter, hidden] = first.w1.shape() else {
            return Err(GpuError::Shape {
                what: "expert weight",
                got: format!("{} of expert 0: {:?}", first.w1.name(), first.w1.shape()),
                expected: "a 2-D [intermediate, hidden] matrix".into(),
            });
        };
        let shape = FfnShape::new(experts.len(), hidden, inter)?;
        let mut w13 = Vec::with_capacity(experts.len() * 2 * inter * hidden);
        let mut w2 = Vec::with_capacity(experts.len() * hidden * inter);
        for (e, x) in experts.iter().enumerate() {
            for (t, want) in [
                (&x.w1, [inter, hidden]),
                (&x.w3, [inter, hidden]),
                (&x.w2, [hidden, inter]),
            ] {
                if t.shape() != want {
                    return Err(GpuError::Shape {
                        what: "expert weight",
                        got: format!("{} of expert {e}: {:?}", t.name(), t.shape()),
                        expected: format!("{want:?} like expert 0"),
                    });
                }
            }
            w13.extend(interleave::interleave_w13(
                x.w1.data(),
                x.w3.data(),
                inter,
                hidden,
            )?);
            w2.extend(x.w2.data().iter().map(|&v| bf16_bits(v)));
        }
        let st = gpu.stream();
        let (w13, w2) = (st.clone_htod(&w13)?, st.clone_htod(&w2)?);
        Self::with_weights(gpu, shape, w13, w2)
    }

    /// Weights drawn on the device from the hashed uniform init (twin:
    /// `expert::init`, reproduced by tools/peers/ffn_peers.py so that peers
    /// run on the same weights): W13 from `init::w13_seed(seed)`, W2 from
    /// `init::w2_seed(seed)`, both `U(-INIT_SCALE, INIT_SCALE)`.
    pub fn random(gpu: &GpuContext, shape: FfnShape, seed: u32) -> Result<Self, GpuError> {
        Self::random_scaled(gpu, shape, seed, init::INIT_SCALE)
    }

    /// [`ExpertFfn::random`] with values `U(-scale, scale)` (the model's
    /// random init: `std * sqrt(3)`).
    pub fn random_scaled(
        gpu: &GpuContext,
        shape: FfnShape,
        seed: u32,
        scale: f32,
    ) -> Result<Self, GpuError> {
        shape.check()?;
        let n = (shape.experts * shape.hidden * shape.intermediate) as u64;
        if 2 * n > u64::from(u32::MAX) {
            return Err(GpuError::TooLarge {
                what: "elements of W13 (the hashed init indexes with 32 bits)",
                value: 2 * n as usize,
            });
        }
        let st = gpu.stream();
        let w13 = crate::cuda::hashed_bf16(st, 2 * n as usize, init::w13_seed(seed), scale)?;
        let w2 = crate::cuda::hashed_bf16(st, n as usize, init::w2_seed(seed), scale)?;
        Self::with_weights(gpu, shape, w13, w2)
    }

    /// [`ExpertFfn::random_scaled`] drawn expert by expert: expert `j`'s W13
    /// and W2 from `seeds[j]` (as `random_scaled(.., seeds[j], ..)` draws a
    /// one-expert layer), so that a group of experts (an EP rank's) holds the
    /// same values as the whole layer holds for them.
    pub(crate) fn random_by_expert(
        gpu: &GpuContext,
        shape: FfnShape,
        seeds: &[u32],
        scale: f32,
    ) -> Result<Self, GpuError> {
        shape.check()?;
        if seeds.len() != shape.experts {
            return Err(GpuError::Shape {
                what: "per-expert seeds",
                got: seeds.len().to_string(),
                expected: format!("{} (one per expert)", shape.experts),
            });
        }
        let per = shape.hidden * shape.intermediate;
        if 2 * per as u64 > u64::from(u32::MAX) {
            return Err(GpuError::TooLarge {
                what: "elements of one expert's W13 (the hashed init indexes with 32 bits)",
                value: 2 * per,
            });
        }
        let total = (2 * per)
            .checked_mul(shape.experts)
            .ok_or(GpuError::TooLarge {
                what: "elements of W13",
                value: usize::MAX,
            })?;
        let st = gpu.stream();
        let mut w13 = crate::cuda::alloc::uninit::<u16>(st, total)?;
        let mut w2 = crate::cuda::alloc::uninit::<u16>(st, total / 2)?;
        for (j, &seed) in seeds.iter().enumerate() {
            let mut a = w13.slice_mut(2 * per * j..2 * per * (j + 1));
            crate::cuda::fill::fill_hashed_bf16(st, &mut a, init::w13_seed(seed), scale)?;
            let mut b = w2.slice_mut(per * j..per * (j + 1));
            crate::cuda::fill::fill_hashed_bf16(st, &mut b, init::w2_seed(seed), scale)?;
        }
        Self::with_weights(gpu, shape, w13, w2)
    }

    fn with_weights(
        gpu: &GpuContext,
        shape: FfnShape,
        w13: CudaSlice<u16>,
        w2: CudaSlice<u16>,
    ) -> Result<Self, GpuError> {
        let cc = gpu.compute_capability()?;
        let sm_count = gpu.sm_count()?;
        let runnable = select::runnable(cc);
        if runnable.is_empty() {
            return Err(select::none_runs(cc));
        }
        let groups = to_i32("experts", shape.experts)?;
        let bytes = runnable
            .iter()
            .map(|v| gemm::workspace_bytes(v, groups, sm_count as i32))
            .max()
            .unwrap_or(0);
        let st = gpu.stream();
        let (h, i, e) = (
            shape.hidden as i64,
            shape.intermediate as i64,
            shape.experts,
        );
        let lds = |v: [i64; 3]| -> Result<[CudaSlice<i64>; 3], GpuError> {
            Ok([
                st.clone_htod(&vec![v[0]; e])?,
                st.clone_htod(&vec![v[1]; e])?,
                st.clone_htod(&vec![v[2]; e])?,
            ])
        };
        let gpu_name = gpu.name()?;
        // In memory: the caller hands in a cache it loaded ([`Self::with_tune_cache`]).
        let tuned = TuneCache::in_memory(&gpu_name);
        Ok(Self {
            gpu: gpu.clone(),
            shape,
            cc,
            sm_count,
            gpu_name,
            runnable,
            fixed: None,
            tuned: RwLock::new(tuned),
            w13,
            w2,
            ld: [lds([h, h, 2 * i])?, lds([i, i, h])?],
            // Never zero bytes: cuMemAlloc rejects them.
            workspace: st.alloc_zeros::<u8>(bytes.max(1))?,
        })
    }

    /// Experts, hidden and intermediate sizes of the weights.
    pub fn shape(&self) -> FfnShape {
        self.shape
    }

    /// The GPU's name, as the tune cache keys it.
    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }

    /// W13 `[E, 2I, H]`, interleaved bf16.
    pub fn w13(&self) -> &CudaSlice<u16> {
        &self.w13
    }

    /// W2 `[E, H, I]`, bf16.
    pub fn w2(&self) -> &CudaSlice<u16> {
        &self.w2
    }

    /// Names of the compiled variants that run on this GPU.
    pub fn variants(&self) -> Vec<&'static str> {
        self.runnable.iter().map(|v| v.variant.name).collect()
    }

    /// Starts from the tuning results in `cache` (e.g. one the caller loaded with
    /// [`TuneCache::load`]); [`Self::tune`] adds to it. The library never reads or writes a
    /// cache file on its own.
    pub fn with_tune_cache(self, cache: TuneCache) -> Self {
        if let Ok(mut t) = self.tuned.write() {
            *t = cache;
        }
        self
    }

    /// A copy of the tuning results (to save them: [`TuneCache::save`]).
    pub fn tune_cache(&self) -> TuneCache {
        match self.tuned.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Fixed GEMM variants (by name, [`Self::variants`]) for every batch, instead of the tuned
    /// or default choice.
    pub fn with_variants(mut self, gemm1: &str, gemm2: &str) -> Result<Self, GpuError> {
        self.fixed = Some(VariantPair {
            gemm1: select::by_name(&self.runnable, gemm1)?,
            gemm2: select::by_name(&self.runnable, gemm2)?,
        });
        Ok(self)
    }

    /// The variants a batch of `tokens` tokens with top-`k` routing runs:
    /// the fixed pair, else the autotuner's cached choice for the token
    /// bucket, else the shape heuristic.
    pub fn variants_for(&self, tokens: usize, top_k: usize) -> VariantPair {
        if let Some(p) = self.fixed {
            return p;
        }
        let rows = (tokens * top_k).div_ceil(self.shape.experts);
        let (h, i) = (self.shape.hidden, self.shape.intermediate);
        let fallback = select::heuristic(&self.runnable, rows).unwrap_or(self.runnable[0]);
        VariantPair {
            gemm1: self.cached(tokens, 2 * i, h).unwrap_or(fallback),
            gemm2: self.cached(tokens, h, i).unwrap_or(fallback),
        }
    }

    /// Routed rows `[max_rows, H]` (from [`GpuPlan::gather_bf16`]) to the
    /// experts' outputs `[max_rows, H]`, unweighted: [`GpuPlan::combine_bf16`]
    /// applies the routing weights. Rows that are padding are not written.
    pub fn forward(
        &self,
        plan: &GpuPlan,
        d: &GpuDispatch,
        rows: &CudaSlice<u16>,
    ) -> Result<CudaSlice<u16>, GpuError> {
        let (experts, hidden) = (self.shape.experts, self.shape.hidden);
        if plan.experts() != experts {
            return Err(GpuError::Shape {
                what: "plan's experts",
                got: plan.experts().to_string(),
                expected: format!("{experts} (the FFN's)"),
            });
        }
        if plan.stream().cu_stream() != self.gpu.stream().cu_stream() {
            // Buffers of another stream would need an event to be ordered.
            return Err(GpuError::Shape {
                what: "plan's stream",
                got: "a stream of another GpuContext".into(),
                expected: "the FFN's stream: make the router and the FFN from one GpuContext (or its clones)".into(),
            });
        }
        let max_rows = d.max_rows();
        self.check_rows(rows, max_rows)?;
        if plan.tokens() == 0 {
            // SAFETY: nothing reads an output without rows.
            return Ok(unsafe { self.gpu.stream().alloc::<u16>((max_rows * hidden).max(1)) }?);
        }
        let pick = self.variants_for(plan.tokens(), plan.config().top_k);
        self.pipeline(
            rows,
            max_rows,
            pick,
            0..experts,
            (d.row_token(), d.total_rows(), 0..max_rows),
            &|n, k, abc| d.gemm_args(plan, n, k, 2, abc),
        )
    }

    /// [`Self::forward`] for experts `experts` only (one EP rank's work),
    /// over the device plan's own layout: the grouped GEMMs run the range's
    /// groups of the device-made arguments, SwiGLU the rows `span` (the
    /// range's rows `offsets[experts.start]..offsets[experts.end]` of the
    /// layout, which the caller knows from the plan's host twin). Nothing is
    /// uploaded. Only the range's real rows of the output are written.
    pub fn forward_experts(
        &self,
        plan: &GpuPlan,
        d: &GpuDispatch,
        rows: &CudaSlice<u16>,
        experts: Range<usize>,
        span: Range<usize>,
    ) -> Result<CudaSlice<u16>, GpuError> {
        let (e, hidden) = (self.shape.experts, self.shape.hidden);
        let max_rows = d.max_rows();
        if plan.experts() != e
            || experts.start > experts.end
            || experts.end > e
            || span.start > span.end
            || span.end > max_rows
        {
            return Err(GpuError::Shape {
                what: "expert range / row span of a device layout",
                got: format!(
                    "experts {}..{} of {}, rows {}..{}",
                    experts.start,
                    experts.end,
                    plan.experts(),
                    span.start,
                    span.end
                ),
                expected: format!("experts within 0..{e}, rows within 0..{max_rows}"),
            });
        }
        self.check_rows(rows, max_rows)?;
        if experts.is_empty() || span.is_empty() || plan.tokens() == 0 {
            // SAFETY: no rows of the range: nothing reads the output.
            return Ok(unsafe { self.gpu.stream().alloc::<u16>((max_rows * hidden).max(1)) }?);
        }
        let pick = self.variants_for(plan.tokens(), plan.config().top_k);
        self.pipeline(
            rows,
            max_rows,
            pick,
            experts,
            (d.row_token(), d.total_rows(), span),
            &|n, k, abc| d.gemm_args(plan, n, k, 2, abc),
        )
    }
}
