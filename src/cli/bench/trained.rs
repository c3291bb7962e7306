//! The main job on a trained checkpoint: by default the committed `bench/models/mixtral-like`,
//! with its router as trained, fed its own held-out text, and scored by `capmoe eval` under
//! every policy and gamma next to the EP timing. Random weights cannot say what capacity costs
//! in accuracy; a trained model can.

use super::*;
use crate::cli::eval::{self, protocol, report::EvalReport, EvalArgs};
use crate::cli::model_args::ModelDevice;
use crate::cli::tokenizer::Tok;
use crate::cli::CliError;
use capmoe::ep::BenchReport;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The checkpoint `capmoe bench` runs when neither --model nor --config is given.
pub const DEFAULT_MODEL: &str = "bench/models/mixtral-like";
/// Sequences x tokens of a checkpoint's batch when it ships eval data: the
/// eval protocol's forward, so that timing and accuracy see the same T (2048).
pub(super) const EVAL_BATCH: usize = 16;
pub(super) const EVAL_SEQ_LEN: usize = 128;
/// Accuracy loss (points) the front tolerates, as the paper's "no loss" reads.
const FRONT_POINTS: f64 = 1.0;

/// The checkpoint the run uses: --model, or the default one when no shape is named on the CPU.
pub(super) fn checkpoint(args: &BenchArgs) -> Result<Option<PathBuf>, CliError> {
    if let Some(dir) = &args.model {
        return Ok(Some(dir.clone()));
    }
    if args.device != Device::Cpu || args.config.is_some() || args.layers.is_some() {
        return Ok(None);
    }
    // The working directory first (a checkout), then the source tree the binary was built from.
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    for dir in [PathBuf::from(DEFAULT_MODEL), built] {
        if dir.join("config.json").is_file() {
            return Ok(Some(dir));
        }
    }
    Err(CliError::Usage(format!(
        "the default model {DEFAULT_MODEL} is not in the working directory or in the source tree \
         this binary was built from; name one with --model DIR, or run random weights with --config small"
    )))
}

/// Whether `dir` ships what the accuracy eval needs: eval.jsonl and tokenizer.json.
pub(super) fn has_eval_data(dir: &Path) -> bool {
    dir.join("eval.jsonl").is_file() && dir.join("tokenizer.json").is_file()
}

/// `batch` rows of `seq_len` ids cut from the checkpoint's eval stream, as `capmoe eval` cuts
/// it (examples concatenated in file order).
pub(super) fn eval_prompts(
    dir: &Path,
    batch: usize,
    seq_len: usize,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, CliError> {
    let data = dir.join("eval.jsonl");
    let examples = eval::read_examples(&data, None)?;
    let tok = Tok::load(dir, vocab).map_err(eval::EvalError::from)?;
    let stream = protocol::build_stream(&examples, |s| tok.encode(s))?;
    let need = batch
        .checked_mul(seq_len)
        .filter(|&n| n <= stream.ids.len())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{} holds {} tokens; --batch {batch} x --seq-len {seq_len} needs more",
                data.display(),
                stream.ids.len()
            ))
        })?;
    Ok(stream.ids[..need]
        .chunks(seq_len)
        .map(<[u32]>::to_vec)
        .collect())
}

/// One policy at one gamma: accuracy against `none` beside the EP speedup.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityRow {
    pub policy: String,
    pub gamma: Option<f64>,
    pub accuracy: f64,
    /// `100 * (accuracy - accuracy(none))`.
    pub delta_points: f64,
    /// The benchmark's modelled EP prefill speedup over `none` (absent if it did not run).
    pub speedup_e2e: Option<f64>,
    pub speedup_moe: Option<f64>,
    /// Busiest rank's rows under `none` over under this case, summed over layers: the
    /// speedup if expert time followed rows exactly (no timing noise).
    pub ideal_speedup: Option<f64>,
    pub gate_mass_kept: f64,
}

/// `fidelity.json`: accuracy per case and the accuracy-speedup front.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityReport {
    pub model: String,
    pub data: String,
    pub scored: usize,
    pub tokens_per_forward: usize,
    pub accuracy_none: f64,
    /// Tolerated loss, accuracy points.
    pub front_points: f64,
    pub rows: Vec<FidelityRow>,
    /// Per policy, its smallest gamma within `front_points` of `none` (policies that lose
    /// more at every gamma are absent).
    pub front: Vec<FidelityRow>,
    /// The front's row of largest EP speedup.
    pub best: Option<FidelityRow>,
    /// Each controller against uniform gamma under the same policy.
    pub controllers: Vec<ControllerVsUniform>,
}

