//! `capmoe calibrate`: fit the per-layer cost model `t(rows) = fixed + per_row * rows` from a
//! measured EP benchmark (`capmoe bench --ep ...`'s report.json), for the budget controller
//! (`capmoe replay|serve-bench --cost FILE`, `--controller budget:MSms`).

use super::CliError;
use capmoe::online::{fit_layer_cost, CostModel};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

pub const CALIBRATE_HELP: &str = "Each case of the report (a policy at a gamma) gives every MoE layer one point: the busiest rank's rows and the layer's measured latency (its slowest rank's median time, ms). A least-squares line through each layer's points is its cost model; a negative intercept is clamped to 0. The fit's R^2 is printed per layer.\n\n\
Example:\n  mpirun -n 2 capmoe bench --ep mpi --out out/ep && capmoe calibrate --report out/ep/report.json --out cost.json\n  capmoe replay --traces DIR --top-k 2 --ranks 2 --controller budget:9ms --cost cost.json";

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// A measured EP benchmark's report.json (`capmoe bench --ep local:R|mpi`).
    #[arg(long, value_name = "FILE.json")]
    pub report: PathBuf,
    /// Where the cost model goes (JSON, written atomically).
    #[arg(long, value_name = "FILE.json")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Calibration {
    #[serde(flatten)]
    model: CostModel,
    r2: Vec<f64>,
    points: Vec<usize>,
    source: String,
}

/// Per layer, (busiest rank rows, slowest rank's time) of every case.
fn points(report: &Value) -> Result<Vec<Vec<(f64, f64)>>, String> {
    let cases = report["cases"]
        .as_array()
        .ok_or("no `cases` list: is this a `capmoe bench --ep` report.json?")?;
    let mut layers: Vec<Vec<(f64, f64)>> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let ls = case["layers"]
            .as_array()
            .ok_or_else(|| format!("case {i} has no `layers`"))?;
        if layers.is_empty() {
            layers = vec![Vec::new(); ls.len()];
        } else if ls.len() != layers.len() {
            return Err(format!(
                "case {i} has {} layers, case 0 has {}",
                ls.len(),
                layers.len()
            ));
        }
        for (l, ranks) in ls.iter().enumerate() {
            let ranks = ranks
                .as_array()
                .ok_or_else(|| format!("case {i} layer {l} is not a list of ranks"))?;
            let max = |key: &str| -> Result<f64, String> {
                ranks
                    .iter()
                    .map(|r| {
                        r[key]
                            .as_f64()
                            .ok_or_else(|| format!("case {i} layer {l}: no number `{key}`"))
                    })
                    .try_fold(f64::NEG_INFINITY, |m, v| Ok(m.max(v?)))
            };
            layers[l].push((max("rows")?, max("total_ms")?));
        }
    }
    if layers.is_empty() {
        return Err("the report has no cases".into());
    }
    Ok(layers)
}

pub fn run(args: &CalibrateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let bad = |why: String| CliError::Usage(format!("--report {}: {why}", args.report.display()));
    let text = std::fs::read_to_string(&args.report).map_err(|e| bad(e.to_string()))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let layers = points(&report).map_err(bad)?;
    let mut model = CostModel {
        unit: "ms".into(),
        layers: Vec::with_capacity(layers.len()),
    };
    let mut r2 = Vec::with_capacity(layers.len());
    for (l, pts) in layers.iter().enumerate() {
        let (c, fit) = fit_layer_cost(pts).map_err(|e| bad(format!("layer {l}: {e}")))?;
        model.layers.push(c);
        r2.push(fit);
    }
    model.validate().map_err(|e| bad(e.to_string()))?;
    writeln!(out, "layer  fixed ms  per-row us  R^2    points")?;
    for (l, (c, fit)) in model.layers.iter().zip(&r2).enumerate() {
        writeln!(
            out,
            "{l:>5}  {:>8.3}  {:>10.3}  {fit:>5.3}  {:>6}",
            c.fixed,
            c.per_row * 1e3,
            layers[l].len()
        )?;
    }
    let cal = Calibration {
        points: layers.iter().map(Vec::len).collect(),
        model,
        r2,
        source: args.report.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&cal)? + "\n";
    capmoe::io::atomic::write_atomic(&args.out, json.as_bytes())
        .map_err(|e| CliError::Usage(format!("cannot write --out {}: {e}", args.out.display())))?;
    writeln!(out, "wrote {}", args.out.display())?;
    Ok(())
}
