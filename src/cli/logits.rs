//! `capmoe logits`: run a prompt through a Mixtral model and print the
//! logits of every position.

use super::model_args::{with_model, ModelArgs, ModelTask};
use super::router_args::RouterArgs;
use super::CliError;
use capmoe::backend::Backend;
use capmoe::model::{argmax, Model};
use capmoe::routing::RouterConfig;
use clap::Args;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (each below the vocabulary size).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1.., value_name = "ID,ID,...")]
    pub ids: Vec<u32>,
    #[command(flatten)]
    pub router: RouterArgs,
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
    type Output = (Vec<Vec<f32>>, usize, RouterConfig);
    fn run<B: Backend>(self, model: Model<B>) -> Result<Self::Output, CliError> {
        let router = self
            .0
            .router
            .config(Some(model.config().num_experts_per_tok))?;
        let logits = model.logits(&self.0.ids, &router)?;
        Ok((logits, model.config().vocab_size, router))
    }
}

pub fn run(args: &LogitsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (logits, vocab, router) = with_model(&args.model, Run(args))?;
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
    for (p, (row, id)) in logits.iter().zip(&args.ids).enumerate() {
        let best = argmax(row).unwrap_or(0);
        writeln!(
            out,
            "  {p:>4}  id {id:>6}  -> argmax {best:>6} ({:.4})",
            row[best]
        )?;
    }
    Ok(())
}
