//! CPU routing benchmark: the oracle's cost per policy, from logits to plan.
//!
//! Rows: E in {8, 64, 256} (k = 2 for E = 8, else k = 8), T in {1024, 16384},
//! gamma 1.0 and 1.5, every policy, expert and rank capacity scope, 8 EP
//! ranks. Logits are synthetic with Mixtral-like skew (busiest expert ~2.75x
//! the mean). Short measurement times keep the whole run to a few minutes.
//! Run: `cargo bench --bench routing`;
//! `bench/results/routing-scale/table.py` turns criterion's estimates into
//! bench/results/routing-scale/README.md.
//!
//! Groups `optimal-skew/*`: `reroute:optimal` alone at T = 16384, E = 256,
//! k = 8, expert scope, under the hard skew of issue 23 (per-expert bias
//! from N(0, 1.6^2), `capmoe trace --skew uniform --bias-std 1.6`) and the
//! OLMoE-like one, gamma 1.0 and 1.5 (bench/results/routing-scale/
//! optimal-hard-skew.md). `cargo bench --bench routing -- optimal-skew`
//! runs them alone.

use capmoe::routing::{route, CapacityScope, Logits, Policy, RouterConfig};
use capmoe::trace::{add_bias, normal_bias, synthetic_logits, Skew};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const POLICIES: [&str; 8] = [
    "drop:score",
    "drop:order",
    "drop:reverse-order",
    "drop:random",
    "reroute:next-best",
    "reroute:optimal",
    "expand:local",
    "none",
];

fn routing(c: &mut Criterion) {
    for (experts, k) in [(8usize, 2usize), (64, 8), (256, 8)] {
        for tokens in [1024usize, 16384] {
            let logits = synthetic_logits(tokens, experts, k, Skew::Mixtral, 42).expect("trace");
            for gamma in [1.0f64, 1.5] {
                let mut g = c.benchmark_group(format!(
                    "scale/E{experts}/k{k}/T{tokens}/g{}",
                    (gamma * 100.0) as u32
                ));
                g.throughput(Throughput::Elements(tokens as u64));
                g.sample_size(10)
                    .warm_up_time(Duration::from_millis(100))
                    .measurement_time(Duration::from_millis(500));
                for name in POLICIES {
                    let policy: Policy = name.parse().expect("policy");
                    // `none` has no capacity: one row, under gamma 1.0 only.
                    let scopes: &[CapacityScope] = match (policy.has_capacity(), gamma == 1.0) {
                        (true, _) => &[CapacityScope::Expert, CapacityScope::Rank],
                        (false, true) => &[CapacityScope::Expert],
                        (false, false) => &[],
                    };
                    for &scope in scopes {
                        let mut cfg = RouterConfig::new(k, policy).with_ranks(8).with_scope(scope);
                        if policy.has_capacity() {
                            cfg = cfg.with_capacity_factor(gamma);
                        }
                        let scope_name = match scope {
                            CapacityScope::Expert => "expert",
                            CapacityScope::Rank => "rank",
                        };
                        let id = format!("{}@{scope_name}", name.replace(':', "-"));
                        g.bench_function(BenchmarkId::from_parameter(id), |b| {
                            b.iter(|| {
                                let l = Logits::new(&logits, tokens, experts).expect("logits");
                                route(&l, &cfg).expect("route")
                            })
                        });
                    }
                }
                g.finish();
            }
        }
    }
}

fn optimal_skew(c: &mut Criterion) {
    let (tokens, experts, k) = (16384usize, 256usize, 8usize);
    let mut hard = synthetic_logits(tokens, experts, k, Skew::Uniform, 0).expect("trace");
    add_bias(&mut hard, &normal_bias(experts, 1.6, 0).expect("bias"));
    let olmoe = synthetic_logits(tokens, experts, k, Skew::Olmoe, 0).expect("trace");
    for (name, logits) in [("hard", &hard), ("olmoe", &olmoe)] {
        let mut g = c.benchmark_group(format!("optimal-skew/{name}"));
        g.throughput(Throughput::Elements(tokens as u64));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(5));
        for gamma in [1.0f64, 1.5] {
            let policy: Policy = "reroute:optimal".parse().expect("policy");
            let cfg = RouterConfig::new(k, policy).with_capacity_factor(gamma);
            let id = format!("g{}", (gamma * 100.0) as u32);
            g.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    let l = Logits::new(logits, tokens, experts).expect("logits");
                    route(&l, &cfg).expect("route")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, routing, optimal_skew);
criterion_main!(benches);
