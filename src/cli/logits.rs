//! `capmoe logits`: run a prompt through a Mixtral model and print the
//! logits of every position.

use super::ep_args::{on_rank_model, on_ranks, EpArgs, EpMode, RankTask};
use super::model_args::{with_model, ModelArgs, ModelTask};
use super::record::{write_forwards, RecordArgs};
use super::router_args::RouterArgs;
use super::CliError;
use capmoe::ep::comm::Communicator;
use capmoe::ep::dist::{ep_logits, EpMoe};
use capmoe::ep::EpBackend;
use capmoe::model::{argmax, Model, RouterRecorder};
use capmoe::routing::RouterConfig;
use clap::Args;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (each below the vocabulary size).
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt", conflicts_with = "prompt", num_args = 1.., value_name = "ID,ID,...")]
    pub ids: Vec<u32>,
    /// Prompt text, tokenized with the checkpoint's tokenizer.json (instead of --ids).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub ep: EpArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// Print `{"logits": [[vocab floats] per position]}` instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct LogitsJson<'a> {
    logits: &'a [Vec<f32>],
}

/// The logits of the prompt, the vocabulary size and the router used.
struct Run<'a>(&'a LogitsArgs);

impl ModelTask for Run<'_> {
    type Output = (Vec<Vec<f32>>, usize, RouterConfig, Vec<u32>);
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<Self::Output, CliError> {
        let a = self.0;
        let vocab = model.config().vocab_size;
        let ids = a.model.prompt_ids(&a.ids, a.prompt.as_deref(), vocab)?;
        let router = a.router.config(Some(model.config().num_experts_per_tok))?;
        let rec = RouterRecorder::new();
        let record = a.record.record_router.as_deref();
        let logits = model.logits_with(&ids, &router, record.map(|_| &rec as _))?;
        if let Some(dir) = record {
            write_forwards(dir, &rec.take_forwards())?;
        }
        Ok((logits, vocab, router, ids))
    }
}

/// The logits across EP ranks: `None` on every rank but 0.
fn run_ep(
    a: &LogitsArgs,
    mode: EpMode,
) -> Result<Option<<Run<'_> as ModelTask>::Output>, CliError> {
    let cfg = a.model.config()?;
    let ids = a
        .model
        .prompt_ids(&a.ids, a.prompt.as_deref(), cfg.vocab_size)?;
    let router = a.router.config(Some(cfg.num_experts_per_tok))?;
    struct Logits<'a>(&'a [u32], &'a RouterConfig);
    impl RankTask for Logits<'_> {
        type Output = Vec<Vec<f32>>;
        fn run<B: EpBackend>(
            &self,
            ep: &EpMoe<'_, dyn Communicator + '_>,
            model: &Model<B>,
        ) -> Result<Self::Output, CliError> {
            Ok(ep_logits(ep, model, self.0, self.1)?)
        }
    }
    on_ranks(&a.ep, mode, |comm| {
        let task = Logits(&ids, &router);
        let logits = on_rank_model(&a.ep, &a.model, comm, &router, ids.len().max(1), &task)?;
        Ok((logits, cfg.vocab_size, router.clone(), ids.clone()))
    })
}

pub fn run(args: &LogitsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (logits, vocab, router, ids) = match args.ep.ep {
        Some(_) if args.record.record_router.is_some() => return Err(CliError::Usage(
            "--record-router cannot go with --ep (record in one process: the logits are the same)"
                .into(),
        )),
        Some(mode) => match run_ep(args, mode)? {
            Some(v) => v,
            None => return Ok(()),
        },
        None => with_model(&args.model, Run(args))?,
    };
    if args.json {
        serde_json::to_writer(&mut *out, &LogitsJson { logits: &logits })?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} positions x {} logits (policy {})",
        logits.len(),
        vocab,
        router.policy
    )?;
    for (p, (row, id)) in logits.iter().zip(&ids).enumerate() {
        let best = argmax(row).unwrap_or(0);
        writeln!(
            out,
            "  {p:>4}  id {id:>6}  -> argmax {best:>6} ({:.4})",
            row[best]
        )?;
    }
    Ok(())
}
