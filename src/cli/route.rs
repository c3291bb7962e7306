//! `capmoe route`: route a trace of router logits and report the plan.

use super::router_args::RouterArgs;
use super::{table, CliError};
use capmoe::io::npy;
use capmoe::routing::{route, Logits, RoutingPlan};
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
    #[command(flatten)]
    pub router: RouterArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(args: &RouteArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let cfg = args.router.config(None)?;
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
