//! Flags shared by the model subcommands (`logits`, `generate`): which
//! model, and how its MoE layers route.

use super::route::DEFAULT_GAMMA;
use super::CliError;
use crate::backend::CpuBackend;
use crate::model::{InitOptions, MixtralConfig, Model, BUILTIN_NAMES};
use crate::routing::{CapacityScope, Policy, RouterConfig};
use crate::trace::Skew;
use clap::Args;
use std::path::Path;

/// Largest random model the CLI builds in host memory (f32 weights).
pub const MAX_RANDOM_BYTES: u64 = 16 << 30;

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face Mixtral checkpoint directory (config.json plus
    /// model.safetensors or model.safetensors.index.json; f32, bf16 or f16),
    /// or a built-in shape with seeded random weights: tiny, small,
    /// mixtral-8x7b (too large for random weights on the CPU).
    #[arg(long, value_name = "DIR|NAME")]
    pub model: String,
    /// Seed of the random weights of a built-in model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic router skew, a per-layer logit bias on the router (busiest
    /// expert's load over the mean under plain top-k): uniform (no bias),
    /// mixtral (~2.75x), olmoe (~7x) or a number >= 1. Applies to
    /// checkpoints too.
    #[arg(long, default_value = "uniform", value_name = "SKEW")]
    pub skew: Skew,
}

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Routing policy of every MoE layer (see `capmoe route --help`).
    #[arg(long, default_value = "none", value_name = "P")]
    pub policy: Policy,
    /// gamma in C = ceil(gamma * T * k / E), T = tokens in the batch.
    /// Default 1.5 for capacity policies; not accepted with `none`.
    #[arg(long, value_name = "G")]
    pub capacity_factor: Option<f64>,
    /// Experts per token; defaults to the config's num_experts_per_tok.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Expert-parallel ranks (divides E); required by expand:local.
    #[arg(long, value_name = "R")]
    pub ranks: Option<usize>,
    /// What one capacity covers: each expert, or each rank's experts together.
    #[arg(long, default_value = "expert", value_name = "SCOPE")]
    pub capacity_scope: CapacityScope,
    /// Rescale each token's served weights to sum to 1.
    #[arg(long)]
    pub renormalize: bool,
}

impl ModelArgs {
    /// Loads the checkpoint directory, or builds the named random model.
    pub fn load(&self) -> Result<Model<CpuBackend>, CliError> {
        let path = Path::new(&self.model);
        if path.is_dir() {
            if self.skew != Skew::Uniform {
                let mut m = Model::load(CpuBackend, path)?;
                m.apply_skew(self.skew, self.seed)?;
                return Ok(m);
            }
            return Ok(Model::load(CpuBackend, path)?);
        }
        if !BUILTIN_NAMES.contains(&self.model.as_str()) {
            return Err(CliError::Usage(format!(
                "--model `{}` is neither a checkpoint directory nor a built-in model ({})",
                self.model,
                BUILTIN_NAMES.join(", ")
            )));
        }
        let cfg = MixtralConfig::builtin(&self.model)?;
        let bytes = cfg.param_count() * 4;
        if bytes > MAX_RANDOM_BYTES {
            return Err(CliError::Usage(format!(
                "random f32 weights for `{}` need {:.0} GiB of memory (limit {} GiB); use a smaller built-in or a checkpoint",
                self.model,
                bytes as f64 / (1u64 << 30) as f64,
                MAX_RANDOM_BYTES >> 30
            )));
        }
        let opts = InitOptions::new(self.seed).with_skew(self.skew);
        Ok(Model::random(CpuBackend, cfg, &opts)?)
    }
}

impl RouterArgs {
    /// The router configuration for `model`.
    pub fn config(&self, model: &MixtralConfig) -> Result<RouterConfig, CliError> {
        let ranks = match (self.policy, self.ranks) {
            (Policy::ExpandLocal, None) => {
                return Err(CliError::Usage(
                    "expand:local adds the experts on each token's own EP rank, so it needs --ranks R (R divides the expert count)".into(),
                ))
            }
            (_, r) => r.unwrap_or(1),
        };
        let gamma = match (self.policy.has_capacity(), self.capacity_factor) {
            (true, g) => Some(g.unwrap_or(DEFAULT_GAMMA)),
            (false, g) => g,
        };
        Ok(RouterConfig {
            top_k: self.top_k.unwrap_or(model.num_experts_per_tok),
            policy: self.policy,
            capacity_factor: gamma,
            ranks,
            scope: self.capacity_scope,
            renormalize: self.renormalize,
        })
    }
}
