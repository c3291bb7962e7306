//! `capmoe route`: route a trace of router logits and report the plan.

use super::{table, CliError};
use crate::io::npy;
use crate::routing::{route, CapacityScope, Logits, Policy, RouterConfig, RoutingPlan};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Machine-readable plan (fixed keys, see `capmoe route --help`).
    Json,
    /// Load bars and summary for people.
    Table,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Router logits: a 2-D [tokens, experts] .npy of float32, float16,
    /// bfloat16 (ml_dtypes `V2`) or float64.
    #[arg(long, value_name = "FILE.npy")]
    pub logits: PathBuf,
    /// Experts per token (k), 1..=experts.
    #[arg(long, value_name = "K")]
    pub top_k: usize,
    /// Routing policy (see the list above).
    #[arg(long, default_value = "none", value_name = "P")]
    pub policy: Policy,
    /// gamma in C = ceil(gamma * T * k / E). Default 1.5 for capacity
    /// policies; not accepted with `none`.
    #[arg(long, value_name = "G")]
    pub capacity_factor: Option<f64>,
    /// Expert-parallel ranks (must divide E). Required by expand:local;
    /// defaults to 1 elsewhere.
    #[arg(long, value_name = "R")]
    pub ranks: Option<usize>,
    /// What one capacity covers: each expert (C), or each rank's experts
    /// together (experts_per_rank * C).
    #[arg(long, default_value = "expert", value_name = "SCOPE")]
    pub capacity_scope: CapacityScope,
    /// Rescale each token's served weights to sum to 1.
    #[arg(long)]
    pub renormalize: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Default gamma for capacity policies: the paper's headline setting.
pub const DEFAULT_GAMMA: f64 = 1.5;

impl RouteArgs {
    /// The router configuration these flags ask for.
    pub fn config(&self) -> Result<RouterConfig, CliError> {
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
            (false, g) => g, // route() rejects a factor given with `none`
        };
        Ok(RouterConfig {
            top_k: self.top_k,
            policy: self.policy,
            capacity_factor: gamma,
            ranks,
            scope: self.capacity_scope,
            renormalize: self.renormalize,
        })
    }
}

pub fn run(args: &RouteArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let cfg = args.config()?;
    let m = npy::read_matrix(&args.logits)?;
    let logits = Logits::new(&m.data, m.rows, m.cols)?;
    let plan = route(&logits, &cfg)?;
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut *out, &PlanJson::new(&plan))?;
            writeln!(out)?;
        }
        Format::Table => table::write(out, &plan, &cfg, &args.logits)?,
    }
    Ok(())
}

#[derive(Serialize)]
struct AssignmentJson {
    expert: u32,
    weight: f32,
}

/// The JSON shape of `capmoe route --format json`; keys are a public contract.
#[derive(Serialize)]
pub struct PlanJson {
    tokens: usize,
    experts: usize,
    top_k: usize,
    capacity: Option<u64>,
    assignments: Vec<Vec<AssignmentJson>>,
    load: Vec<u64>,
    dropped: u64,
    rerouted: u64,
    gate_mass_kept: f64,
}

impl PlanJson {
    pub fn new(plan: &RoutingPlan) -> Self {
        let s = plan.stats();
        Self {
            tokens: plan.tokens(),
            experts: plan.experts(),
            top_k: plan.top_k(),
            capacity: plan.capacity().map(|c| c.per_expert),
            assignments: (0..plan.tokens())
                .map(|t| {
                    plan.assignments(t)
                        .map(|a| AssignmentJson {
                            expert: a.expert,
                            weight: a.weight,
                        })
                        .collect()
                })
                .collect(),
            load: s.load.clone(),
            dropped: s.dropped,
            rerouted: s.rerouted,
            gate_mass_kept: s.gate_mass_kept,
        }
    }
}
