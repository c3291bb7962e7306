//! Placing the experts on the ranks, counting a routed layer's traffic and
//! rows, and the layer's latency: the slowest rank's compute plus its
//! dispatch and combine.

use super::topology::{phase_time, Topology, Traffic};
use super::SimError;
use crate::routing::{Placement, RoutingPlan};
use serde::Serialize;

/// The expert FFN's time on a rank: `fixed_us + per_row_us * rows`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComputeModel {
    /// Fixed part of a rank's expert time per layer, µs.
    pub fixed_us: f64,
    /// Time per routed row, µs.
    pub per_row_us: f64,
}

impl ComputeModel {
    /// Checks both numbers are finite and non-negative.
    pub fn check(&self) -> Result<(), SimError> {
        for (what, value) in [
            ("fixed expert time µs", self.fixed_us),
            ("per-row expert time µs", self.per_row_us),
        ] {
            if !(value.is_finite() && (0.0..=1e9).contains(&value)) {
                return Err(SimError::BadParameter { what, value });
            }
        }
        Ok(())
    }

    /// Per-row time from an expert's FLOPs per row and a sustained rate:
    /// `flops_per_row / (tflops * 1e12)` seconds.
    pub fn per_row_from_flops(flops_per_row: f64, tflops: f64) -> Result<f64, SimError> {
        if !(tflops.is_finite() && (1e-6..=1e6).contains(&tflops)) {
            return Err(SimError::BadParameter {
                what: "sustained expert TFLOP/s",
                value: tflops,
            });
        }
        Ok(flops_per_row / (tflops * 1e12) * 1e6)
    }
}

/// How the `gpus` ranks hold `experts` experts.
///
/// With `gpus <= experts` (and `gpus` dividing `experts`) there is one EP
/// group: rank `r` owns experts `rE/R..(r+1)E/R` (design.md §3). With more
/// GPUs than experts (and `experts` dividing `gpus`) EP cannot split
/// further: the GPUs form `gpus / experts` EP groups of `experts` ranks,
/// one expert per rank, each group routing its own tokens (data parallel
/// over EP groups; every layer waits for the slowest group). Group `g`
/// holds global ranks `g * experts .. (g + 1) * experts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpLayout {
    /// EP groups.
    pub groups: usize,
    /// Ranks per group.
    pub ranks_per_group: usize,
    /// Experts.
    pub experts: usize,
}

impl EpLayout {
    /// The layout of `gpus` ranks over `experts` experts.
    pub fn new(gpus: usize, experts: usize) -> Result<Self, SimError> {
        if gpus == 0 || experts == 0 {
            return Err(SimError::Zero("GPUs or experts"));
        }
        if gpus <= experts && experts % gpus == 0 {
            Ok(Self {
                groups: 1,
                ranks_per_group: gpus,
                experts,
            })
        } else if gpus > experts && gpus % experts == 0 {
            Ok(Self {
                groups: gpus / experts,
                ranks_per_group: experts,
                experts,
            })
        } else {
            Err(SimError::RanksVsExperts { gpus, experts })
        }
    }
}

/// What one routed group contributes to a layer: the rows each of its
/// ranks serves, and its rows on the links.
pub fn count_group(
    plan: &RoutingPlan,
    placement: &Placement,
    group: usize,
    topo: &Topology,
    rows: &mut [u64],
    traffic: &mut Traffic,
) {
    let base = group * placement.ranks();
    let load = &plan.stats().load;
    for (e, &l) in load.iter().enumerate() {
        rows[base + placement.rank_of_expert(e)] += l;
    }
    // One copy per token and destination rank (EP dispatch deduplicates).
    let mut seen = vec![usize::MAX; placement.ranks()];
    for t in 0..plan.tokens() {
        let src = placement.rank_of_token(t);
        for a in plan.assignments(t) {
            let dst = placement.rank_of_expert(a.expert as usize);
            if seen[dst] != t {
                seen[dst] = t;
                traffic.add(topo, base + src, base + dst);
            }
        }
    }
}

/// One layer's modelled latency and the split of the rank that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LayerCost {
    /// The slowest rank's `compute + dispatch + combine`, µs.
    pub latency_us: f64,
    /// That rank's expert compute, µs.
    pub compute_us: f64,
    /// That rank's NVLink time, dispatch and combine, µs.
    pub intra_us: f64,
    /// That rank's network time, dispatch and combine, µs.
    pub inter_us: f64,
    /// The most rows any rank serves.
    pub busiest_rows: u64,
}

/// The layer latency: every rank's `compute(rows) + 2 * phase` (the
/// combine moves the dispatch's rows back, so it costs the same), and the
/// maximum over ranks, since the combine waits for the slowest.
pub fn layer_cost(
    topo: &Topology,
    compute: &ComputeModel,
    rows: &[u64],
    traffic: &Traffic,
    row_bytes: f64,
) -> LayerCost {
    let mut best = LayerCost::default();
    for (r, &n) in rows.iter().enumerate() {
        let phase = phase_time(topo, traffic, r, row_bytes);
        let c = compute.fixed_us + compute.per_row_us * n as f64;
        let total = c + 2.0 * phase.total_us();
        if r == 0 || total > best.latency_us {
            best = LayerCost {
                latency_us: total,
                compute_us: c,
                intra_us: 2.0 * phase.intra_us,
                inter_us: 2.0 * phase.inter_us,
                busiest_rows: best.busiest_rows,
            };
        }
        best.busiest_rows = best.busiest_rows.max(n);
    }
    best
}
