//! GPU routing pipeline (gating .. plan .. dispatch) timed with CUDA events.
//! Run through tools/gpu-check.sh on a device; without a GPU it prints why
//! and exits. Each iteration routes one batch of device-resident logits and
//! lays out its dispatch rows (tile 64); the buffers are allocated in stream
//! order inside the timed region, as a caller without a workspace would.

use capmoe::cuda::{GpuContext, GpuRouter};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::{synthetic_logits, Skew};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;
use std::time::Duration;

fn pipeline(c: &mut Criterion) {
    let gpu = match GpuContext::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_routing: skipped: {e}");
            return;
        }
    };
    eprintln!("gpu_routing on {}", gpu.name().unwrap_or_default());
    let policies = ["none", "drop:score", "reroute:next-best", "expand:local"];
    for (experts, k) in [(8usize, 2usize), (64, 2), (64, 8), (256, 8)] {
        for tokens in [1usize, 64, 512, 4096, 16384] {
            let skew = if experts as f64 / k as f64 > 2.75 {
                Skew::Mixtral
            } else {
                Skew::Uniform
            };
            let logits = synthetic_logits(tokens, experts, k, skew, 42).expect("trace");
            let d_logits = gpu.stream().clone_htod(&logits).expect("upload");
            let mut g = c.benchmark_group(format!("gpu_route/T{tokens}/E{experts}/k{k}"));
            g.throughput(Throughput::Elements(tokens as u64));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_millis(600));
            for p in policies {
                let policy: Policy = p.parse().expect("policy");
                let mut cfg = RouterConfig::new(k, policy).with_ranks(8.min(experts));
                if policy.has_capacity() {
                    cfg = cfg.with_capacity_factor(1.0);
                }
                let router = GpuRouter::new(&gpu, cfg).expect("router");
                g.bench_function(BenchmarkId::from_parameter(p.replace(':', "-")), |b| {
                    b.iter_custom(|iters| {
                        let st = gpu.stream();
                        let start = st
                            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                            .expect("event");
                        let mut keep = Vec::with_capacity(iters as usize);
                        for _ in 0..iters {
                            let plan = router.route(&d_logits, tokens, experts).expect("route");
                            let d = plan.dispatch(64).expect("dispatch");
                            keep.push((plan, d));
                            if keep.len() > 64 {
                                keep.clear(); // frees in stream order; bounded memory
                            }
                        }
                        let end = st
                            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                            .expect("event");
                        let ms = start.elapsed_ms(&end).expect("elapsed");
                        Duration::from_secs_f64(ms as f64 / 1e3)
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
