//! `capmoe generate`: greedy generation with a Mixtral model.

use super::ep_args::{on_rank_model, on_ranks, EpArgs, EpMode, RankTask};
use super::model_args::{with_model, ModelArgs, ModelTask};
use super::record::{write_forwards, RecordArgs};
use super::router_args::RouterArgs;
use super::CliError;
use capmoe::ep::comm::Communicator;
use capmoe::ep::dist::{ep_generate, EpMoe};
use capmoe::ep::EpBackend;
use capmoe::model::{GenerateOptions, MixtralConfig, Model, RouterRecorder};
use clap::Args;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (each below the vocabulary size).
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt", conflicts_with = "prompt", num_args = 1.., value_name = "ID,ID,...")]
    pub ids: Vec<u32>,
    /// Prompt text, tokenized with the checkpoint's tokenizer.json (instead of --ids).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_new_tokens: usize,
    /// Keep going past the config's eos_token_id.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub ep: EpArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// Print `{"generated": [new ids]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct GeneratedJson<'a> {
    generated: &'a [u32],
    /// The decoded new tokens, with --prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// The new ids, and their text with --prompt.
type Generated = (Vec<u32>, Option<String>);

/// Greedy generation on a model of any backend.
struct Run<'a>(&'a GenerateArgs);

impl ModelTask for Run<'_> {
    type Output = Generated;
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<Self::Output, CliError> {
        let args = self.0;
        let vocab = model.config().vocab_size;
        let ids = args
            .model
            .prompt_ids(&args.ids, args.prompt.as_deref(), vocab)?;
        let opts = options(args, model.config())?;
        let new = match &args.record.record_router {
            None => model.generate(&ids, &opts)?,
            Some(dir) => {
                let rec = RouterRecorder::new();
                let mut out = model.generate_batch_with(&[&ids], &opts, Some(&rec))?;
                write_forwards(dir, &rec.take_forwards())?;
                out.pop().unwrap_or_default()
            }
        };
        Ok((new.clone(), decoded(args, vocab, &new)?))
    }
}

fn options(args: &GenerateArgs, cfg: &MixtralConfig) -> Result<GenerateOptions, CliError> {
    Ok(GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        eos: if args.ignore_eos {
            Vec::new()
        } else {
            cfg.eos_token_ids.clone()
        },
        router: args.router.config(Some(cfg.num_experts_per_tok))?,
    })
}

fn decoded(args: &GenerateArgs, vocab: usize, new: &[u32]) -> Result<Option<String>, CliError> {
    match &args.prompt {
        Some(_) => Ok(Some(args.model.tokenizer(vocab)?.decode(new)?)),
        None => Ok(None),
    }
}

/// Generation across EP ranks: `None` on every rank but 0.
fn run_ep(args: &GenerateArgs, mode: EpMode) -> Result<Option<Generated>, CliError> {
    let cfg = args.model.config()?;
    let ids = args
        .model
        .prompt_ids(&args.ids, args.prompt.as_deref(), cfg.vocab_size)?;
    let opts = options(args, &cfg)?;
    cfg.check_generation(ids.len(), opts.max_new_tokens)?;
    struct Gen<'a>(&'a [u32], &'a GenerateOptions);
    impl RankTask for Gen<'_> {
        type Output = Vec<Vec<u32>>;
        fn run<B: EpBackend>(
            &self,
            ep: &EpMoe<'_, dyn Communicator + '_>,
            model: &Model<B>,
        ) -> Result<Self::Output, CliError> {
            Ok(ep_generate(ep, model, &[self.0], self.1)?)
        }
    }
    let out = on_ranks(&args.ep, mode, |comm| {
        on_rank_model(
            &args.ep,
            &args.model,
            comm,
            &opts.router,
            ids.len().max(1),
            &Gen(&ids, &opts),
        )
    })?;
    match out {
        Some(mut v) => {
            let new = v.pop().unwrap_or_default();
            let text = decoded(args, cfg.vocab_size, &new)?;
            Ok(Some((new, text)))
        }
        None => Ok(None),
    }
}

pub fn run(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (generated, text) =
        match args.ep.ep {
            Some(_) if args.record.record_router.is_some() => return Err(CliError::Usage(
                "--record-router cannot go with --ep (record in one process: the ids are the same)"
                    .into(),
            )),
            Some(mode) => match run_ep(args, mode)? {
                Some(v) => v,
                None => return Ok(()),
            },
            None => with_model(&args.model, Run(args))?,
        };
    if args.json {
        serde_json::to_writer(
            &mut *out,
            &GeneratedJson {
                generated: &generated,
                text: text.as_deref(),
            },
        )?;
    } else {
        let s: Vec<String> = generated.iter().map(u32::to_string).collect();
        write!(out, "{}", s.join(","))?;
        if let Some(t) = &text {
            write!(out, "\n{t:?}")?;
        }
    }
    writeln!(out)?;
    Ok(())
}
