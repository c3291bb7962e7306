//! `capmoe eval`: exact-answer accuracy of a trained checkpoint under every capacity policy,
//! by the protocol of design.md §8 (prefill, capacity on over each forward's T = B x L tokens).

pub mod args;
mod error;
mod plot;
pub mod protocol;
pub mod report;
mod run;
#[cfg(test)]
mod tests;

pub use args::EvalArgs;
pub use error::EvalError;

use super::model_args::{with_model, ModelArgs, ModelTask};
use super::progress::Bar;
use super::tokenizer::Tok;
use super::CliError;
use args::Format;
use capmoe::ep::EpBackend;
use capmoe::model::{MixtralConfig, Model};
use capmoe::online::{ControllerSpec, CostModel, LoadMonitor, MoeShape};
use capmoe::routing::RouterConfig;
use capmoe::trace::Skew;
use report::EvalReport;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const EVAL_HELP: &str = "Protocol (design.md §8): the examples, in file order, each tokenized as prompt + answer + \"\\n\" and concatenated into one stream; the stream cut into rows of L tokens, each an independent sequence from position 0 (the last partial row dropped); B consecutive rows form one forward, so capacity applies over T = B x L tokens (a final batch of fewer than B rows is dropped). An example is scored when all its tokens lie in one row; it is correct when, at every answer position (each answer token and the closing newline), the argmax of the previous position's logits is that token.\n\n\
Reported per policy and gamma: accuracy (overall, per task), answer-token NLL and perplexity, mean KL(none || policy) at the answer positions, the busiest expert's top-k demand over the mean per layer (the learned skew), dropped and rerouted % of token slots, gate mass kept. `none` always runs first (the KL baseline).\n\n\
Examples:\n  capmoe eval --model bench/models/mixtral-like\n  \
capmoe eval --model bench/models/mixtral-like --policies drop:score,drop:order --capacity-factors 1.0,1.5 --format json\n  \
capmoe eval --model bench/models/fine-grained --data my.jsonl --rows 8 --seq-len 256 --out results/ --limit 500\n";

/// Reads the eval data, `--limit` applied.
pub(crate) fn read_examples(
    path: &Path,
    limit: Option<usize>,
) -> Result<Vec<protocol::Example>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Read {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let mut ex = protocol::parse_examples(&text, &path.display().to_string())?;
    match limit {
        Some(0) => return Err(CliError::Usage("--limit must be at least 1".into())),
        Some(n) => ex.truncate(n),
        None => {}
    }
    Ok(ex)
}

struct Task<'a> {
    args: &'a EvalArgs,
    data: PathBuf,
    examples: Vec<protocol::Example>,
}

impl ModelTask for Task<'_> {
    type Output = EvalReport;
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<EvalReport, CliError> {
        let a = self.args;
        let cfg = model.config();
        if a.seq_len > cfg.max_position_embeddings {
            return Err(CliError::Usage(format!(
                "--seq-len {} exceeds the model's max_position_embeddings = {}",
                a.seq_len, cfg.max_position_embeddings
            )));
        }
        let tok = Tok::load(&a.model, cfg.vocab_size).map_err(EvalError::from)?;
        let stream = protocol::build_stream(&self.examples, |s| tok.encode(s))?;
        let layout = protocol::layout(&stream, a.rows, a.seq_len)?;
        if layout.scored_count() == 0 {
            return Err(EvalError::NothingScored {
                seq_len: a.seq_len,
                examples: self.examples.len(),
            }
            .into());
        }
        let ranks = args::ranks(a, cfg.num_local_experts)?;
        let runs = args::runs(a, cfg.num_experts_per_tok, ranks)?;
        let tasks: Vec<String> = self.examples.iter().map(|e| e.task.clone()).collect();
        let plan = run::Plan {
            stream: &stream,
            layout: &layout,
            tasks: &tasks,
        };
        let bar = Bar::new(((runs.len() + a.controllers.len()) * layout.batches) as u64);
        let mut baseline = Vec::new();
        let mut results = Vec::with_capacity(runs.len());
        for r in &runs {
            let g = r.capacity_factor.map_or(String::new(), |g| format!(" {g}"));
            bar.set_message(format!("{}{g}", r.policy));
            results.push(run::run_one(&model, &plan, r, &mut baseline, None, &bar)?);
        }
        for spec in &a.controllers {
            bar.set_message(spec.to_string());
            let mut c = controlled(a, spec, cfg, ranks)?;
            let base =
                RouterConfig::new(cfg.num_experts_per_tok, a.controller_policy).with_ranks(ranks);
            results.push(run::run_one(
                &model,
                &plan,
                &base,
                &mut baseline,
                Some(&mut c),
                &bar,
            )?);
        }
        bar.finish_and_clear();
        Ok(EvalReport {
            model: a.model.display().to_string(),
            data: self.data.display().to_string(),
            rows: a.rows,
            seq_len: a.seq_len,
            tokens_per_forward: layout.batch_tokens(),
            forwards: layout.batches,
            examples: self.examples.len(),
            scored: layout.scored_count(),
            experts: cfg.num_local_experts,
            top_k: cfg.num_experts_per_tok,
            ranks,
            results,
        })
    }
}

