//! What a run reports: throughput, latency percentiles, goodput, rank utilisation (modelled,
//! or measured on EP ranks), drops, gate mass and accuracy; and the Markdown of a whole
//! benchmark.

use super::engine::{ServeRun, Slo};
use super::percentile::Percentiles;
use serde::Serialize;
use std::fmt::Write;

/// One run: a policy (with its controller and decode capacity) over the request stream.
/// Latencies are on the virtual clock (measured wall time, MoE modelled under EP, or measured
/// on EP ranks: see [`ServeReport::clock`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// `policy` or `policy controller decode-capacity`, for tables and legends.
    pub label: String,
    /// The capacity policy.
    pub policy: String,
    /// The controller (`null` for `none`).
    pub controller: Option<String>,
    /// Whether decode tokens were capped (`null` for `none`).
    pub decode_capacity: Option<bool>,
    /// Requests served (all of them).
    pub completed: usize,
    /// Output tokens generated.
    pub output_tokens: u64,
    /// First arrival to last completion, seconds.
    pub duration_s: f64,
    /// Completed requests per second of `duration_s`.
    pub throughput_req_s: f64,
    /// Output tokens per second of `duration_s`.
    pub output_tok_s: f64,
    /// Time to first token, ms.
    pub ttft_ms: Percentiles,
    /// Time per output token after the first, per request, ms.
    pub tpot_ms: Percentiles,
    /// Gaps between consecutive output tokens, all requests, ms.
    pub itl_ms: Percentiles,
    /// Arrival to last token, ms.
    pub e2e_ms: Percentiles,
    /// Requests meeting both SLOs per second of `duration_s`.
    pub goodput_req_s: f64,
    /// Share of requests meeting both SLOs.
    pub slo_attained: f64,
    /// Per EP rank: busy time over `duration_s` (modelled, or on EP ranks its measured expert
    /// FFN time).
    pub rank_utilisation: Vec<f64>,
    /// Per EP rank: busy seconds (as `rank_utilisation`'s).
    pub rank_busy_s: Vec<f64>,
    /// Per EP rank: measured seconds inside the dispatch and combine all-to-alls, its waits for
    /// the slowest peer included (empty unless measured on EP ranks).
    pub rank_wait_s: Vec<f64>,
    /// Mean of `rank_utilisation` (busy / (R x duration)).
    pub mean_rank_utilisation: f64,
    /// Top-k slots lost to capacity, all layers and tokens.
    pub drop_rate: f64,
    /// Top-k slots of decode tokens lost to capacity.
    pub decode_drop_rate: f64,
    /// Served gate mass over plain top-k gate mass, all layers and tokens.
    pub gate_mass_kept: f64,
    /// Mean effective capacity factor of the capacity passes, `C E / (T k)` (capacity over the
    /// balanced load; at small T it exceeds the controller's gamma, as C is at least 1);
    /// `null` when none ran.
    pub mean_effective_gamma: Option<f64>,
    /// Requests whose output equals the reference.
    pub correct: usize,
    /// `correct / completed`.
    pub accuracy: f64,
    /// Scheduler steps.
    pub steps: usize,
    /// Forward passes.
    pub forwards: usize,
    /// Measured wall time of the passes, s.
    pub measured_wall_s: f64,
    /// Measured MoE time within them, s: all experts in one process, or on EP ranks the
    /// slowest rank's MoE layers (exchanges and waits included).
    pub measured_moe_s: f64,
    /// Modelled EP MoE time that replaced it, s (all-to-alls included); `null` when measured
    /// on EP ranks.
    pub modelled_ep_moe_s: Option<f64>,
    /// Modelled all-to-all time, s; `null` when measured on EP ranks.
    pub modelled_a2a_s: Option<f64>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() {
        a / b
    } else {
        0.0
    }
}

