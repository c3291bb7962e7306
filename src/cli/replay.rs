//! `capmoe replay`: route recorded (or synthetic) forwards in name order with the load monitor
//! and a capacity controller in the loop, and report what each forward's capacities cost and
//! kept: the offline projection of online capacity onto router traces.

use super::CliError;
use capmoe::io::npy;
use capmoe::online::{
    gamma_for_capacity, CapacityPlan, ControllerSpec, CostModel, LayerObservation, LoadMonitor,
    MoeShape,
};
use capmoe::routing::{route, Logits, Placement, Policy, RouterConfig};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON document (keys in `capmoe replay --help`).
    Json,
    /// A line per forward, for people.
    Table,
}

pub const REPLAY_HELP: &str = "Each file in --traces is one forward's router logits, a float .npy of shape [layers, tokens, experts] (`capmoe trace --forwards` writes synthetic ones). Files are routed in name order. Before each forward the controller picks every layer's capacity from what the monitor has seen so far; the forward is routed under --policy at those capacities, and then the monitor records it.\n\n\
Controllers:\n  fixed:GAMMA      every layer at C = ceil(GAMMA T k / E) (today's behaviour)\n  budget:RATIOx    the forward's MoE cost at most RATIO x the balanced cost (every layer at gamma 1)\n  budget:MSms      at most MS milliseconds (needs --cost with a calibrated model)\n\n\
A layer's cost is a + b x rows of its busiest rank (--cost; without it a = 0, b = 1: rows). The budget is planned against each capacity's row bound, so it holds for the actual rows too.\n\n\
JSON keys: controller, policy, top_k, ranks, unit, forwards (per forward: forward, file, tokens, budget (null for fixed), predicted_cost, actual_cost, gate_mass_kept, layers (per layer: layer, capacity, predicted_dropped, actual_dropped (shares of top-k slots), busiest_rank_rows, rows_bound, gate_mass_kept)), summary (forwards, over_budget, mean_gate_mass_kept).\n\n\
Example:\n  capmoe trace --forwards 40 --layers 4 --tokens 512 --experts 64 --top-k 8 --skew olmoe --shift-at 20 --out /tmp/fw\n  capmoe replay --traces /tmp/fw --top-k 8 --ranks 8 --controller budget:1.2x --format table\n";

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Folder of forwards: float .npy files of [layers, tokens, experts], routed in name order.
    #[arg(long, value_name = "DIR")]
    pub traces: PathBuf,
    /// Experts per token (k).
    #[arg(long, value_name = "K")]
    pub top_k: usize,
    /// EP ranks (divides the experts): the busiest rank's rows are the layer's cost.
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub ranks: usize,
    /// fixed:GAMMA, budget:RATIOx or budget:MSms.
    #[arg(long, value_name = "C")]
    pub controller: ControllerSpec,
    /// The capacity policy routed at the controller's capacities.
    #[arg(long, default_value = "drop:score", value_name = "P")]
    pub policy: Policy,
    /// Forwards the monitor keeps per layer.
    #[arg(long, default_value_t = 16, value_name = "W")]
    pub window: usize,
    /// Weight of the newest forward in the demand EMA, in (0, 1].
    #[arg(long, default_value_t = 0.25, value_name = "A")]
    pub ema: f64,
    /// Per-layer cost model (JSON, as `capmoe calibrate` writes it); default: rows.
    #[arg(long, value_name = "FILE.json")]
    pub cost: Option<PathBuf>,
    /// Write the load monitor's view: one JSON line per forward and layer to FILE (balancedness,
    /// imbalance, demand EMA, drops, rows per rank over the window), and the last forward's
    /// Prometheus text exposition to FILE.prom. Both written atomically at the end.
    #[arg(long, value_name = "FILE")]
    pub metrics_out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Serialize)]
struct LayerRow {
    layer: usize,
    capacity: u64,
    predicted_dropped: f64,
    actual_dropped: f64,
    busiest_rank_rows: u64,
    rows_bound: u64,
    gate_mass_kept: f64,
}