/// A controlled run's state for `spec`: the controller over the model's MoE shape, with the
/// cost model of --cost (rows when absent), and an empty monitor.
fn controlled(
    a: &EvalArgs,
    spec: &ControllerSpec,
    cfg: &MixtralConfig,
    ranks: usize,
) -> Result<run::Controlled, CliError> {
    let usage = |e: capmoe::online::OnlineError| CliError::Usage(e.to_string());
    if !a.controller_policy.has_capacity() {
        return Err(CliError::Usage(format!(
            "--controller-policy {} has no capacity; expected a capacity policy such as drop:score",
            a.controller_policy
        )));
    }
    let layers = cfg.num_hidden_layers;
    let cost = match &a.cost {
        None => CostModel::rows(layers),
        Some(p) => {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str::<CostModel>(&text)
                .map_err(|e| CliError::Usage(format!("--cost {}: {e}", p.display())))?
        }
    };
    let shape = MoeShape {
        layers,
        experts: cfg.num_local_experts,
        top_k: cfg.num_experts_per_tok,
        ranks,
    };
    Ok(run::Controlled {
        spec: spec.to_string(),
        controller: spec
            .build_for(shape, cost, a.controller_policy)
            .map_err(usage)?,
        monitor: LoadMonitor::new(a.window, 0.25).map_err(usage)?,
        ranks,
        gammas: Vec::new(),
    })
}

/// Writes `eval.json` and `accuracy.png` into `dir`, each atomically.
pub fn write_out(dir: &Path, r: &EvalReport) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(r)?;
    capmoe::io::atomic::write_atomic(&dir.join("eval.json"), &json)?;
    let png = dir.join("accuracy.png");
    plot::accuracy(&png, r)
        .map_err(|e| CliError::Usage(format!("cannot draw {}: {e}", png.display())))
}

/// Runs the protocol for every policy and gamma of `args`; returns the report.
pub fn evaluate(args: &EvalArgs) -> Result<EvalReport, CliError> {
    if !args.model.is_dir() {
        return Err(CliError::Usage(format!(
            "--model {} is not a checkpoint directory; expected config.json, model.safetensors and tokenizer.json in it",
            args.model.display()
        )));
    }
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| args.model.join("eval.jsonl"));
    let examples = read_examples(&data, args.limit)?;
    let model_args = ModelArgs {
        model: args.model.display().to_string(),
        seed: 0,
        skew: Skew::Uniform,
        device: args.device,
    };
    with_model(
        &model_args,
        Task {
            args,
            data,
            examples,
        },
    )
}

pub fn run(args: &EvalArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let report = evaluate(args)?;
    match args.format {
        Format::Table => report::write_table(out, &report)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
    }
    if let Some(dir) = &args.out {
        write_out(dir, &report)?;
    }
    Ok(())
}
