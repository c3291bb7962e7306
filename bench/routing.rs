//! CPU routing benchmark: the oracle's cost per policy, from logits to plan.
//!
//! Logits are synthetic with Mixtral-like skew (busiest expert ~2.75x the
//! mean) where E/k allows it, uniform otherwise. gamma = 1.0, 8 EP ranks.
//! Run: `cargo bench --bench routing`; `tools/bench-table.py` turns
//! criterion's estimates into bench/results/routing-cpu.md.

use capmoe::routing::{route, Logits, Policy, RouterConfig};
use capmoe::trace::{synthetic_logits, Skew};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

fn routing(c: &mut Criterion) {
    let policies: Vec<Policy> = [
        "none",
        "drop:score",
        "drop:order",
        "drop:random",
        "reroute:next-best",
        "reroute:optimal",
        "expand:local",
    ]
    .iter()
    .map(|p| p.parse().expect("policy"))
    .collect();
    for (experts, k) in [(8usize, 2usize), (8, 8), (64, 2), (64, 8)] {
        for tokens in [256usize, 4096, 16384] {
            let skew = if (experts as f64 / k as f64) > 2.75 {
                Skew::Mixtral
            } else {
                Skew::Uniform
            };
            let logits = synthetic_logits(tokens, experts, k, skew, 42).expect("trace");
            let mut g = c.benchmark_group(format!("route/T{tokens}/E{experts}/k{k}"));
            g.throughput(Throughput::Elements(tokens as u64));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            for &policy in &policies {
                let mut cfg = RouterConfig::new(k, policy).with_ranks(8);
                if policy.has_capacity() {
                    cfg = cfg.with_capacity_factor(1.0);
                }
                g.bench_function(
                    BenchmarkId::from_parameter(policy.to_string().replace(':', "-")),
                    |b| {
                        b.iter(|| {
                            let l = Logits::new(&logits, tokens, experts).expect("logits");
                            route(&l, &cfg).expect("route")
                        })
                    },
                );
            }
            g.finish();
        }
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
