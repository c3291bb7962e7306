//! Expert FFN and MoE layer on the GPU at Mixtral-8x7B shapes (H 4096,
//! I 14336, E 8, top-2), timed with CUDA events (design.md §6, issue 5).
//! Run through tools/gpu-check.sh on a device; without a GPU it prints why
//! and exits 0.
//!
//! Two groups per batch size T in {1, 16, 64, 256, 1024, 4096, 16384} and
//! load (`balanced`: the T*k rows spread evenly over the experts; `skewed`:
//! expert 0 gets three times the mean, the rest spread evenly, same total):
//! - `gpu_ffn/T*`: [`ExpertFfn::forward`] on rows already routed and gathered
//!   (routing, gather and combine excluded), after the autotuner has picked
//!   the variants of T's bucket (`CAPMOE_FFN_NO_TUNE=1`: the shape heuristic);
//! - `gpu_moe/T*`: [`MoeLayer::forward`] end to end from device logits
//!   (route, dispatch, gather, FFN, combine), and the same layer replayed as
//!   a CUDA graph ([`MoeLayerGraph`], `CAPMOE_MOE_GRAPH|...`: the gain of
//!   capture is the ratio of the two).
//!
//! For the report (tools/gpu-check-report.py) every measured case also prints
//! `CAPMOE_FFN|T|load|micros|tflops|gbps_weights` (or `CAPMOE_MOE|...`): the
//! median of criterion's samples, FLOPs of the T*k routed rows, and bytes of
//! the weights of the experts that received rows. `CAPMOE_FFN_CHECK` and
//! `CAPMOE_FFN_ROW` lines hold checksums and sample rows of the FFN's output
//! at T = 64 that tools/peers/ffn_peers.py recomputes with torch on the same
//! hashed weights and inputs (the report compares them).

use capmoe::cuda::{ExpertFfn, FfnShape, GpuContext, GpuError, GpuRouter, MoeLayer, MoeLayerGraph};
use capmoe::expert::init::{fill_bf16, from_bf16};
use capmoe::routing::{Policy, RouterConfig, PAD};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use std::cell::RefCell;
use std::time::Duration;

const TOKENS: [usize; 7] = [1, 16, 64, 256, 1024, 4096, 16384];
const TOP_K: usize = 2;
/// `ExpertFfn::random` seed; ffn_peers.py draws the same weights from it.
const SEED: u32 = 7;
/// Hash seed of the activations x [T, H] (scale 1), shared with ffn_peers.py.
const X_SEED: u32 = 1234;
/// The batch whose FFN output is checksummed for the cross-check.
const CHECK_TOKENS: usize = 64;
/// Dispatch rows are not padded: the grouped GEMMs take each expert's real
/// row count (MoeLayer uses the same tile).
const TILE: usize = 1;
const SAMPLES: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Balanced,
    Skewed,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Balanced => "balanced",
            Load::Skewed => "skewed",
        }
    }
}

/// Rows per expert. `Balanced`: T*k spread evenly (the first T*k mod E
/// experts get one more). `Skewed`: expert 0 gets round(3 T k / E) (at most
/// T, one row per token), the rest spread evenly over the others.
/// ffn_peers.py's `expert_counts` is the same function.
fn expert_counts(tokens: usize, experts: usize, k: usize, load: Load) -> Vec<usize> {
    let total = tokens * k;
    let spread =
        |n: usize, over: usize| (0..over).map(move |e| n / over + usize::from(e < n % over));
    match load {
        Load::Balanced => spread(total, experts).collect(),
        Load::Skewed => {
            let hot = tokens.min((3 * total + experts / 2) / experts);
            std::iter::once(hot)
                .chain(spread(total - hot, experts - 1))
                .collect()
        }
    }
}

/// Router logits `[T, E]` that make top-k pick exactly `expert_counts`: the
/// expert-sorted sequence of all rows is laid slot-major (row p to token
/// p mod T, slot p div T), so each expert's (at most T) consecutive rows land
/// on distinct tokens; slot s gets logit k + 1 - s, every other expert 0.
fn logits(tokens: usize, experts: usize, k: usize, load: Load) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens * experts];
    let seq = expert_counts(tokens, experts, k, load)
        .into_iter()
        .enumerate()
        .flat_map(|(e, c)| std::iter::repeat_n(e, c));
    for (p, e) in seq.enumerate() {
        let (t, slot) = (p % tokens, p / tokens);
        out[t * experts + e] = (k + 1 - slot) as f32;
    }
    out
}

/// Device inputs of one batch.
struct Batch {
    tokens: usize,
    load: Load,
    logits: CudaSlice<f32>,
    x: CudaSlice<u16>,
    /// Experts that received rows (their weights are read).
    active: usize,
}

