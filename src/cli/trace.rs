//! `capmoe trace`: write a synthetic skewed router trace as .npy.

use super::CliError;
use capmoe::io::npy;
use capmoe::trace::{synthetic_logits, Skew};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Tokens in the batch (rows).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Experts (columns).
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// The top-k the skew is calibrated for.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Busiest expert's load over the mean under plain top-k: uniform,
    /// mixtral (~2.75x), olmoe (~7x, needs E/k > 7) or a number >= 1.
    #[arg(long, default_value = "mixtral")]
    pub skew: Skew,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output .npy (float32, [tokens, experts]).
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,
}

pub fn run(args: &TraceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let l = synthetic_logits(args.tokens, args.experts, args.top_k, args.skew, args.seed)?;
    capmoe::io::atomic::write_atomic(&args.out, &npy::to_bytes(&l, args.tokens, args.experts))
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", args.out.display())))?;
    writeln!(
        out,
        "wrote {} ({} x {}, skew {})",
        args.out.display(),
        args.tokens,
        args.experts,
        args.skew
    )?;
    Ok(())
}
