//! `capmoe bench`: the end-to-end expert-parallel straggler benchmark.

use super::model_args::check_random_size;
use super::CliError;
use crate::backend::CpuBackend;
use crate::ep::{self, plot, report, BenchReport, BenchSetup, EpError};
use crate::model::{InitOptions, MixtralConfig, Model, BUILTIN_NAMES};
use crate::routing::Policy;
use crate::trace::Skew;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The CPU backend (gemm + rayon over every core).
    Cpu,
    /// The CUDA backend (not built for the model yet: a clear error).
    Cuda,
}

/// The default policy list: the baseline, the three drop orders, both
/// reroutes and Expanded Drop.
pub const DEFAULT_POLICIES: &str =
    "none,drop:score,drop:order,drop:random,reroute:next-best,reroute:optimal,expand:local";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Hugging Face Mixtral checkpoint directory (instead of --config).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "layers"])]
    pub model: Option<PathBuf>,
    /// A built-in shape with seeded random weights: tiny, small, mixtral-8x7b
    /// (too large for random weights on the CPU).
    #[arg(long, value_name = "NAME", default_value = "small")]
    pub config: String,
    /// Decoder layers of the built-in shape (default: 2 for `small`, so that
    /// the default run fits in 2 minutes on 2 cores; the config's own count
    /// otherwise).
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 4, value_name = "B")]
    pub batch: usize,
    /// Tokens per sequence; the batch prefills T = batch * seq-len tokens,
    /// and every MoE layer routes all T together (C = ceil(gamma T k / E)).
    #[arg(long, default_value_t = 64, value_name = "S")]
    pub seq_len: usize,
    /// Expert-parallel ranks (divides E). Default: one expert per rank.
    #[arg(long, value_name = "R")]
    pub ranks: Option<usize>,
    /// Experts per rank (the other way to give the EP size: R = E / this).
    #[arg(long, value_name = "N")]
    pub experts_per_rank: Option<usize>,
    /// Synthetic router skew (busiest expert over the mean under plain
    /// top-k): uniform, mixtral (~2.75x), olmoe (~7x) or a ratio >= 1.
    /// Applies to checkpoints too.
    #[arg(long, default_value = "mixtral", value_name = "SKEW")]
    pub skew: Skew,
    /// Policies, comma-separated (see `capmoe route --help`); `none` is the
    /// baseline and always runs.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_POLICIES, value_name = "P,P,...")]
    pub policies: Vec<Policy>,
    /// Capacity factors (gamma) every capacity policy runs at, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1.0,1.25,1.5,2.0",
        value_name = "G,G,..."
    )]
    pub capacity_factors: Vec<f64>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Folder for report.json, report.md and the PNG figures.
    #[arg(long, default_value = "bench/out", value_name = "DIR")]
    pub out: PathBuf,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Seed of the random weights and of the prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    #[arg(long, default_value_t = 25.0, value_name = "GBPS")]
    pub a2a_gbps: f64,
    /// Timed repetitions of each rank's expert work (the median is kept).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub iters: usize,
    /// Layer whose per-expert load load.png shows.
    #[arg(long, default_value_t = 0, value_name = "L")]
    pub load_layer: usize,
}

/// Layers of the default `small` run.
pub const DEFAULT_SMALL_LAYERS: usize = 2;

/// Bytes per activation element on the all-to-all wire (bf16, as deployed).
pub const WIRE_ELEM_BYTES: usize = 2;

pub const BENCH_HELP: &str = "\
What is measured:
  One batch (T = batch x seq-len tokens) is prefilled through the whole model for `none` and for every
  capacity policy at every gamma; every MoE layer routes all T tokens under the policy. For each layer,
  each EP rank's expert FFN work (its experts on the rows the plan gives them) is replayed and timed on
  its own; on the CPU each rank's work uses every core (rayon), one rank at a time. Times are medians
  over --iters rounds, each round replaying every case once (interleaved, so that load from other
  processes hits all cases alike).
  Reported per policy x gamma: per-layer max/mean load, dropped %, rerouted %, gate mass kept; latency;
  speedup vs none; fidelity vs none.

Latency model (EP on R ranks, rank r owns experts rE/R..(r+1)E/R and tokens floor(rT/R)..floor((r+1)T/R)):
  layer latency  = max_r rank_ms[r] + a2a
  a2a            = 2 * max_r max(send_r, recv_r) * hidden * 2 bytes (bf16) / (a2a-gbps * 1e9)
                   (dispatch + combine; a token goes once to each other rank serving one of its experts)
  MoE speedup    = sum_l latency(none) / sum_l latency(policy)
  non-MoE        = prefill(none) - sum of all ranks' none expert time (attention, projections, norms,
                   routing, dispatch, combine, LM head), split over the ranks: non-MoE / R
  EP prefill     = non-MoE / R + sum_l layer latency;  e2e speedup = EP prefill(none) / EP prefill(policy)
  ideal          = sum_l busiest rank's rows (none) / sum_l busiest rank's rows (policy)
  Routing time (router GEMM + gating + policy) is reported per case but is not in the model.

Fidelity: mean over all T positions of KL(none || policy) of the next-token distributions (nats), and
  top-1 (greedy next token) agreement with none.