impl Batch {
    fn new(
        gpu: &GpuContext,
        router: &GpuRouter,
        shape: FfnShape,
        tokens: usize,
        load: Load,
    ) -> Result<Self, GpuError> {
        let st = gpu.stream();
        let want = expert_counts(tokens, shape.experts, TOP_K, load);
        let logits = st.clone_htod(&logits(tokens, shape.experts, TOP_K, load))?;
        let x = st.clone_htod(&fill_bf16(tokens * shape.hidden, X_SEED, 1.0))?;
        // The load routing produced (policy none: plain top-k).
        let got = router.route(&logits, tokens, shape.experts)?.load_host()?;
        let got: Vec<usize> = got.iter().map(|&c| c as usize).collect();
        if got != want {
            println!(
                "gpu_ffn: T={tokens} {}: routed load {got:?}, wanted {want:?}",
                load.name()
            );
        }
        Ok(Self {
            tokens,
            load,
            logits,
            x,
            active: got.iter().filter(|&&c| c > 0).count(),
        })
    }
}

/// Per-iteration times (seconds) of criterion's samples of one benchmark.
#[derive(Default)]
struct Samples(RefCell<Vec<f64>>);

impl Samples {
    /// Median of the last `SAMPLES` samples (criterion's measurement; the
    /// earlier ones are its warm-up), in seconds.
    fn median(&self) -> Option<f64> {
        let v = self.0.borrow();
        let mut last: Vec<f64> = v[v.len().saturating_sub(SAMPLES)..].to_vec();
        last.sort_by(f64::total_cmp);
        (!last.is_empty()).then(|| last[last.len() / 2])
    }
}

/// Times `iters` calls of `step` between two events on the stream.
fn timed(gpu: &GpuContext, iters: u64, samples: &Samples, mut step: impl FnMut()) -> Duration {
    let st = gpu.stream();
    let ev = || {
        st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event")
    };
    let start = ev();
    for _ in 0..iters {
        step();
    }
    let end = ev();
    let secs = f64::from(start.elapsed_ms(&end).expect("elapsed")) / 1e3;
    samples.0.borrow_mut().push(secs / iters.max(1) as f64);
    Duration::from_secs_f64(secs)
}

fn report(tag: &str, shape: FfnShape, b: &Batch, samples: &Samples) {
    if let Some(s) = samples.median() {
        let tflops = shape.flops(b.tokens * TOP_K) / s / 1e12;
        let gbps = shape.weight_bytes(b.active) / s / 1e9;
        println!(
            "{tag}|{}|{}|{:.2}|{:.1}|{:.1}",
            b.tokens,
            b.load.name(),
            s * 1e6,
            tflops,
            gbps
        );
    }
}

/// Tokens whose rows' first values are printed for the cross-check.
fn check_tokens(tokens: usize) -> [usize; 3] {
    [0, 1, tokens - 1]
}

/// Values printed per checked row.
const CHECK_VALUES: usize = 8;

/// Prints the FFN output's `sum`, `sum |y|` and `sum y^2` (f64) over the
/// real rows, and the first values of the rows of [`check_tokens`], for
/// ffn_peers.py to recompute with torch on the same weights and inputs.
fn checksum(
    gpu: &GpuContext,
    ffn: &ExpertFfn,
    router: &GpuRouter,
    b: &Batch,
) -> Result<(), GpuError> {
    let h = ffn.shape().hidden;
    let plan = router.route(&b.logits, b.tokens, ffn.shape().experts)?;
    let d = plan.dispatch(TILE)?;
    let rows = plan.gather_bf16(&d, &b.x, h)?;
    let y = gpu.stream().clone_dtoh(&ffn.forward(&plan, &d, &rows)?)?;
    let host = d.to_host(&plan)?;
    let (mut n, mut sum, mut abs, mut sq) = (0usize, 0f64, 0f64, 0f64);
    let load = b.load.name();
    for (r, &t) in host.row_tokens().iter().enumerate() {
        if t == PAD {
            continue;
        }
        n += 1;
        let row = &y[r * h..(r + 1) * h];
        for &v in row {
            let v = f64::from(from_bf16(v));
            sum += v;
            abs += v.abs();
            sq += v * v;
        }
        if check_tokens(b.tokens).contains(&(t as usize)) {
            // The expert whose segment holds row r.
            let e = host
                .offsets()
                .iter()
                .rposition(|&o| o as usize <= r)
                .unwrap_or(0);
            let vals: Vec<String> = row[..CHECK_VALUES.min(h)]
                .iter()
                .map(|&v| format!("{:.6e}", from_bf16(v)))
                .collect();
            println!(
                "CAPMOE_FFN_ROW|{}|{load}|{t}|{e}|{}",
                b.tokens,
                vals.join(" ")
            );
        }
    }
    println!(
        "CAPMOE_FFN_CHECK|{}|{load}|{n}|{sum:.6e}|{abs:.6e}|{sq:.6e}",
        b.tokens
    );
    Ok(())
}

