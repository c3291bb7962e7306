//! `capmoe generate`: greedy generation with a Mixtral model.

use super::model_args::{with_model, ModelArgs, ModelTask};
use super::router_args::RouterArgs;
use super::CliError;
use capmoe::backend::Backend;
use capmoe::model::{GenerateOptions, Model};
use clap::Args;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1.., value_name = "ID,ID,...")]
    pub ids: Vec<u32>,
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
}

/// Greedy generation on a model of any backend.
struct Run<'a>(&'a GenerateArgs);

impl ModelTask for Run<'_> {
    type Output = Vec<u32>;
    fn run<B: Backend>(self, model: Model<B>) -> Result<Vec<u32>, CliError> {
        let args = self.0;
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
        Ok(model.generate(&args.ids, &opts)?)
    }
}

pub fn run(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let generated = with_model(&args.model, Run(args))?;
    if args.json {
        serde_json::to_writer(
            &mut *out,
            &GeneratedJson {
                generated: &generated,
            },
        )?;
    } else {
        let s: Vec<String> = generated.iter().map(u32::to_string).collect();
        write!(out, "{}", s.join(","))?;
    }
    writeln!(out)?;
    Ok(())
}
