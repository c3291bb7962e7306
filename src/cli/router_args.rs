//! Routing flags shared by `route`, `logits` and `generate`.

use super::CliError;
use capmoe::routing::{CapacityScope, Policy, RouterConfig};
use clap::Args;

/// Default gamma for capacity policies: the paper's headline setting.
pub const DEFAULT_GAMMA: f64 = 1.5;

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Routing policy (see the list in `capmoe route --help`).
    #[arg(long, default_value = "none", value_name = "P")]
    pub policy: Policy,
    /// gamma in C = ceil(gamma * T * k / E), T = tokens in the batch.
    /// Default 1.5 for capacity policies; not accepted with `none`.
    #[arg(long, value_name = "G")]
    pub capacity_factor: Option<f64>,
    /// Experts per token (k), 1..=E; model subcommands default to the
    /// config's num_experts_per_tok.
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

impl RouterArgs {
    /// The router configuration; `default_top_k` applies when `--top-k` is
    /// absent (a model's num_experts_per_tok), else `--top-k` is required.
    pub fn config(&self, default_top_k: Option<usize>) -> Result<RouterConfig, CliError> {
        let Some(top_k) = self.top_k.or(default_top_k) else {
            return Err(CliError::Usage(
                "--top-k K is required: the number of experts each token picks".into(),
            ));
        };
        // A flag that would change nothing is refused, as `--capacity-factor` with `none` is.
        if self.capacity_scope == CapacityScope::Rank && !self.policy.has_capacity() {
            return Err(CliError::Usage(format!(
                "--capacity-scope rank shares capacity among a rank's experts, but policy `{}` has no capacity: drop the flag or pick a capacity policy",
                self.policy
            )));
        }
        if let Some(r) = self.ranks {
            if self.policy != Policy::ExpandLocal && self.capacity_scope != CapacityScope::Rank {
                return Err(CliError::Usage(format!(
                    "--ranks {r} changes nothing here: routing uses ranks only for --capacity-scope rank and expand:local"
                )));
            }
        }
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
            top_k,
            policy: self.policy,
            capacity_factor: gamma,
            ranks,
            scope: self.capacity_scope,
            renormalize: self.renormalize,
        })
    }
}
