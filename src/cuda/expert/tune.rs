//! The autotuner's device side: times the runnable variants of each GEMM
//! with CUDA events on a balanced synthetic load and keeps the fastest in the
//! on-disk cache (`expert::tune` holds the cache and the choice logic).

use super::expert_ffn::ExpertFfn;
use super::variants::CompiledVariant;
use crate::cuda::error::to_i32;
use crate::cuda::{GpuError, GpuGemmArgs};
use crate::expert::tune::{self as host, TuneKey};
use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
use cudarc::driver::{CudaSlice, DevicePtr};
use serde::Serialize;

const WARMUP: usize = 3;
const RUNS: usize = 10;

/// The choice for one GEMM at one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct TunePick {
    pub variant: &'static str,
    /// Mean time of the chosen variant (from the cache when `cached`).
    pub micros: f64,
    /// Taken from the cache without timing.
    pub cached: bool,
    /// Every candidate's time in this run (empty when cached); a failed
    /// candidate shows its error.
    pub timings: Vec<(String, Result<f64, String>)>,
}

/// What [`ExpertFfn::tune`] decided for one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct TuneOutcome {
    /// Tokens `T` asked for.
    pub tokens: usize,
    /// The cache's token bucket for `T` (a power of two; see
    /// [`token_bucket`](crate::expert::tune::token_bucket)).
    pub bucket: usize,
    /// Rows timed per expert, `ceil(T k / E)` (a balanced load).
    pub rows_per_expert: usize,
    /// The pick for GEMM1 (`x W13^T`).
    pub gemm1: TunePick,
    /// The pick for GEMM2 (`h W2^T`).
    pub gemm2: TunePick,
    /// The cache file these results belong to, if any (the caller saves it).
    pub cache: Option<String>,
}

impl ExpertFfn {
    fn key(&self, tokens: usize, n: usize, k: usize) -> TuneKey {
        TuneKey::new(self.cc.0, self.cc.1, self.shape.experts, n, k, tokens)
    }