Default run: the `small` shape (hidden 1024, intermediate 3584, 8 experts top-2, vocab 32000) cut to 2
  layers, batch 4 x 64 tokens (T = 256), EP 8 ranks x 1 expert, mixtral skew, 7 policies x 4 gammas,
  3 iterations: about a minute on a 2-core CPU, model build included. Fewer layers keep the run short;
  each layer adds the same work.

Output: a table on stdout (--json: the report as JSON), and report.json, report.md, load.png,
  speedup.png, fidelity.png under --out. A progress bar shows on stderr when it is a terminal.

Examples:
  capmoe bench
  capmoe bench --config small --layers 4 --batch 8 --seq-len 64 --iters 5 --out bench/results/ep-cpu
  capmoe bench --config tiny --policies none,drop:score --capacity-factors 1.0,1.5 --ranks 2 --json
  capmoe bench --model path/to/mixtral --skew uniform --ranks 8 --a2a-gbps 50
";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EpError + '_ {
    move |source| EpError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads or builds the model, with the skew applied.
fn load_model(args: &BenchArgs) -> Result<(Model<CpuBackend>, String), CliError> {
    if let Some(dir) = &args.model {
        let mut m = Model::load(CpuBackend, dir)?;
        m.apply_skew(args.skew, args.seed)?;
        return Ok((m, dir.display().to_string()));
    }
    if !BUILTIN_NAMES.contains(&args.config.as_str()) {
        return Err(CliError::Usage(format!(
            "--config `{}` is not a built-in shape; expected one of {} (or --model DIR for a checkpoint)",
            args.config,
            BUILTIN_NAMES.join(", ")
        )));
    }
    let mut cfg = MixtralConfig::builtin(&args.config)?;
    let layers = match (args.layers, args.config.as_str()) {
        (Some(0), _) => {
            return Err(EpError::Zero { what: "--layers" }.into());
        }
        (Some(n), _) => n,
        (None, "small") => DEFAULT_SMALL_LAYERS,
        (None, _) => cfg.num_hidden_layers,
    };
    cfg.num_hidden_layers = layers;
    check_random_size(
        &args.config,
        &cfg,
        "use fewer --layers, a smaller shape or a checkpoint",
    )?;
    let label = if layers == MixtralConfig::builtin(&args.config)?.num_hidden_layers {
        args.config.clone()
    } else {
        format!("{} ({layers} layers)", args.config)
    };
    let opts = InitOptions::new(args.seed).with_skew(args.skew);
    Ok((Model::random(CpuBackend, cfg, &opts)?, label))
}

/// The EP size from --ranks / --experts-per-rank.
fn ranks(args: &BenchArgs, experts: usize) -> Result<usize, EpError> {
    match (args.ranks, args.experts_per_rank) {
        (None, None) => Ok(experts),
        (Some(r), None) => Ok(r),
        (None, Some(0)) | (Some(_), Some(0)) => Err(EpError::Zero {
            what: "--experts-per-rank",
        }),
        (None, Some(per)) if experts % per != 0 => Err(EpError::ExpertsPerRank { per, experts }),
        (None, Some(per)) => Ok(experts / per),
        (Some(r), Some(per)) if r * per != experts => Err(EpError::RanksDisagree {
            ranks: r,
            per,
            experts,
        }),
        (Some(r), Some(_)) => Ok(r),
    }
}

fn progress_bar(len_hint: u64) -> ProgressBar {
    // Hidden unless stderr is a terminal.
    let pb = ProgressBar::with_draw_target(Some(len_hint), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs the benchmark; returns the report (also written under --out).
pub fn bench(args: &BenchArgs) -> Result<BenchReport, CliError> {
    if args.device == Device::Cuda {
        return Err(EpError::DeviceNotBuilt {
            device: "CUDA".into(),
        }
        .into());
    }
    // Cheap checks before the model is built.
    if let Some(&g) = args
        .capacity_factors
        .iter()
        .find(|g| !(g.is_finite() && **g > 0.0))
    {
        return Err(EpError::InvalidCapacityFactor(g).into());
    }
    let (model, label) = load_model(args)?;
    let cfg = model.config();
    let setup = BenchSetup {
        batch: args.batch,
        seq_len: args.seq_len,
        ranks: ranks(args, cfg.num_local_experts)?,
        policies: args.policies.clone(),
        capacity_factors: args.capacity_factors.clone(),
        iters: args.iters,
        a2a_gbps: args.a2a_gbps,
        elem_bytes: WIRE_ELEM_BYTES,
        seed: args.seed,
        load_layer: args.load_layer,
        model_label: label,
        skew_label: args.skew.to_string(),
    };
    setup.validate(cfg.num_local_experts, cfg.num_hidden_layers)?;
    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let pb = progress_bar(1);
    let mut rep = ep::run(&model, &setup, &pb)?;
    pb.finish_and_clear();
    let figs = plot::write_figures(&args.out, &rep, args.load_layer)?;
    rep.figures = figs.iter().map(|p| p.display().to_string()).collect();
    let json_path = args.out.join("report.json");
    let text = serde_json::to_string_pretty(&rep)?;
    std::fs::write(&json_path, text + "\n").map_err(io_err(&json_path))?;
    let md_path = args.out.join("report.md");
    let mut md = Vec::new();
    report::write_markdown(&mut md, &rep)?;
    std::fs::write(&md_path, md).map_err(io_err(&md_path))?;
    Ok(rep)
}

pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let rep = bench(args)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rep)?;
        writeln!(out)?;
    } else {
        report::write_table(out, &rep)?;
    }
    Ok(())
}