#[derive(Serialize)]
struct ForwardRow {
    forward: usize,
    file: String,
    tokens: usize,
    budget: Option<f64>,
    predicted_cost: f64,
    actual_cost: f64,
    gate_mass_kept: f64,
    layers: Vec<LayerRow>,
}

#[derive(Serialize)]
struct Summary {
    forwards: usize,
    over_budget: usize,
    mean_gate_mass_kept: f64,
}

#[derive(Serialize)]
struct Report {
    controller: String,
    policy: String,
    top_k: usize,
    ranks: usize,
    unit: String,
    forwards: Vec<ForwardRow>,
    summary: Summary,
}

fn trace_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("cannot read --traces {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::Usage(format!(
            "--traces {} holds no .npy files: an empty trace has nothing to replay",
            dir.display()
        )));
    }
    if files.len() > super::trace::MAX_FORWARDS {
        return Err(CliError::Usage(format!(
            "--traces holds {} files; expected at most {}",
            files.len(),
            super::trace::MAX_FORWARDS
        )));
    }
    Ok(files)
}

fn load_cost(path: &Option<PathBuf>, layers: usize) -> Result<CostModel, CliError> {
    let Some(p) = path else {
        return Ok(CostModel::rows(layers));
    };
    let text = std::fs::read_to_string(p)
        .map_err(|e| CliError::Usage(format!("cannot read --cost {}: {e}", p.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--cost {} is not a cost model: {e}", p.display())))
}

pub fn run(args: &ReplayArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if !args.policy.has_capacity() {
        return Err(CliError::Usage(
            "--policy none has no capacity for a controller to set; pick a capacity policy".into(),
        ));
    }
    let files = trace_files(&args.traces)?;
    let mut monitor = LoadMonitor::new(args.window, args.ema).map_err(online)?;
    let mut metrics = String::new();
    let mut shape: Option<(usize, usize)> = None; // (layers, experts) of the first file
    let mut controller = None;
    let mut unit = String::new();
    let mut rows = Vec::with_capacity(files.len());
    for (f, path) in files.iter().enumerate() {
        let (layers, m) = npy::read_layers(path)?;
        let tokens = m.rows.checked_div(layers).unwrap_or(0);
        match shape {
            None => shape = Some((layers, m.cols)),
            Some(s) if s != (layers, m.cols) => {
                return Err(CliError::Usage(format!(
                    "{} has {layers} layers x {} experts, but the first forward has {} x {}: trace files must agree",
                    path.display(),
                    m.cols,
                    s.0,
                    s.1
                )))
            }
            Some(_) => {}
        }
        if tokens == 0 {
            return Err(CliError::Usage(format!(
                "{} holds no tokens",
                path.display()
            )));
        }
        let ms = MoeShape {
            layers,
            experts: m.cols,
            top_k: args.top_k,
            ranks: args.ranks,
        };
        if controller.is_none() {
            let cost = load_cost(&args.cost, layers)?;
            unit = cost.unit.clone();
            controller = Some((
                args.controller
                    .build_for(ms, cost.clone(), args.policy)
                    .map_err(online)?,
                cost,
            ));
        }
        let Some((ctl, cost)) = controller.as_mut() else {
            unreachable!("set above")
        };
        let plan: CapacityPlan = ctl.plan(tokens, &monitor).map_err(online)?;
        let placement = Placement::new(args.ranks, m.cols, tokens)?;
        let mut plans = Vec::with_capacity(layers);
        let mut layer_rows = Vec::with_capacity(layers);
        let mut actual_cost = 0.0;
        for l in 0..layers {
            let x = &m.data[l * tokens * m.cols..(l + 1) * tokens * m.cols];
            let gamma = gamma_for_capacity(plan.capacity[l], tokens, args.top_k, m.cols)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "layer {l}: no gamma gives capacity {}",
                        plan.capacity[l]
                    ))
                })?;
            let mut cfg = RouterConfig::new(args.top_k, args.policy);
            cfg.capacity_factor = Some(gamma);
            cfg.ranks = args.ranks;
            let p = route(&Logits::new(x, tokens, m.cols)?, &cfg)?;
            let o = LayerObservation::from_plan(&p, &placement);
            let busiest = o.rank_rows.iter().copied().max().unwrap_or(0);
            actual_cost += cost.cost(l, busiest);
            layer_rows.push(LayerRow {
                layer: l,
                capacity: plan.capacity[l],
                predicted_dropped: plan.predicted_dropped[l],
                actual_dropped: p.stats().dropped as f64 / (tokens * args.top_k) as f64,
                busiest_rank_rows: busiest,
                rows_bound: plan.rows_bound[l],
                gate_mass_kept: p.stats().gate_mass_kept,
            });
            plans.push(p);
        }
        monitor
            .observe_forward(&plans, &placement)
            .map_err(online)?;
        if args.metrics_out.is_some() {
            metrics.push_str(&capmoe::online::json_lines(f as u64, &monitor.snapshot()));
        }
        rows.push(ForwardRow {
            forward: f,
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            tokens,
            budget: plan.budget,
            predicted_cost: plan.cost,
            actual_cost,
            gate_mass_kept: layer_rows.iter().map(|r| r.gate_mass_kept).sum::<f64>()
                / layers.max(1) as f64,
            layers: layer_rows,
        });
    }
    let over = rows
        .iter()
        .filter(|r| {
            r.budget
                .is_some_and(|b| r.actual_cost > b || r.predicted_cost > b)
        })
        .count();
    let report = Report {
        controller: args.controller.to_string(),
        policy: args.policy.to_string(),
        top_k: args.top_k,
        ranks: args.ranks,
        unit,
        summary: Summary {
            forwards: rows.len(),
            over_budget: over,
            mean_gate_mass_kept: rows.iter().map(|r| r.gate_mass_kept).sum::<f64>()
                / rows.len().max(1) as f64,
        },
        forwards: rows,
    };
    if let Some(path) = &args.metrics_out {
        write_metrics(
            path,
            &metrics,
            &capmoe::online::prometheus(&monitor.snapshot()),
        )?;
    }
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut *out, &report)?;
            writeln!(out)?;
        }
        Format::Table => table(out, &report)?,
    }
    Ok(())
}

