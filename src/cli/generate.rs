//! `capmoe generate`: greedy generation with a Mixtral model.

use super::model_args::{with_model, ModelArgs, ModelTask};
use super::router_args::RouterArgs;
use super::CliError;
use capmoe::ep::EpBackend;
use capmoe::model::{GenerateOptions, Model};
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

/// Greedy generation on a model of any backend.
struct Run<'a>(&'a GenerateArgs);

impl ModelTask for Run<'_> {
    type Output = (Vec<u32>, Option<String>);
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<Self::Output, CliError> {
        let args = self.0;
        let vocab = model.config().vocab_size;
        let ids = args
            .model
            .prompt_ids(&args.ids, args.prompt.as_deref(), vocab)?;
        let opts = GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            eos: if args.ignore_eos {
                Vec::new()
            } else {
                model.config().eos_token_ids.clone()
            },
            router: args
                .router
                .config(Some(model.config().num_experts_per_tok))?,
        };
        let new = model.generate(&ids, &opts)?;
        let text = match &args.prompt {
            Some(_) => Some(args.model.tokenizer(vocab)?.decode(&new)?),
            None => None,
        };
        Ok((new, text))
    }
}

pub fn run(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (generated, text) = with_model(&args.model, Run(args))?;
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
