//! The measured EP benchmark (`capmoe bench --ep local:R|mpi`): every rank
//! runs the same prefill forwards through [`EpMoe`] under each case, and rank
//! 0 gathers what each rank measured in each layer. Nothing here is
//! modelled except the column that says so.

use super::error::DistError;
use super::layer::EpMoe;
use super::stats::{gather_times, LayerTimes};
use crate::ep::comm::{all_gather, Communicator};
use crate::ep::gpu::Percentiles;
use crate::ep::{a2a_traffic, EpBackend, LatencyModel};
use crate::model::{ForwardOptions, LogitsMode, Model};
use crate::routing::{Placement, RouterConfig};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long each case is timed.
#[derive(Debug, Clone, PartialEq)]
pub struct EpBenchSetup {
    /// The cases, the dropless baseline (`none`) first.
    pub cases: Vec<RouterConfig>,
    /// Untimed forwards before each case's timed ones.
    pub warmup: usize,
    /// Timed forwards at least.
    pub min_iters: usize,
    /// Timed forwards at most.
    pub max_iters: usize,
    /// Stop once the median of the MoE time moves less than this fraction
    /// over the last three forwards (e.g. 0.02)...
    pub tolerance: f64,
    /// ...or once a case has run this long.
    pub time_cap: Duration,
    /// The all-to-all model of today's modelled figure.
    pub model: LatencyModel,
}

/// One rank's medians in one layer of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankLayer {
    /// Median expert FFN time, ms.
    pub expert_ms: f64,
    /// Median time inside the dispatch all-to-all-v, ms.
    pub dispatch_ms: f64,
    /// Median time inside the combine all-to-all-v, ms.
    pub combine_ms: f64,
    /// Median layer time on this rank, ms.
    pub total_ms: f64,
    /// Rows its experts served (the same every forward).
    pub rows: f64,
    /// Bytes it sent and received in dispatch and combine, per forward.
    pub sent_bytes: f64,
    /// Bytes received.
    pub recv_bytes: f64,
}

/// One case's measurements across the ranks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpCase {
    /// Policy name.
    pub policy: String,
    /// Capacity factor, for capacity policies.
    pub gamma: Option<f64>,
    /// Timed forwards.
    pub iters: usize,
    /// Whether the median settled within the tolerance before the caps.
    pub settled: bool,
    /// The MoE layers' time per forward: the sum over layers of the slowest
    /// rank's layer time (ranks wait for it in the collectives), ms.
    pub moe_ms: Percentiles,
    /// The whole forward on rank 0, ms.
    pub forward_ms: Percentiles,
    /// Measured speedup of the MoE layers over `none` (baseline median over
    /// each forward of this case: min, median, max).
    pub speedup: Percentiles,
    /// The bound from rows: busiest-rank rows under `none` over this case's,
    /// summed over layers.
    pub ideal_speedup: f64,
    /// Today's model of the same layers: the slowest rank's measured expert
    /// time plus the all-to-all at the stated bandwidth, ms (median forward).
    pub modelled_ms: f64,
    /// `none`'s modelled time over this case's.
    pub modelled_speedup: f64,
    /// Measured median MoE time over the modelled.
    pub measured_over_modelled: f64,
    /// Set when the measured median speedup is above the ideal (by more
    /// than 2%), with the likely cause: noise, or work that shrinks with
    /// every rank's rows rather than the busiest rank's.
    pub above_ideal: Option<String>,
    /// Per layer, per rank medians (`layers[l][r]`).
    pub layers: Vec<Vec<RankLayer>>,
}

/// The report of the measured EP benchmark (rank 0's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpBenchReport {
    /// Ranks.
    pub ranks: usize,
    /// Tokens per forward.
    pub tokens: usize,
    /// Expert parameters each rank holds, and all of them.
    pub expert_params_held: u64,
    /// Expert parameters of the whole model.
    pub expert_params_total: u64,
    /// The cases, `none` first.
    pub cases: Vec<EpCase>,
}