/// Summarises `run`, labelled by `policy`, `controller` and `decode_capacity`, under `slo`.
pub fn summarize(
    run: &ServeRun,
    policy: &str,
    controller: Option<String>,
    decode_capacity: Option<bool>,
    slo: Slo,
) -> RunReport {
    let rq = &run.requests;
    let first = rq.iter().map(|r| r.arrival_s).fold(f64::INFINITY, f64::min);
    let last = rq
        .iter()
        .filter_map(|r| r.token_s.last().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let duration = if last > first { last - first } else { 0.0 };
    let (mut ttft, mut tpot, mut itl, mut e2e) = (vec![], vec![], vec![], vec![]);
    let mut good = 0usize;
    for r in rq {
        let (Some(&t0), Some(&tn)) = (r.token_s.first(), r.token_s.last()) else {
            continue;
        };
        ttft.push(t0 - r.arrival_s);
        e2e.push(tn - r.arrival_s);
        let n = r.token_s.len();
        let per = (n > 1).then(|| (tn - t0) / (n - 1) as f64);
        tpot.extend(per);
        itl.extend(r.token_s.windows(2).map(|w| w[1] - w[0]));
        if (t0 - r.arrival_s) * 1e3 <= slo.ttft_ms && per.is_none_or(|p| p * 1e3 <= slo.tpot_ms) {
            good += 1;
        }
    }
    let t = &run.totals;
    let output_tokens: u64 = rq.iter().map(|r| r.output.len() as u64).sum();
    let correct = rq.iter().filter(|r| r.correct).count();
    let util: Vec<f64> = t.rank_busy_s.iter().map(|&b| ratio(b, duration)).collect();
    let label = match (&controller, decode_capacity) {
        (Some(c), Some(d)) => format!("{policy} {c} decode-cap {}", if d { "on" } else { "off" }),
        _ => policy.to_string(),
    };
    RunReport {
        label,
        policy: policy.to_string(),
        controller,
        decode_capacity,
        completed: rq.len(),
        output_tokens,
        duration_s: duration,
        throughput_req_s: ratio(rq.len() as f64, duration),
        output_tok_s: ratio(output_tokens as f64, duration),
        ttft_ms: Percentiles::of(&ttft).scaled(1e3),
        tpot_ms: Percentiles::of(&tpot).scaled(1e3),
        itl_ms: Percentiles::of(&itl).scaled(1e3),
        e2e_ms: Percentiles::of(&e2e).scaled(1e3),
        goodput_req_s: ratio(good as f64, duration),
        slo_attained: ratio(good as f64, rq.len() as f64),
        mean_rank_utilisation: util.iter().sum::<f64>() / util.len().max(1) as f64,
        rank_utilisation: util,
        rank_busy_s: t.rank_busy_s.clone(),
        rank_wait_s: t.rank_wait_s.clone(),
        drop_rate: ratio(t.dropped as f64, t.slots as f64),
        decode_drop_rate: ratio(t.decode_dropped as f64, t.decode_slots as f64),
        gate_mass_kept: if t.topk_mass > 0.0 {
            t.served_mass / t.topk_mass
        } else {
            1.0
        },
        mean_effective_gamma: (t.capacity_forwards > 0)
            .then(|| t.gamma_sum / t.capacity_forwards as f64),
        correct,
        accuracy: ratio(correct as f64, rq.len() as f64),
        steps: run.steps.len(),
        forwards: t.forwards,
        measured_wall_s: t.wall_s,
        measured_moe_s: t.moe_s,
        modelled_ep_moe_s: (!t.measured_ep).then_some(t.ep_moe_s),
        modelled_a2a_s: (!t.measured_ep).then_some(t.a2a_s),
    }
}

/// The whole benchmark: its setting and one record per run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServeReport {
    /// The model served.
    pub model: String,
    /// Requests per run.
    pub requests: usize,
    /// `poisson`, `gamma:SHAPE` or `trace:FILE`.
    pub arrival: String,
    /// Request rate, req/s (`null` for a trace).
    pub rate: Option<f64>,
    /// Seed of the arrival process.
    pub seed: u64,
    /// Tokens per step.
    pub max_batch_tokens: usize,
    /// Sequences in flight at most.
    pub max_seqs: usize,
    /// EP ranks (modelled, or the ranks the forwards ran on).
    pub ranks: usize,
    /// `modelled` (EP modelled from one process's measured time), `measured` (on real EP
    /// ranks) or `synthetic`.
    pub ep_timing: String,
    /// All-to-all bandwidth of the model, GB/s (`null`: not modelled).
    pub a2a_gbps: Option<f64>,
    /// The latency objectives of goodput.
    pub slo: Slo,
    /// What is measured and what is modelled, in words.
    pub clock: String,
    /// One record per run.
    pub runs: Vec<RunReport>,
}