fn setup() -> Result<(GpuContext, ExpertFfn, GpuRouter), GpuError> {
    let gpu = GpuContext::new(0)?;
    let ffn = ExpertFfn::random(&gpu, FfnShape::new(8, 4096, 14336)?, SEED)?;
    let policy: Policy = "none".parse()?;
    let router = GpuRouter::new(&gpu, RouterConfig::new(TOP_K, policy))?;
    Ok((gpu, ffn, router))
}

fn benches(c: &mut Criterion) {
    if let Some(why) = GpuContext::unavailable() {
        println!("gpu_ffn: skipped: {why}");
        return;
    }
    let (gpu, ffn, router) = match setup() {
        Ok(s) => s,
        Err(e) => {
            println!("gpu_ffn: skipped: setup failed: {e}");
            return;
        }
    };
    let shape = ffn.shape();
    println!(
        "gpu_ffn on {}: E {} H {} I {} top-{TOP_K}, variants here: {}",
        gpu.name().unwrap_or_default(),
        shape.experts,
        shape.hidden,
        shape.intermediate,
        ffn.variants().join(",")
    );
    let tune = std::env::var_os("CAPMOE_FFN_NO_TUNE").is_none();
    let loads = [Load::Balanced, Load::Skewed];

    for tokens in TOKENS {
        if tune {
            match ffn.tune(tokens, TOP_K, false, &mut |_: &str| {}) {
                Ok(t) => println!(
                    "CAPMOE_FFN_TUNE|{tokens}|{}|{:.2}|{}|{:.2}|{}",
                    t.gemm1.variant,
                    t.gemm1.micros,
                    t.gemm2.variant,
                    t.gemm2.micros,
                    t.gemm1.cached
                ),
                Err(e) => println!("gpu_ffn: tuning T={tokens} failed ({e}); the heuristic picks"),
            }
        }
        let pair = ffn.variants_for(tokens, TOP_K);
        println!("CAPMOE_FFN_VARIANTS|{tokens}|{pair:?}");
        let mut g = c.benchmark_group(format!("gpu_ffn/T{tokens}"));
        g.throughput(Throughput::Elements(tokens as u64))
            .sample_size(SAMPLES);
        for load in loads {
            let b = Batch::new(&gpu, &router, shape, tokens, load).expect("batch");
            if tokens == CHECK_TOKENS {
                checksum(&gpu, &ffn, &router, &b).expect("checksum");
            }
            let plan = router
                .route(&b.logits, tokens, shape.experts)
                .expect("route");
            let d = plan.dispatch(TILE).expect("dispatch");
            let rows = plan.gather_bf16(&d, &b.x, shape.hidden).expect("gather");
            let samples = Samples::default();
            g.bench_function(BenchmarkId::new("ffn", load.name()), |bench| {
                bench.iter_custom(|iters| {
                    // Each output is dropped at once: freed in stream order.
                    timed(&gpu, iters, &samples, || {
                        drop(ffn.forward(&plan, &d, &rows).expect("forward"))
                    })
                })
            });
            report("CAPMOE_FFN", shape, &b, &samples);
        }
        g.finish();
    }

    let layer = MoeLayer::new(router, ffn).expect("layer");
    for tokens in TOKENS {
        let mut g = c.benchmark_group(format!("gpu_moe/T{tokens}"));
        g.throughput(Throughput::Elements(tokens as u64))
            .sample_size(SAMPLES);
        for load in loads {
            let b = Batch::new(&gpu, layer.router(), shape, tokens, load).expect("batch");
            let samples = Samples::default();
            g.bench_function(BenchmarkId::new("layer", load.name()), |bench| {
                bench.iter_custom(|iters| {
                    timed(&gpu, iters, &samples, || {
                        drop(layer.forward(&b.logits, &b.x, tokens).expect("layer"))
                    })
                })
            });
            report("CAPMOE_MOE", shape, &b, &samples);
            // The same layer replayed as one CUDA graph (the gain of capture).
            let mut graph = match MoeLayerGraph::capture(&layer, tokens) {
                Ok(graph) => graph,
                Err(e) => {
                    println!("CAPMOE_MOE_GRAPH_ERROR|{tokens}|{}|{e}", load.name());
                    continue;
                }
            };
            let (ld, xd) = graph.inputs_mut();
            gpu.stream().memcpy_dtod(&b.logits, ld).expect("logits");
            gpu.stream().memcpy_dtod(&b.x, xd).expect("x");
            let samples = Samples::default();
            g.bench_function(BenchmarkId::new("graph", load.name()), |bench| {
                bench.iter_custom(|iters| {
                    timed(&gpu, iters, &samples, || {
                        graph.launch().expect("graph launch")
                    })
                })
            });
            report("CAPMOE_MOE_GRAPH", shape, &b, &samples);
        }
        g.finish();
    }
}

criterion_group!(gpu_ffn, benches);
criterion_main!(gpu_ffn);