/// A controller's row against the uniform-gamma row of the same policy with the largest EP
/// speedup among those at least as accurate.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerVsUniform {
    pub controller: FidelityRow,
    /// `None` when no uniform gamma is as accurate.
    pub uniform: Option<FidelityRow>,
    /// `controller.speedup_e2e / uniform.speedup_e2e`.
    pub speedup_ratio: Option<f64>,
}

/// For each controller row, the best uniform row of its policy at no less accuracy.
fn against_uniform(rows: &[FidelityRow], ev: &EvalReport) -> Vec<ControllerVsUniform> {
    let controlled = |p: &str| {
        ev.results
            .iter()
            .any(|r| r.policy == p && r.controller.is_some())
    };
    rows.iter()
        .filter(|c| controlled(&c.policy))
        .map(|c| {
            let base = c.policy.split(" [").next().unwrap_or("");
            let uniform = rows
                .iter()
                .filter(|u| u.policy == base && u.accuracy >= c.accuracy)
                .filter(|u| u.speedup_e2e.is_some())
                .max_by(|a, b| {
                    a.speedup_e2e
                        .unwrap_or(0.0)
                        .total_cmp(&b.speedup_e2e.unwrap_or(0.0))
                })
                .cloned();
            let speedup_ratio = match (c.speedup_e2e, uniform.as_ref().and_then(|u| u.speedup_e2e))
            {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            ControllerVsUniform {
                controller: c.clone(),
                uniform,
                speedup_ratio,
            }
        })
        .collect()
}

pub(super) fn fidelity_report(rep: &BenchReport, ev: &EvalReport) -> FidelityReport {
    let none = ev
        .results
        .iter()
        .find(|r| r.gamma.is_none())
        .map_or(f64::NAN, |r| r.accuracy);
    let rows: Vec<FidelityRow> = ev
        .results
        .iter()
        .filter(|r| r.gamma.is_some())
        .map(|r| {
            // A controller's case is per-layer: found by its label (its gamma is a mean).
            let case = match r.controller {
                None => rep.case(&r.policy, r.gamma),
                Some(_) => rep.cases.iter().find(|c| c.policy == r.policy),
            };
            FidelityRow {
                policy: r.policy.clone(),
                gamma: r.gamma,
                accuracy: r.accuracy,
                delta_points: 100.0 * (r.accuracy - none),
                speedup_e2e: case.map(|c| c.summary.speedup_e2e),
                speedup_moe: case.map(|c| c.summary.speedup_moe),
                ideal_speedup: case.map(|c| c.summary.ideal_speedup),
                gate_mass_kept: r.gate_mass_kept,
            }
        })
        .collect();
    let mut front: Vec<FidelityRow> = Vec::new();
    for r in &rows {
        if r.delta_points < -FRONT_POINTS {
            continue;
        }
        match front.iter_mut().find(|f| f.policy == r.policy) {
            Some(f) if f.gamma > r.gamma => *f = r.clone(),
            Some(_) => {}
            None => front.push(r.clone()),
        }
    }
    let best = front
        .iter()
        .filter(|r| r.speedup_e2e.is_some())
        .max_by(|a, b| {
            a.speedup_e2e
                .unwrap_or(0.0)
                .total_cmp(&b.speedup_e2e.unwrap_or(0.0))
        })
        .cloned();
    FidelityReport {
        model: ev.model.clone(),
        data: ev.data.clone(),
        scored: ev.scored,
        tokens_per_forward: ev.tokens_per_forward,
        accuracy_none: none,
        front_points: FRONT_POINTS,
        controllers: against_uniform(&rows, ev),
        rows,
        front,
        best,
    }
}

/// The eval that goes with the benchmark of a checkpoint with eval data (`None`: no
/// checkpoint, no eval data, or --no-eval): the same policies, gammas, T and EP size, and the
/// controllers of --controllers under drop:score.
pub(super) fn eval_args(
    args: &BenchArgs,
    rows: usize,
    seq_len: usize,
    ranks: usize,
) -> Result<Option<EvalArgs>, CliError> {
    let Some(dir) = checkpoint(args)? else {
        return Ok(None);
    };
    if args.no_eval || !has_eval_data(&dir) {
        return Ok(None);
    }
    Ok(Some(EvalArgs {
        model: dir,
        data: None,
        rows,
        seq_len,
        policies: args.policies.clone(),
        capacity_factors: args.capacity_factors.clone(),
        ranks: Some(ranks),
        format: eval::args::Format::Table,
        out: None,
        limit: args.eval_limit,
        device: ModelDevice::Cpu,
        controllers: args.controllers.clone(),
        controller_policy: CONTROLLER_POLICY,
        window: 16,
        cost: None,
    }))
}

/// The policy the controllers of `capmoe bench --controllers` cap with.
const CONTROLLER_POLICY: capmoe::routing::Policy =
    capmoe::routing::Policy::Drop(capmoe::routing::DropRank::Score);

/// The benchmark's per-layer cases of the eval's controlled runs: each layer at the mean gamma
/// the controller gave it over the eval's forwards, labelled as the eval row.
pub(super) fn controller_cases(ev: &EvalReport) -> Vec<capmoe::ep::LayerCase> {
    ev.results
        .iter()
        .filter(|r| r.controller.is_some() && !r.layer_gammas.is_empty())
        .map(|r| capmoe::ep::LayerCase {
            label: r.policy.clone(),
            policy: CONTROLLER_POLICY,
            gammas: r.layer_gammas.clone(),
        })
        .collect()
}

/// After the benchmark of a checkpoint with eval data: `capmoe eval` with the same policies,
/// gammas, T and EP size (unless `done` holds it already, run before the benchmark for the
/// controllers' per-layer gammas); its table and the front on `out` (unless --json),
/// eval.json, accuracy.png and fidelity.json under --out.
pub(super) fn fidelity(
    args: &BenchArgs,
    rep: &BenchReport,
    done: Option<EvalReport>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let ev = match done {
        Some(ev) => ev,
        None => match eval_args(args, rep.setup.batch, rep.setup.seq_len, rep.setup.ranks)? {
            Some(eargs) => eval::evaluate(&eargs)?,
            None => return Ok(()),
        },
    };
    let fid = fidelity_report(rep, &ev);
    let out_dir = args.out.clone().unwrap_or_else(|| CPU_OUT.into());
    eval::write_out(&out_dir, &ev)?;
    let path = out_dir.join("fidelity.json");
    let text = serde_json::to_string_pretty(&fid)? + "\n";
    capmoe::io::atomic::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))?;
    if !args.json {
        writeln!(out)?;
        writeln!(
            out,
            "Accuracy on held-out examples (capmoe eval, same T, policies and EP size as above):"
        )?;
        eval::report::write_table(out, &ev)?;
        write_front(out, &fid)?;
    }
    Ok(())
}

