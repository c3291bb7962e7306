//! Flags of `capmoe eval`.

use super::super::model_args::ModelDevice;
use super::super::CliError;
use capmoe::routing::{Policy, RouterConfig};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Every capacity policy, the default sweep.
pub const DEFAULT_POLICIES: &str =
    "drop:score,drop:order,drop:reverse-order,drop:random,reroute:next-best,reroute:optimal,expand:local";

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint directory: config.json, model.safetensors (or an index) and tokenizer.json.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Eval data, JSONL of {"task","prompt","answer"} (default: DIR/eval.jsonl).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Rows per forward (B): capacity applies over B * L tokens.
    #[arg(long, default_value_t = 16, value_name = "B")]
    pub rows: usize,
    /// Tokens per row (L), each row a sequence from position 0; at most max_position_embeddings.
    #[arg(long, default_value_t = 128, value_name = "L")]
    pub seq_len: usize,
    /// Capacity policies, comma-separated; `none` runs once in any case (the baseline).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_POLICIES, value_name = "P,P,...")]
    pub policies: Vec<Policy>,
    /// Capacity factors gamma, comma-separated; every capacity policy runs at each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1.0,1.25,1.5,2.0",
        value_name = "G,G,..."
    )]
    pub capacity_factors: Vec<f64>,
    /// EP ranks of expand:local (divides E; default the largest of 8, 4, 2, 1 that divides E).
    #[arg(long, value_name = "R")]
    pub ranks: Option<usize>,
    /// Output on stdout.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also write eval.json and accuracy.png into DIR (created if absent; files written atomically).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Use only the first N examples of the data.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: ModelDevice,
    /// Capacity controllers, comma-separated (fixed:GAMMA, budget:RATIOx, budget:MSms with
    /// --cost): each runs once more under --controller-policy, every layer at the capacity the
    /// controller plans from the load monitor before each forward. Reported as `POLICY [C]` at
    /// its mean gamma, beside the uniform gammas.
    #[arg(long, value_delimiter = ',', value_name = "C,C,...")]
    pub controllers: Vec<capmoe::online::ControllerSpec>,
    /// The capacity policy the controllers route under.
    #[arg(long, default_value = "drop:score", value_name = "P")]
    pub controller_policy: Policy,
    /// Forwards the load monitor keeps per layer.
    #[arg(long, default_value_t = 16, value_name = "W")]
    pub window: usize,
    /// Per-layer cost model (JSON, `capmoe calibrate`) for the controllers; default: rows.
    #[arg(long, value_name = "FILE.json")]
    pub cost: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The ranks of expand:local for `experts` experts.
pub fn ranks(args: &EvalArgs, experts: usize) -> Result<usize, CliError> {
    match args.ranks {
        Some(r) if r == 0 || experts % r != 0 => Err(CliError::Usage(format!(
            "--ranks {r} must divide the model's {experts} experts"
        ))),
        Some(r) => Ok(r),
        None => Ok([8, 4, 2, 1]
            .into_iter()
            .find(|r| experts % r == 0)
            .unwrap_or(1)),
    }
}

/// The runs: `none` first, then each capacity policy at each gamma, duplicates removed.
pub fn runs(args: &EvalArgs, top_k: usize, ranks: usize) -> Result<Vec<RouterConfig>, CliError> {
    if let Some(g) = args
        .capacity_factors
        .iter()
        .find(|g| !capmoe::routing::valid_capacity_factor(**g))
    {
        return Err(CliError::Usage(format!(
            "--capacity-factors: {g:?} is not valid; expected a finite number > 0 and at most {}",
            capmoe::routing::MAX_CAPACITY_FACTOR
        )));
    }
    let mut out = vec![RouterConfig::new(top_k, Policy::None)];
    for &p in args.policies.iter().filter(|p| p.has_capacity()) {
        for &g in &args.capacity_factors {
            let mut cfg = RouterConfig::new(top_k, p).with_capacity_factor(g);
            if p == Policy::ExpandLocal {
                cfg = cfg.with_ranks(ranks);
            }
            if !out.contains(&cfg) {
                out.push(cfg);
            }
        }
    }
    Ok(out)
}