fn pct(p: &Percentiles) -> String {
    format!("{:.1} / {:.1} / {:.1}", p.p50, p.p90, p.p99)
}

/// The report as Markdown: the setting, what is modelled, and a table per metric group.
pub fn markdown(r: &ServeReport) -> String {
    let mut s = String::new();
    let rate = r.rate.map_or(String::new(), |x| format!(" at {x} req/s"));
    let _ = writeln!(s, "# Serving benchmark ({} EP)\n", r.ep_timing);
    let _ = writeln!(
        s,
        "Model `{}`; {} requests, {} arrivals{rate} (seed {}); continuous batching, {} tokens per step, at most {} sequences; {} EP ranks.\n",
        r.model, r.requests, r.arrival, r.seed, r.max_batch_tokens, r.max_seqs, r.ranks
    );
    let _ = writeln!(s, "Clock: {}\n", r.clock);
    let _ = writeln!(
        s,
        "SLO for goodput: TTFT <= {} ms and TPOT <= {} ms. Latencies in ms as P50 / P90 / P99.\n",
        r.slo.ttft_ms, r.slo.tpot_ms
    );
    let _ = writeln!(
        s,
        "| run | req/s | out tok/s | TTFT | TPOT | ITL | E2E | goodput req/s | SLO met |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for x in &r.runs {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.1} | {} | {} | {} | {} | {:.2} | {:.1}% |",
            x.label,
            x.throughput_req_s,
            x.output_tok_s,
            pct(&x.ttft_ms),
            pct(&x.tpot_ms),
            pct(&x.itl_ms),
            pct(&x.e2e_ms),
            x.goodput_req_s,
            100.0 * x.slo_attained
        );
    }
    let _ = writeln!(
        s,
        "\n| run | accuracy | drop rate | decode drop rate | gate mass kept | mean effective gamma | rank utilisation ({}) | measured s | measured MoE s | modelled EP MoE s |",
        r.ep_timing
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for x in &r.runs {
        let _ = writeln!(
            s,
            "| {} | {:.1}% ({}/{}) | {:.2}% | {:.2}% | {:.4} | {} | {:.1}% | {:.2} | {:.2} | {} |",
            x.label,
            100.0 * x.accuracy,
            x.correct,
            x.completed,
            100.0 * x.drop_rate,
            100.0 * x.decode_drop_rate,
            x.gate_mass_kept,
            x.mean_effective_gamma
                .map_or("-".into(), |g| format!("{g:.3}")),
            100.0 * x.mean_rank_utilisation,
            x.measured_wall_s,
            x.measured_moe_s,
            x.modelled_ep_moe_s
                .map_or("- (measured)".into(), |m| format!("{m:.2}"))
        );
    }
    if r.runs.iter().any(|x| !x.rank_wait_s.is_empty()) {
        let _ = writeln!(
            s,
            "\nMeasured per rank: busy (expert FFN) s / inside the all-to-alls s, utilisation.\n"
        );
        let _ = writeln!(s, "| run | rank: busy s / wait s, utilisation |");
        let _ = writeln!(s, "| --- | --- |");
        for x in &r.runs {
            let cells: Vec<String> = (0..x.rank_busy_s.len())
                .map(|i| {
                    format!(
                        "{i}: {:.2} / {:.2}, {:.1}%",
                        x.rank_busy_s[i],
                        x.rank_wait_s.get(i).copied().unwrap_or(0.0),
                        100.0 * x.rank_utilisation.get(i).copied().unwrap_or(0.0)
                    )
                })
                .collect();
            let _ = writeln!(s, "| {} | {} |", x.label, cells.join("; "));
        }
    }
    s
}
