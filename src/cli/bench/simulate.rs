//! `capmoe bench --simulate-ep NODESxGPUS,...`: expert parallelism beyond one
//! machine, predicted by the hierarchical model of `capmoe::ep::sim`.

use super::run::write_reports;
use super::setup::io_err;
use super::{BenchArgs, Device};
use crate::cli::CliError;
use capmoe::ep::sim::{
    self, calibrate, ComputeModel, MeasuredRun, RecordedForward, SimSetup, SimTraces, Topology,
};
use capmoe::ep::EpError;
use capmoe::io::npy;
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::Skew;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The measured run calibrated against by default.
const DEFAULT_CALIBRATION: &str = "bench/results/ep-mpi-cpu/report.json";
/// Where the simulation writes by default.
const DEFAULT_OUT: &str = "bench/out-sim";
/// Most recorded forwards read from --traces.
const MAX_TRACE_FILES: usize = 4096;

/// The flags of `--simulate-ep`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Predict EP on these clusters instead of measuring, comma-separated
    /// NODESxGPUS (e.g. 8x8,16x8,32x8,64x8,128x8 = 64 to 1024 GPUs).
    ///
    /// Traces: router logits (synthetic at --skew, default mixtral ~2.75x busiest/mean, or
    /// --traces) are routed by the real policies (--sim-policies at --capacity-factors).
    ///
    /// Placement: one EP rank per GPU; rank r owns experts rE/R..(r+1)E/R and a 1/R block of
    /// the tokens. With more GPUs than experts, GPUs/E EP groups of E ranks (one expert each),
    /// each routing its own tokens.
    ///
    /// Cost of a rank in one layer: compute = fixed + per-row time x rows. Dispatch = its NVLink
    /// rows (busier direction) x row bytes / --nvlink-gbps, plus its node's network rows (busier
    /// direction) x row bytes / (--nics-per-node x --nic-gbps), plus a start-up latency per link
    /// class used. Combine costs what dispatch does. The layer takes the maximum over ranks of
    /// compute + dispatch + combine (everyone waits for the straggler); speedup = none's summed
    /// latency over the policy's.
    ///
    /// Calibrated: the fixed part of expert time in rows, fitted on --calibration (a measured
    /// `capmoe bench --ep` run), which the model also replays as a check. Assumed: every link
    /// rate and latency, the per-row rate (--sim-tflops on a DeepSeek-V3 expert, hidden 7168 x
    /// intermediate 2048), bf16 rows on the wire, no overlap of compute and communication.
    ///
    /// Output: a table, and report.json, report.md (assumptions, calibration, per topology) and
    /// speedup.png (speedup vs GPUs, a line per policy and gamma) under --out [default:
    /// bench/out-sim].
    #[arg(long, value_delimiter = ',', value_name = "NODESxGPUS,...")]
    pub simulate_ep: Vec<String>,
    /// [--simulate-ep] A measured EP report.json (`capmoe bench --ep`) to fit the expert time's
    /// fixed part and check the model against [default: bench/results/ep-mpi-cpu/report.json, if
    /// present; without one the fixed part is 0].
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// [--simulate-ep] Recorded router traces instead of synthetic ones: a folder of float .npy
    /// files, [layers, tokens, experts] or [tokens, experts], all one shape; E is theirs, and EP
    /// group g routes file g mod n.
    #[arg(long, value_name = "DIR")]
    pub traces: Option<PathBuf>,
    /// [--simulate-ep] Tokens per GPU per layer of the synthetic traces.
    #[arg(long, default_value_t = 128, value_name = "T")]
    pub sim_tokens_per_gpu: usize,
    /// [--simulate-ep] MoE layers of the synthetic traces (a fresh draw each).
    #[arg(long, default_value_t = 4, value_name = "L")]
    pub sim_layers: usize,
    /// [--simulate-ep] Experts E (DeepSeek-V3: 256).
    #[arg(long, default_value_t = 256, value_name = "E")]
    pub sim_experts: usize,
    /// [--simulate-ep] Experts per token k (DeepSeek-V3: 8).
    #[arg(long, default_value_t = 8, value_name = "K")]
    pub sim_top_k: usize,
    /// [--simulate-ep] Model hidden size: the row on the wire is hidden x 2 bytes (bf16).
    #[arg(long, default_value_t = 7168, value_name = "H")]
    pub sim_hidden: usize,
    /// [--simulate-ep] Expert intermediate size: 6 x hidden x intermediate FLOPs per row (SwiGLU).
    #[arg(long, default_value_t = 2048, value_name = "I")]
    pub sim_intermediate: usize,
    /// [--simulate-ep] Policies, comma-separated; `none` is the baseline and always runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,drop:score,reroute:next-best,expand:local",
        value_name = "P,P,..."
    )]
    pub sim_policies: Vec<Policy>,
    /// [--simulate-ep] Sustained expert grouped-GEMM rate per GPU, TFLOP/s (an assumption: H100
    /// bf16 dense peaks near 990; 400 is a typical grouped-GEMM rate at these shapes).
    #[arg(long, default_value_t = 400.0, value_name = "TFLOPS")]
    pub sim_tflops: f64,
    /// [--simulate-ep] Expert time per row, µs (overrides --sim-tflops).
    #[arg(long, value_name = "US")]
    pub sim_row_us: Option<f64>,
    /// [--simulate-ep] Fixed expert time per rank and layer, µs [default: the calibrated fixed
    /// part in rows x the per-row time].
    #[arg(long, value_name = "US")]
    pub sim_fixed_us: Option<f64>,
    /// [--simulate-ep] NVLink rate per GPU and direction, GB/s (H100 NVLink 4; EP kernels reach
    /// about a third of it).
    #[arg(long, default_value_t = sim::DEFAULT_NVLINK_GBPS, value_name = "GBPS")]
    pub nvlink_gbps: f64,
    /// [--simulate-ep] Rate of one NIC per direction, GB/s (50 = 400 Gb/s InfiniBand NDR).
    #[arg(long, default_value_t = sim::DEFAULT_NIC_GBPS, value_name = "GBPS")]
    pub nic_gbps: f64,
    /// [--simulate-ep] NICs per node, shared by its GPUs' inter-node traffic.
    #[arg(long, default_value_t = sim::DEFAULT_NICS_PER_NODE, value_name = "N")]
    pub nics_per_node: usize,
    /// [--simulate-ep] Start-up latency of an all-to-all phase over NVLink, µs.
    #[arg(long, default_value_t = sim::DEFAULT_INTRA_LATENCY_US, value_name = "US")]
    pub intra_latency_us: f64,
    /// [--simulate-ep] Start-up latency of an all-to-all phase over the network, µs.
    #[arg(long, default_value_t = sim::DEFAULT_INTER_LATENCY_US, value_name = "US")]
    pub inter_latency_us: f64,
}

