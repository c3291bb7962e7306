//! The eval report: its JSON shape and the `--format table` view.

use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// What one run (a policy at a gamma) measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub policy: String,
    /// The capacity controller of a controlled run (`gamma` is then its mean over layers and
    /// forwards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// A controlled run's gamma per layer, its mean over the forwards (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layer_gammas: Vec<f64>,
    /// Capacity factor; `null` for `none`.
    pub gamma: Option<f64>,
    /// Correct over scored examples.
    pub accuracy: f64,
    pub correct: usize,
    pub scored: usize,
    pub per_task: BTreeMap<String, f64>,
    /// Per task, `[correct, scored]`.
    pub per_task_counts: BTreeMap<String, [usize; 2]>,
    /// Mean `-log p` of the answer tokens (closing newline included), nats.
    pub answer_nll: f64,
    pub answer_ppl: f64,
    /// Mean `KL(none || policy)` over the answer positions, nats.
    pub kl_vs_none: f64,
    /// Per layer: busiest expert's top-k demand over the mean, over the whole run.
    pub load_max_over_mean: Vec<f64>,
    /// Per layer: the same ratio per forward (what one capacity plan sees), averaged.
    pub load_max_over_mean_per_forward: Vec<f64>,
    /// Per layer: served load (after the policy) max over mean per forward, averaged.
    pub served_max_over_mean_per_forward: Vec<f64>,
    /// Token slots lost, % of tokens x k (all layers).
    pub dropped_pct: f64,
    /// Served assignments outside the token's top-k, % of tokens x k.
    pub rerouted_pct: f64,
    /// Served gate mass over top-k gate mass.
    pub gate_mass_kept: f64,
    /// Tokens served by no expert (residual only), % of tokens (all layers).
    pub tokens_without_expert_pct: f64,
}

/// The whole report (`--format json`, `eval.json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub rows: usize,
    pub seq_len: usize,
    /// T = rows x seq_len: the tokens capacity applies over.
    pub tokens_per_forward: usize,
    pub forwards: usize,
    pub examples: usize,
    pub scored: usize,
    pub experts: usize,
    pub top_k: usize,
    /// EP ranks of expand:local.
    pub ranks: usize,
    pub results: Vec<EvalResult>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, &x| a.max(x))
}

/// A fixed-width table, one line per run, then the per-task accuracies.
pub fn write_table(out: &mut dyn Write, r: &EvalReport) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} examples, {} scored, {} forwards of {} rows x {} tokens (T = {}), E = {}, k = {}",
        r.data,
        r.examples,
        r.scored,
        r.forwards,
        r.rows,
        r.seq_len,
        r.tokens_per_forward,
        r.experts,
        r.top_k
    )?;
    writeln!(
        out,
        "{:<20} {:>5} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6}",
        "policy",
        "gamma",
        "acc",
        "ans NLL",
        "ans ppl",
        "KL",
        "skew max",
        "skew avg",
        "served",
        "drop %",
        "rerte %",
        "mass"
    )?;
    for x in &r.results {
        let g = x.gamma.map_or("-".to_string(), |g| format!("{g:.2}"));
        writeln!(
            out,
            "{:<20} {:>5} {:>7.4} {:>8.4} {:>8.3} {:>9.5} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>6.3}",
            x.policy,
            g,
            x.accuracy,
            x.answer_nll,
            x.answer_ppl,
            x.kl_vs_none,
            max(&x.load_max_over_mean_per_forward),
            mean(&x.load_max_over_mean_per_forward),
            max(&x.served_max_over_mean_per_forward),
            x.dropped_pct,
            x.rerouted_pct,
            x.gate_mass_kept
        )?;
    }
    writeln!(
        out,
        "skew: busiest expert's top-k demand over the mean, per forward, the largest and the mean over layers;\n\
         served: the same for the load served after the policy (largest layer); KL: mean KL(none || policy) at answer\n\
         positions (nats); drop / rerte: token slots dropped / served outside the top-k, % of tokens x k; mass: gate mass kept\n"
    )?;
    let tasks: Vec<&String> = r
        .results
        .first()
        .map(|x| x.per_task.keys().collect())
        .unwrap_or_default();
    write!(out, "{:<20} {:>5}", "accuracy per task", "gamma")?;
    for t in &tasks {
        write!(out, " {:>9}", t)?;
    }
    writeln!(out)?;
    for x in &r.results {
        let g = x.gamma.map_or("-".to_string(), |g| format!("{g:.2}"));
        write!(out, "{:<20} {:>5}", x.policy, g)?;
        for t in &tasks {
            write!(
                out,
                " {:>9.4}",
                x.per_task.get(*t).copied().unwrap_or(f64::NAN)
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