/// The JSON lines at `path` and the Prometheus text at `path`.prom, each atomically.
fn write_metrics(path: &std::path::Path, lines: &str, prom: &str) -> Result<(), CliError> {
    let mut p = path.as_os_str().to_owned();
    p.push(".prom");
    for (at, text) in [(path.to_path_buf(), lines), (PathBuf::from(p), prom)] {
        capmoe::io::atomic::write_atomic(&at, text.as_bytes()).map_err(|e| {
            CliError::Usage(format!("cannot write --metrics-out {}: {e}", at.display()))
        })?;
    }
    Ok(())
}

fn online(e: capmoe::online::OnlineError) -> CliError {
    CliError::Usage(e.to_string())
}

fn table(out: &mut dyn Write, r: &Report) -> Result<(), CliError> {
    writeln!(
        out,
        "replay: {} under {}, k = {}, {} ranks, cost in {}",
        r.controller, r.policy, r.top_k, r.ranks, r.unit
    )?;
    writeln!(
        out,
        "{:>7}  {:>10}  {:>10}  {:>10}  {:>9}  capacities",
        "forward", "budget", "predicted", "actual", "kept"
    )?;
    for f in &r.forwards {
        let caps: Vec<String> = f.layers.iter().map(|l| l.capacity.to_string()).collect();
        writeln!(
            out,
            "{:>7}  {:>10}  {:>10.1}  {:>10.1}  {:>9.4}  {}",
            f.forward,
            f.budget.map_or("-".into(), |b| format!("{b:.1}")),
            f.predicted_cost,
            f.actual_cost,
            f.gate_mass_kept,
            caps.join(",")
        )?;
    }
    writeln!(
        out,
        "{} forwards, {} over budget, mean gate mass kept {:.4}",
        r.summary.forwards, r.summary.over_budget, r.summary.mean_gate_mass_kept
    )?;
    Ok(())
}