fn refuse(args: &BenchArgs) -> Result<(), CliError> {
    let flags = [
        (args.device != Device::Cpu, "--device cuda"),
        (args.e2e, "--e2e"),
        (args.ep.ep.is_some(), "--ep"),
        (args.model.is_some(), "--model"),
        (args.skew.len() > 1, "a --skew list"),
        (
            args.sim.traces.is_some() && !args.skew.is_empty(),
            "--traces with --skew",
        ),
    ];
    super::setup::refuse_with(
        &flags,
        "--simulate-ep (it routes router traces and models the cluster; nothing runs a model)",
    )
}

fn topologies(a: &SimArgs) -> Result<Vec<Topology>, CliError> {
    a.simulate_ep
        .iter()
        .map(|s| {
            let t = Topology {
                nvlink_gbps: a.nvlink_gbps,
                nic_gbps: a.nic_gbps,
                nics_per_node: a.nics_per_node,
                intra_latency_us: a.intra_latency_us,
                inter_latency_us: a.inter_latency_us,
                ..Topology::parse(s)?
            };
            t.check()?;
            Ok(t)
        })
        .collect()
}

fn read_traces(dir: &Path) -> Result<Vec<RecordedForward>, CliError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("cannot read --traces {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    if files.is_empty() || files.len() > MAX_TRACE_FILES {
        return Err(CliError::Usage(format!(
            "--traces {} holds {} .npy files; expected 1 to {MAX_TRACE_FILES}",
            dir.display(),
            files.len()
        )));
    }
    files
        .iter()
        .map(|p| {
            let (layers, m) = match npy::read_layers(p) {
                Ok(v) => v,
                Err(_) => (1, npy::read_matrix(p)?),
            };
            Ok(RecordedForward {
                name: p.display().to_string(),
                layers,
                tokens: m.rows / layers.max(1),
                experts: m.cols,
                logits: m.data,
            })
        })
        .collect()
}