fn write_front(out: &mut dyn Write, f: &FidelityReport) -> std::io::Result<()> {
    writeln!(
        out,
        "\nAccuracy-speedup front: per policy, the smallest gamma within {} point of none ({:.3}):",
        f.front_points, f.accuracy_none
    )?;
    writeln!(
        out,
        "{:<26} {:>5} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "policy", "gamma", "acc", "d pts", "EP e2e", "EP MoE", "ideal"
    )?;
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
    for r in &f.front {
        writeln!(
            out,
            "{:<26} {:>5} {:>7.3} {:>+8.1} {:>8} {:>8} {:>8}",
            r.policy,
            r.gamma.map_or("-".into(), gamma_text),
            r.accuracy,
            r.delta_points,
            x(r.speedup_e2e),
            x(r.speedup_moe),
            x(r.ideal_speedup)
        )?;
    }
    let missing: Vec<&str> = {
        let mut v: Vec<&str> = f
            .rows
            .iter()
            .map(|r| r.policy.as_str())
            .filter(|p| !f.front.iter().any(|r| r.policy == *p))
            .collect();
        v.dedup();
        v
    };
    writeln!(
        out,
        "EP e2e / MoE: measured speedups of the modelled EP prefill / MoE layers (above); ideal: busiest rank's rows, none over policy"
    )?;
    if !missing.is_empty() {
        writeln!(
            out,
            "lose more than {} point at every gamma: {}",
            f.front_points,
            missing.join(", ")
        )?;
    }
    for c in &f.controllers {
        let r = &c.controller;
        match &c.uniform {
            Some(u) => writeln!(
                out,
                "{}: {} e2e at accuracy {:.3} (mean gamma {}); uniform {} at gamma {} (accuracy {:.3}): {}, so {} of it",
                r.policy,
                x(r.speedup_e2e),
                r.accuracy,
                r.gamma.map_or("-".into(), gamma_text),
                u.policy,
                u.gamma.map_or("-".into(), gamma_text),
                u.accuracy,
                x(u.speedup_e2e),
                x(c.speedup_ratio)
            )?,
            None => writeln!(
                out,
                "{}: {} e2e at accuracy {:.3}; no uniform gamma is as accurate",
                r.policy,
                x(r.speedup_e2e),
                r.accuracy
            )?,
        }
    }
    if let Some(b) = &f.best {
        writeln!(
            out,
            "most EP speedup within {} point: {} at gamma {} ({})",
            f.front_points,
            b.policy,
            b.gamma.map_or("-".into(), gamma_text),
            x(b.speedup_e2e)
        )?;
    }
    Ok(())
}

/// A gamma as given (`1.25`), or to two decimals when it is a controller's mean.
fn gamma_text(g: f64) -> String {
    if (g * 100.0).round() == g * 100.0 {
        g.to_string()
    } else {
        format!("{g:.2}")
    }
}
