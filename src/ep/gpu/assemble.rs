//! From measurements to reports: speedups against `none`, ideal ratios and the bar rows.

use super::*;
use crate::ep::LatencyModel;

/// Serves `a / b` as a finite ratio or nothing.
fn ratio(a: f64, b: f64) -> Option<f64> {
    stats::ratio(a, b)
}

/// One case's report from its measurement; speedups are filled in by
/// [`assemble_group`].
pub fn assemble_case(
    m: &CaseMeasurement,
    shape: &LayerShape,
    ranks: usize,
    tokens: usize,
    lat: &LatencyModel,
) -> GpuCaseReport {
    let per = shape.experts / ranks.max(1);
    let rank_load: Vec<u64> = (0..ranks)
        .map(|r| m.load[r * per..(r + 1) * per].iter().sum())
        .collect();
    let max_rank_load = rank_load.iter().copied().max().unwrap_or(0);
    let served: u64 = m.load.iter().sum();
    let slots = (tokens * shape.top_k).max(1) as f64;
    let max_load = m.load.iter().copied().max().unwrap_or(0);
    let a2a_ms = lat.a2a_seconds(&m.traffic) * 1e3;
    let per_rank = stats::per_rank(&m.rank_ms, ranks);
    let rank_ms_p50: Vec<f64> = per_rank.iter().map(|v| Percentiles::of(v).p50).collect();
    let slowest_rank = (0..ranks)
        .max_by(|&a, &b| rank_ms_p50[a].total_cmp(&rank_ms_p50[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    let expert: Vec<f64> = stats::layer_latencies(&m.rank_ms, 0.0);
    let latency = stats::layer_latencies(&m.rank_ms, a2a_ms);
    let full = Percentiles::of(&m.full_ms);
    let sum_rank_ms_p50: f64 = rank_ms_p50.iter().sum();
    let active = m.load.iter().filter(|&&l| l > 0).count();
    let full_s = full.p50 / 1e3;
    let iterations = m.rank_ms.len();
    GpuCaseReport {
        policy: m.policy.clone(),
        capacity_factor: m.capacity_factor,
        capacity: m.capacity,
        load: m.load.clone(),
        rank_load: rank_load.clone(),
        max_rank_load,
        imbalance: ratio(max_load as f64, served as f64 / shape.experts as f64).unwrap_or(0.0),
        rank_imbalance: ratio(max_rank_load as f64, served as f64 / ranks.max(1) as f64)
            .unwrap_or(0.0),
        dropped_pct: 100.0 * m.dropped as f64 / slots,
        rerouted_pct: 100.0 * m.rerouted as f64 / slots,
        gate_mass_kept: m.gate_mass_kept,
        iterations,
        rank_ms_p50,
        slowest_rank,
        expert_ms: Percentiles::of(&expert),
        a2a_rows: m.traffic.busiest(),
        a2a_bytes: lat.a2a_bytes(&m.traffic),
        a2a_ms,
        latency_ms: Percentiles::of(&latency),
        sum_rank_ms_p50,
        full_layer_ms: full,
        split_overhead: ratio(sum_rank_ms_p50, full.p50),
        full_tflops: ratio(shape.flops(served), full_s * 1e12),
        full_weight_gbps: ratio(shape.weight_bytes(active), full_s * 1e9),
        routing_ms: Percentiles::of(&m.routing_ms),
        host_enqueue_us: m.host_enqueue_us,
        speedup_p50: None,
        speedup_p99: None,
        speedup_expert_p50: None,
        ideal: None,
        efficiency: None,
        efficiency_expert: None,
        meets_bar: None,
        energy_j_per_token: m
            .telemetry
            .as_ref()
            .and_then(|t| t.energy_j)
            .and_then(|j| ratio(j, (iterations * tokens) as f64)),
        telemetry: m.telemetry.clone(),
        gate_timeouts: m.gate_timeouts,
    }
}

/// A group's report: every case assembled, speedups and ideal ratios
/// against the group's `none` case (its first `none`).
#[allow(clippy::too_many_arguments)]
pub fn assemble_group(
    tokens: usize,
    skew: String,
    ranks: usize,
    shape: &LayerShape,
    lat: &LatencyModel,
    gemm: (String, String),
    measured: &[CaseMeasurement],
) -> GroupReport {
    let mut cases: Vec<GpuCaseReport> = measured
        .iter()
        .map(|m| assemble_case(m, shape, ranks, tokens, lat))
        .collect();
    if let Some(base) = cases.iter().find(|c| c.policy == "none").cloned() {
        for c in &mut cases {
            c.speedup_p50 = ratio(base.latency_ms.p50, c.latency_ms.p50);
            c.speedup_p99 = ratio(base.latency_ms.p99, c.latency_ms.p99);
            c.speedup_expert_p50 = ratio(base.expert_ms.p50, c.expert_ms.p50);
            c.ideal = ideal_ratio(base.max_rank_load, c.max_rank_load);
            c.efficiency = c.speedup_p50.zip(c.ideal).and_then(|(s, i)| ratio(s, i));
            c.efficiency_expert = c
                .speedup_expert_p50
                .zip(c.ideal)
                .and_then(|(s, i)| ratio(s, i));
            c.meets_bar = c.efficiency.map(|e| e >= BAR);
        }
    }
    GroupReport {
        tokens,
        skew,
        ranks,
        experts_per_rank: shape.experts / ranks.max(1),
        gemm1: gemm.0,
        gemm2: gemm.1,
        cases,
    }
}

/// The bar rows: every capacity case at the gamma nearest 1.5 (the paper's).
pub fn bar_rows(groups: &[GroupReport], gammas: &[f64]) -> Vec<BarRow> {
    let Some(g) = gammas
        .iter()
        .copied()
        .min_by(|a, b| (a - 1.5).abs().total_cmp(&(b - 1.5).abs()))
    else {
        return Vec::new();
    };
    groups
        .iter()
        .flat_map(|gr| {
            gr.cases
                .iter()
                .filter(move |c| c.capacity_factor == Some(g))
                .map(move |c| BarRow {
                    tokens: gr.tokens,
                    skew: gr.skew.clone(),
                    ranks: gr.ranks,
                    policy: c.policy.clone(),
                    capacity_factor: g,
                    speedup_p50: c.speedup_p50,
                    ideal: c.ideal,
                    efficiency: c.efficiency,
                    meets_bar: c.meets_bar,
                })
        })
        .collect()
}

/// NVML's spelling of a CUDA device UUID: `GPU-` and the 16 bytes as
/// 8-4-4-4-12 hex digits.
pub fn nvml_uuid(bytes: &[u8; 16]) -> String {
    let h: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}