fn cases(a: &SimArgs, gammas: &[f64]) -> Result<Vec<RouterConfig>, CliError> {
    if let Some(&g) = gammas
        .iter()
        .find(|g| !capmoe::routing::valid_capacity_factor(**g))
    {
        return Err(EpError::InvalidCapacityFactor(g).into());
    }
    let mut v = vec![RouterConfig::new(a.sim_top_k, Policy::None)];
    for p in a.sim_policies.iter().filter(|p| p.has_capacity()) {
        for &g in gammas {
            v.push(RouterConfig::new(a.sim_top_k, *p).with_capacity_factor(g));
        }
    }
    Ok(v)
}

/// Runs `--simulate-ep`: prints the table (or JSON) and writes report.json,
/// report.md and speedup.png under --out.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    refuse(args)?;
    let a = &args.sim;
    let topos = topologies(a)?;
    let traces = match &a.traces {
        Some(dir) => SimTraces::Recorded(read_traces(dir)?),
        None => SimTraces::Synthetic {
            skew: args.skew.first().copied().unwrap_or(Skew::Mixtral),
            seed: args.seed,
        },
    };
    let experts = match &traces {
        SimTraces::Recorded(f) => f[0].experts,
        SimTraces::Synthetic { .. } => a.sim_experts,
    };
    let calib_path = a.calibration.clone().or_else(|| {
        Path::new(DEFAULT_CALIBRATION)
            .exists()
            .then(|| DEFAULT_CALIBRATION.into())
    });
    let calibration = match &calib_path {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(io_err(p))?;
            Some(calibrate(&MeasuredRun::from_json(&bytes)?)?)
        }
        None => None,
    };
    let flops_per_row = 6.0 * a.sim_hidden as f64 * a.sim_intermediate as f64;
    let per_row_us = match a.sim_row_us {
        Some(us) => us,
        None => ComputeModel::per_row_from_flops(flops_per_row, a.sim_tflops)?,
    };
    let fixed_us = match (a.sim_fixed_us, &calibration) {
        (Some(us), _) => us,
        (None, Some(c)) => c.fixed_rows * per_row_us,
        (None, None) => 0.0,
    };
    let row_bytes = a
        .sim_hidden
        .checked_mul(super::WIRE_ELEM_BYTES)
        .ok_or_else(|| CliError::Usage("--sim-hidden is too large".into()))?;
    let setup = SimSetup {
        topologies: topos,
        experts,
        top_k: a.sim_top_k,
        tokens_per_gpu: a.sim_tokens_per_gpu,
        layers: a.sim_layers,
        row_bytes,
        compute: ComputeModel {
            fixed_us,
            per_row_us,
        },
        cases: cases(a, &args.capacity_factors)?,
        traces,
    };
    let mut rep = sim::simulate(&setup, |t| eprintln!("simulating {t} ..."))?;
    rep.assumptions.push(match (a.sim_row_us, a.sim_fixed_us) {
        (Some(_), _) => format!("per-row expert time {per_row_us} µs, given (--sim-row-us)"),
        (None, _) => format!(
            "per-row expert time = {flops_per_row:.3e} FLOPs (6 x hidden {} x intermediate {}) at {} TFLOP/s sustained (assumed, --sim-tflops)",
            a.sim_hidden, a.sim_intermediate, a.sim_tflops
        ),
    });
    rep.assumptions.push(match (a.sim_fixed_us, &calib_path) {
        (Some(_), _) => "fixed expert time given (--sim-fixed-us)".into(),
        (None, Some(p)) => format!(
            "fixed expert time = the calibrated fixed part in rows ({:.1}) x the per-row time, fitted on {} (a CPU run: it sets the fixed-to-per-row ratio only; absolute GPU times are the assumptions above)",
            calibration.as_ref().map_or(0.0, |c| c.fixed_rows),
            p.display()
        ),
        (None, None) => "fixed expert time 0 (no calibration file)".into(),
    });
    rep.calibration = calibration;
    let dir = args.out.clone().unwrap_or_else(|| DEFAULT_OUT.into());
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    write_reports(&dir, &rep, &mut |md| sim::write_markdown(md, &rep))?;
    let fig = dir.join("speedup.png");
    sim::speedup_figure(&fig, &rep).map_err(|e| EpError::Plot {
        path: fig.display().to_string(),
        message: e.to_string(),
    })?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rep)?;
        writeln!(out)?;
    } else {
        sim::write_table(out, &rep)?;
        writeln!(
            out,
            "\npredicted, not measured: assumptions in {0}/report.md; wrote {0}/report.json, report.md, speedup.png",
            dir.display()
        )?;
    }
    Ok(())
}