    /// The cached variant for a batch of `tokens`, if the cache has one that
    /// runs here.
    pub(super) fn cached(
        &self,
        tokens: usize,
        n: usize,
        k: usize,
    ) -> Option<&'static CompiledVariant> {
        let key = self.key(tokens, n, k);
        let cache = self.tuned.read().ok()?;
        let name = cache.get(&key)?.variant.clone();
        self.runnable
            .iter()
            .copied()
            .find(|v| v.variant.name == name)
    }

    /// Times every runnable variant for GEMM1 and GEMM2 at `tokens` tokens
    /// with top-`top_k` routing (a balanced load of `ceil(T k / E)` rows per
    /// expert), records the fastest of each in the cache (in memory: the caller saves
    /// [`Self::tune_cache`]). With
    /// `force` false a bucket already in the cache is not timed again.
    /// `on_timed` is called after each timing (for progress).
    pub fn tune(
        &self,
        tokens: usize,
        top_k: usize,
        force: bool,
        on_timed: &mut dyn FnMut(&str),
    ) -> Result<TuneOutcome, GpuError> {
        if tokens == 0 || top_k == 0 || top_k > self.shape.experts {
            return Err(GpuError::Shape {
                what: "tune batch (tokens, top_k)",
                got: format!("({tokens}, {top_k})"),
                expected: format!("tokens >= 1 and 1 <= top_k <= {}", self.shape.experts),
            });
        }
        let rows = (tokens * top_k).div_ceil(self.shape.experts);
        let (h, i) = (self.shape.hidden, self.shape.intermediate);
        let gemm1 = self.tune_one(
            0,
            rows,
            self.key(tokens, 2 * i, h),
            2 * i,
            h,
            force,
            on_timed,
        )?;
        let gemm2 = self.tune_one(1, rows, self.key(tokens, h, i), h, i, force, on_timed)?;
        let path = {
            let cache = self.tuned.read().map_err(|_| poisoned())?;
            cache.path().map(|p| p.display().to_string())
        };
        Ok(TuneOutcome {
            tokens,
            bucket: host::token_bucket(tokens),
            rows_per_expert: rows,
            gemm1,
            gemm2,
            cache: path,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn tune_one(
        &self,
        which: usize,
        rows: usize,
        key: TuneKey,
        n: usize,
        k: usize,
        force: bool,
        on_timed: &mut dyn FnMut(&str),
    ) -> Result<TunePick, GpuError> {
        let candidates: Vec<_> = self.runnable.iter().map(|v| v.variant).collect();
        let mut cache = self.tuned.write().map_err(|_| poisoned())?;
        if force {
            cache.remove(&key);
        }
        // Buffers only when something is timed (a cached key needs none).
        let mut bench: Option<Bench> = None;
        let mut timings = Vec::new();
        let choice = cache.choose(&key, &candidates, |v| {
            let compiled = self.runnable.iter().find(|c| c.variant.name == v.name);
            let t = match (compiled, &mut bench) {
                (None, _) => Err(GpuError::UnknownVariant {
                    name: v.name.into(),
                    valid: self.variants().join(", "),
                }),
                (Some(c), Some(b)) => b.time(self, c),
                (Some(c), slot) => {
                    Bench::new(self, which, rows, n, k).and_then(|b| slot.insert(b).time(self, c))
                }
            };
            on_timed(v.name);
            timings.push((
                v.name.to_string(),
                t.as_ref().map(|&x| x).map_err(|e| e.to_string()),
            ));
            t
        })?;
        if choice.cached {
            for v in &candidates {
                on_timed(v.name);
            }
        }
        Ok(TunePick {
            variant: choice.variant.name,
            micros: choice.micros,
            cached: choice.cached,
            timings,
        })
    }
}

fn poisoned() -> GpuError {
    GpuError::Shape {
        what: "tune cache lock",
        got: "poisoned by a panic in another thread".into(),
        expected: "an intact lock".into(),
    }
}

/// Buffers and arguments of one balanced grouped GEMM: `rows` rows per
/// expert of random activations against the FFN's real weights.
struct Bench {
    args: GpuGemmArgs,
    which: usize,
    n: usize,
    k: usize,
    _a: CudaSlice<u16>,
    _d: CudaSlice<u16>,
}

impl Bench {
    fn new(
        ffn: &ExpertFfn,
        which: usize,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Self, GpuError> {
        let st = ffn.gpu.stream();
        let e = ffn.shape.experts;
        let a = crate::cuda::hashed_bf16(st, e * rows * k, 0x7475_6e65, 1.0)?;
        // SAFETY: `d` is only written by the GEMMs and never read.
        let d = unsafe { st.alloc::<u16>(e * rows * n) }?;
        let weights = if which == 0 { ffn.w13() } else { ffn.w2() };
        let (a0, _g1) = a.device_ptr(st);
        let (b0, _g2) = weights.device_ptr(st);
        let (d0, _g3) = d.device_ptr(st);
        let (m, nn, kk) = (
            to_i32("rows", rows)?,
            to_i32("GEMM n", n)?,
            to_i32("GEMM k", k)?,
        );
        let problems: Vec<i32> = (0..e).flat_map(|_| [m, nn, kk]).collect();
        let at = |base: u64, g: usize, stride: usize| base + (g * stride * 2) as u64;
        let ptrs = |base: u64, stride: usize| -> Vec<u64> {
            (0..e).map(|g| at(base, g, stride)).collect()
        };
        let args = GpuGemmArgs {
            problems: st.clone_htod(&problems)?,
            ptrs: [
                st.clone_htod(&ptrs(a0, rows * k))?,
                st.clone_htod(&ptrs(b0, n * k))?,
                st.clone_htod(&ptrs(d0, rows * n))?,
            ],
        };
        drop((_g1, _g2, _g3));
        Ok(Self {
            args,
            which,
            n,
            k,
            _a: a,
            _d: d,
        })
    }

    /// Mean microseconds of one launch of `v` over [`RUNS`] after [`WARMUP`].
    fn time(&self, ffn: &ExpertFfn, v: &CompiledVariant) -> Result<f64, GpuError> {
        let st = ffn.gpu.stream();
        for _ in 0..WARMUP {
            ffn.run(v, &self.args, self.which, self.n, self.k)?;
        }
        let start = st.record_event(Some(CU_EVENT_DEFAULT))?;
        for _ in 0..RUNS {
            ffn.run(v, &self.args, self.which, self.n, self.k)?;
        }
        let end = st.record_event(Some(CU_EVENT_DEFAULT))?;
        let ms = start.elapsed_ms(&end)?;
        Ok(f64::from(ms) * 1e3 / RUNS as f64)
    }
}