/// Runs the benchmark on this rank (every rank calls it, with its own
/// model of its expert group); rank 0 gets the report.
pub fn ep_bench<B: EpBackend, C: Communicator + ?Sized>(
    comm: &C,
    model: &Model<B>,
    prompts: &[&[u32]],
    setup: &EpBenchSetup,
    mut tick: impl FnMut(&str),
) -> Result<Option<EpBenchReport>, DistError> {
    if setup.cases.is_empty() || setup.min_iters == 0 || setup.max_iters < setup.min_iters {
        return Err(DistError::Zero("timed cases or iterations"));
    }
    let cfg = model.config();
    let tokens: usize = prompts.iter().map(|p| p.len()).sum();
    let mut cases = Vec::with_capacity(setup.cases.len());
    let mut baseline: Option<(f64, f64, f64)> = None;
    for router in &setup.cases {
        let label = match router
            .capacity_factor
            .filter(|_| router.policy.has_capacity())
        {
            Some(g) => format!("{} @ {g}", router.policy),
            None => router.policy.to_string(),
        };
        tick(&label);
        let ep = EpMoe::new(
            comm,
            cfg.num_local_experts,
            cfg.hidden_size,
            router,
            tokens.max(1),
        )?;
        ep.check_model(model, router)?;
        ep.check_prefill(tokens)?;
        let opts = ForwardOptions::new(router.clone()).with_logits(LogitsMode::Skip);
        for _ in 0..setup.warmup {
            model.prefill_with(prompts, &opts, Some(&ep))?;
        }
        ep.take_times();
        let (mut moe, mut fwd, mut per_iter) = (Vec::new(), Vec::new(), Vec::new());
        let mut plans = Vec::new();
        let started = Instant::now();
        let mut settled = false;
        while moe.len() < setup.max_iters {
            let clock = Instant::now();
            let (_, out) = model.prefill_with(prompts, &opts, Some(&ep))?;
            let took = clock.elapsed().as_secs_f64() * 1e3;
            if plans.is_empty() {
                plans = out.layers.into_iter().filter_map(|l| l.plan).collect();
            }
            let all = gather_times(comm, &ep.take_times())?;
            // Rank 0 decides whether to go on; every rank follows its word.
            let mut go = 0u64;
            if let Some(all) = all {
                moe.push(slowest_sum(&all));
                fwd.push(took);
                per_iter.push(all);
                settled = moe.len() >= setup.min_iters.max(3) && stable(&moe, setup.tolerance);
                let capped = started.elapsed() >= setup.time_cap && moe.len() >= setup.min_iters;
                go = u64::from(!(settled || capped));
            }
            if all_gather(comm, &[go])?[0] == 0 {
                break;
            }
        }
        if comm.rank() != 0 {
            continue;
        }
        let layers = medians(&per_iter);
        let busiest: f64 = layers
            .iter()
            .map(|l| l.iter().map(|r| r.rows).fold(0.0, f64::max))
            .sum();
        let slowest_expert: f64 = layers
            .iter()
            .map(|l| l.iter().map(|r| r.expert_ms).fold(0.0, f64::max))
            .sum();
        let placement = Placement::new(comm.size(), cfg.num_local_experts, tokens)
            .map_err(|e| DistError::Model(e.into()))?;
        let a2a_ms: f64 = plans
            .iter()
            .map(|p| setup.model.a2a_seconds(&a2a_traffic(p, &placement)) * 1e3)
            .sum();
        let modelled = slowest_expert + a2a_ms;
        let med = Percentiles::of(&moe).p50;
        let (base_ms, base_rows, base_model) = *baseline.get_or_insert((med, busiest, modelled));
        let speedups: Vec<f64> = moe.iter().map(|&m| base_ms / m).collect();
        let speedup = Percentiles::of(&speedups);
        let ideal = base_rows / busiest;
        let above_ideal = (speedup.p50 > ideal * 1.02).then(|| {
            format!(
                "measured {:.2}x is above the {ideal:.2}x the busiest rank's rows allow: noise (a loaded machine, a slow baseline forward), or work that shrinks with every rank's rows (the dispatch and combine copies), not the straggler's",
                speedup.p50
            )
        });
        cases.push(EpCase {
            policy: router.policy.to_string(),
            gamma: router
                .capacity_factor
                .filter(|_| router.policy.has_capacity()),
            iters: moe.len(),
            settled,
            moe_ms: Percentiles::of(&moe),
            forward_ms: Percentiles::of(&fwd),
            speedup,
            ideal_speedup: finite(ideal),
            modelled_ms: modelled,
            modelled_speedup: finite(base_model / modelled),
            measured_over_modelled: finite(med / modelled),
            above_ideal,
            layers,
        });
    }
    let held = model.expert_params_held();
    Ok((comm.rank() == 0).then(|| EpBenchReport {
        ranks: comm.size(),
        tokens,
        expert_params_held: held,
        expert_params_total: held.saturating_mul(comm.size() as u64),
        cases,
    }))
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Sum over layers of the slowest rank's layer time (`all[rank][layer]`).
fn slowest_sum(all: &[Vec<LayerTimes>]) -> f64 {
    let layers = all.first().map_or(0, Vec::len);
    (0..layers)
        .map(|l| all.iter().map(|r| r[l].total_ms()).fold(0.0, f64::max))
        .sum()
}

/// Whether the running median moved less than `tol` (relative) over the
/// last three values.
fn stable(v: &[f64], tol: f64) -> bool {
    let med = |n: usize| Percentiles::of(&v[..n]).p50;
    let n = v.len();
    if n < 4 {
        return false;
    }
    let now = med(n);
    (1..=3).all(|back| (med(n - back) - now).abs() <= tol * now.abs())
}

/// Per layer, per rank medians over the forwards (`iters[i][rank][layer]`).
fn medians(iters: &[Vec<Vec<LayerTimes>>]) -> Vec<Vec<RankLayer>> {
    let Some(first) = iters.first() else {
        return Vec::new();
    };
    let (ranks, layers) = (first.len(), first.first().map_or(0, Vec::len));
    (0..layers)
        .map(|l| {
            (0..ranks)
                .map(|r| {
                    let m = |f: fn(&LayerTimes) -> f64| {
                        Percentiles::of(&iters.iter().map(|i| f(&i[r][l])).collect::<Vec<_>>()).p50
                    };
                    RankLayer {
                        expert_ms: m(|t| t.expert_ms),
                        dispatch_ms: m(|t| t.dispatch_ms),
                        combine_ms: m(|t| t.combine_ms),
                        total_ms: m(LayerTimes::total_ms),
                        rows: m(|t| t.rows),
                        sent_bytes: m(|t| t.sent_bytes),
                        recv_bytes: m(|t| t.recv_bytes),
                    }
                })
                .collect()
        })
        .collect()
}
