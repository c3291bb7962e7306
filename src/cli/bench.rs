//! `capmoe bench`: the expert-parallel straggler benchmark, end to end on
//! the CPU model, end to end on the GPU (`--device cuda --e2e`, the same
//! `ep::run` on `CudaBackend`), or one MoE layer on the GPU (`--device cuda`).

use super::model_args::check_random_size;
use super::progress::Bar;
use super::CliError;
use capmoe::backend::{Backend, CpuBackend};
use capmoe::ep::gpu::{GpuBenchSetup, LayerShape};
use capmoe::ep::{self, plot, report, BenchReport, BenchSetup, EpError};
use capmoe::model::{InitOptions, MixtralConfig, Model, BUILTIN_NAMES};
use capmoe::routing::Policy;
use capmoe::trace::Skew;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The whole Mixtral model on the CPU backend (gemm + rayon over every core).
    Cpu,
    /// The GPU (needs the `cuda` feature): one MoE layer with real CUTLASS
    /// expert kernels timed per EP rank with CUDA events and NVML telemetry,
    /// or with --e2e the whole model as on the CPU.
    Cuda,
}

/// The default policy list: the baseline, the three drop orders, both
/// reroutes and Expanded Drop.
pub const DEFAULT_POLICIES: &str =
    "none,drop:score,drop:order,drop:random,reroute:next-best,reroute:optimal,expand:local";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where the benchmark runs: `cpu` (the whole model) or `cuda` (one MoE
    /// layer on the GPU, or the whole model with --e2e; see below).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// [cuda] The whole model end to end on the GPU (the CPU benchmark's
    /// method and report, with bf16 weights drawn on the device; default
    /// Mixtral-8x7B, 32 layers, ~94 GB) instead of one MoE layer. Takes the
    /// [cpu] flags too.
    #[arg(long)]
    pub e2e: bool,
    /// [cpu, cuda --e2e] Time every case's own prefill and this many greedy
    /// decode steps after it: prefill and decode tokens/s per case [default:
    /// 0 = off on cpu, 8 with --e2e].
    #[arg(long, value_name = "N")]
    pub decode_steps: Option<usize>,
    /// [cpu, --e2e] A Hugging Face Mixtral checkpoint directory (instead of --config).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "layers"])]
    pub model: Option<PathBuf>,
    /// A built-in shape: tiny, small, mixtral-8x7b. cpu: the model, with
    /// seeded random weights (default small; mixtral-8x7b is too large for
    /// random weights on the CPU). cuda: the MoE layer's shape (default
    /// mixtral-8x7b: 8 experts top-2, hidden 4096, intermediate 14336);
    /// with --e2e the model (default mixtral-8x7b, drawn on the device).
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
    /// [cpu, --e2e] Decoder layers of the built-in shape (default: 2 for
    /// `small` on the CPU, so that the default run fits in 2 minutes on 2
    /// cores; the config's own count otherwise).
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// [cpu, --e2e] Sequences in the batch [default: 4].
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// [cpu, --e2e] Tokens per sequence [default: 64; 1024 with --e2e]; the batch prefills
    /// T = batch * seq-len tokens, and every MoE layer routes all T together
    /// (C = ceil(gamma T k / E)).
    #[arg(long, value_name = "S")]
    pub seq_len: Option<usize>,
    /// [cuda] Batch sizes T, comma-separated: tokens routed together through
    /// the layer [default: 4096,64 (a prefill chunk and a decode batch)].
    #[arg(long, value_delimiter = ',', value_name = "T,T,...")]
    pub tokens: Vec<usize>,
    /// Expert-parallel ranks (each divides E). cpu: one value, default one
    /// expert per rank. cuda: a comma list [default: 8,4 = EP-8 with one
    /// expert per rank and EP-4 with two, on Mixtral's 8 experts].
    #[arg(
        long,
        visible_alias = "ep",
        value_delimiter = ',',
        value_name = "R,R,..."
    )]
    pub ranks: Vec<usize>,
    /// Experts per rank (the other way to give one EP size: R = E / this).
    #[arg(long, value_name = "N")]
    pub experts_per_rank: Option<usize>,
    /// Synthetic router skew (busiest expert over the mean under plain
    /// top-k): uniform, mixtral (~2.75x), olmoe (~7x, needs E/k > 7) or a
    /// ratio >= 1 (below E/k). cpu: one value [default: mixtral], applied to
    /// checkpoints too. cuda: a comma list [default: uniform,mixtral,3.5].
    #[arg(long, value_delimiter = ',', value_name = "SKEW")]
    pub skew: Vec<Skew>,
    /// Policies, comma-separated (see `capmoe route --help`); `none` is the
    /// baseline and always runs. On cuda, reroute:optimal (CPU-only so far)
    /// is reported as skipped.
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
    /// Folder for report.json, report.md and the PNG figures [default:
    /// bench/out, bench/out-gpu with --device cuda].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Seed of the random weights, prompt ids (cpu), activations and router
    /// logits (cuda).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s [default:
    /// 25 on cpu; 150 on cuda, about what EP all-to-all kernels reach over
    /// NVLink within a node (DeepEP: 150-160 GB/s on H800); H100/H200 NVLink
    /// peaks at 450 GB/s per direction].
    #[arg(long, value_name = "GBPS")]
    pub a2a_gbps: Option<f64>,
    /// Timed repetitions. cpu: of each rank's expert work, the median kept
    /// [default: 3]. cuda: iterations per case, at least [default: 30].
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,
    /// [cpu, --e2e] Layer whose per-expert load load.png shows [default: 0].
    #[arg(long, value_name = "L")]
    pub load_layer: Option<usize>,
    /// [cuda] Untimed iterations before each timed block [default: 2].
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// [cuda] Each case's rank iterations run for at least this much GPU
    /// time (more iterations for P99 and telemetry samples) [default: 200].
    #[arg(long, value_name = "MS")]
    pub min_case_ms: Option<f64>,
    /// [cuda] NVML sampling period, ms [default: 10].
    #[arg(long, value_name = "MS")]
    pub telemetry_ms: Option<f64>,
    /// [cuda] Autotune the FFN's grouped-GEMM variants at every T first
    /// (`capmoe tune`; uses and updates the tuning cache).
    #[arg(long)]
    pub tune: bool,
    /// [cuda] Fix the grouped-GEMM variants (GEMM1,GEMM2 by name) instead of
    /// the per-T choice (`capmoe tune --help` lists them).
    #[arg(long, value_delimiter = ',', value_name = "G1,G2")]
    pub gemm_variants: Vec<String>,
    /// [cuda] Override the layer's expert count.
    #[arg(long, value_name = "E")]
    pub experts: Option<usize>,
    /// [cuda] Override the layer's hidden size (a multiple of 8).
    #[arg(long, value_name = "H")]
    pub hidden: Option<usize>,
    /// [cuda] Override the layer's intermediate size (a multiple of 8).
    #[arg(long, value_name = "I")]
    pub intermediate: Option<usize>,
    /// [cuda] Override the layer's top-k.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
}

/// Layers of the default `small` run.
pub const DEFAULT_SMALL_LAYERS: usize = 2;

/// Bytes per activation element on the all-to-all wire (bf16, as deployed).
pub const WIRE_ELEM_BYTES: usize = 2;

/// Defaults that differ between the devices.
const CPU_CONFIG: &str = "small";
const CPU_BATCH: usize = 4;
const CPU_SEQ_LEN: usize = 64;
const CPU_ITERS: usize = 3;
const CPU_A2A_GBPS: f64 = 25.0;
const CPU_OUT: &str = "bench/out";
const GPU_CONFIG: &str = "mixtral-8x7b";
const GPU_TOKENS: [usize; 2] = [4096, 64];
const GPU_RANKS: [usize; 2] = [8, 4];
const GPU_SKEWS: [Skew; 3] = [Skew::Uniform, Skew::Mixtral, Skew::Ratio(3.5)];
const GPU_ITERS: usize = 30;
const GPU_WARMUP: usize = 2;
const GPU_MIN_CASE_MS: f64 = 200.0;
const GPU_TELEMETRY_MS: f64 = 10.0;
const GPU_A2A_GBPS: f64 = 150.0;
#[cfg(feature = "cuda")]
const GPU_OUT: &str = "bench/out-gpu";

pub const BENCH_HELP: &str = "\
--device cpu (default): the whole model, end to end
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

--device cuda: one MoE layer on the GPU (build with --features cuda)
  Mixtral-8x7B's MoE layer by default (8 experts top-2, hidden 4096, intermediate 14336; bf16 weights
  2.8 GB drawn on the device from --seed), for every batch size in --tokens, skew in --skew, EP size in
  --ranks and policy x gamma. The batch is routed on the GPU (GpuRouter). Each rank's expert work
  (GEMM1 + SwiGLU + GEMM2 on the rows the plan sends to its experts, the real CUTLASS kernels) is run
  alone and timed with CUDA events, one rank after another: the rank's rows form a sub-batch routed with
  one-hot logits, which gives the grouped GEMMs exactly the rank's per-expert row counts (and no tiles for
  the other experts). Launches are queued behind a gate so the events time the GPU, not the host.
  Per iteration: layer latency = slowest rank + a2a (the model above); P50 and P99 over iterations.
  Reported per case: speedup vs none (P50, P99, and without a2a), ideal = busiest rank's rows (none) /
  busiest rank's rows (policy), speedup / ideal (bar: >= 95%), the whole layer's time on one GPU (the
  split's cross-check, TFLOP/s, weight GB/s), routing time, gate mass kept, dropped/rerouted shares, and
  NVML telemetry over the rank iterations: GPU utilisation, SM and memory clocks, power, energy per
  token (from the energy counter). Without NVML telemetry is marked unavailable. KL and top-1 need the
  whole model: --e2e below. reroute:optimal is skipped (CPU only); skews out of reach
  for E and k (olmoe needs E/k > 7) are skipped with the reason.
  Default run: T in {4096, 64} x 3 skews x EP {8, 4} x (none + 5 policies x 4 gammas): 252 cases,
  estimated at 1.5-2 minutes on an H200. Flags marked [cpu] or [cuda] belong to one device; giving one to the other is an error.

--device cuda --e2e: the whole model on the GPU, end to end (build with --features cuda)
  The --device cpu benchmark above, run unchanged on the CUDA backend, with the [cpu] flags: by default the
  whole Mixtral-8x7B (32 layers; bf16 weights, ~94 GB, drawn at random on the device from --seed with a
  progress bar; GPU random weights are not the CPU's), batch 4 x 1024 (T = 4096), EP 8, mixtral skew,
  3 rounds. Every time (prefill, decode step, routing, each rank's replay) is taken with CUDA events
  around the work; a rank's replay runs ExpertFfn::forward_layout over its own experts only (the grouped
  GEMMs on its rows alone). Besides the CPU report, each case's own prefill and --decode-steps greedy
  decode steps (default 8) after it are timed: prefill and decode tokens/s on the one GPU, and the
  modelled EP prefill's tokens/s. Cases are timed one after another, each right after its forward pass,
  so that only one case's recorded MoE inputs sit next to the weights. Layer-only flags ([cuda]) are
  errors here. A short run: --config mixtral-8x7b --layers 4 --batch 4 --seq-len 512 --iters 3.

Output: a table on stdout (--json: the report as JSON), and under --out report.json, report.md and
  figures: cpu and cuda --e2e load.png, speedup.png, fidelity.png; cuda gpu-speedup-T<T>.png (speedup P50 and ideal
  vs gamma per policy, a panel per EP size x skew) and gpu-latency-T<T>.png (P50 and P99). A progress
  bar shows on stderr when it is a terminal.

Examples:
  capmoe bench
  capmoe bench --config small --layers 4 --batch 8 --seq-len 64 --iters 5 --out bench/results/ep-cpu
  capmoe bench --config tiny --policies none,drop:score --capacity-factors 1.0,1.5 --ranks 2 --json
  capmoe bench --model path/to/mixtral --skew uniform --ranks 8 --a2a-gbps 50
  capmoe bench --device cuda --out bench/results/ep-gpu
  capmoe bench --device cuda --tokens 4096 --ep 8 --skew mixtral --policies none,drop:score --iters 50
  capmoe bench --device cuda --config small --tokens 256 --ep 8 --iters 5 --min-case-ms 0   # short, for nsight
  capmoe bench --device cuda --e2e --out bench/results/ep-gpu-e2e      # whole Mixtral-8x7B on one GPU
  capmoe bench --device cuda --e2e --config mixtral-8x7b --layers 4 --batch 4 --seq-len 512 --iters 3
";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EpError + '_ {
    move |source| EpError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn check_builtin(name: &str) -> Result<(), CliError> {
    if BUILTIN_NAMES.contains(&name) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "--config `{name}` is not a built-in shape; expected one of {} (or --model DIR for a checkpoint)",
        BUILTIN_NAMES.join(", ")
    )))
}

/// The defaults of a whole-model run that differ between the devices.
struct E2eDefaults {
    config: &'static str,
    /// Layers of the `small` shape when --layers is not given (`None`: the
    /// config's own count).
    small_layers: Option<usize>,
    batch: usize,
    seq_len: usize,
    iters: usize,
    a2a_gbps: f64,
    decode_steps: usize,
    /// Time every case's prefill and decode even without --decode-steps.
    throughput: bool,
    /// See [`BenchSetup::interleave`].
    interleave: bool,
    /// Refuse random models too large for host memory as f32 (the CPU).
    host_size_limit: bool,
    out: &'static str,
}

const CPU_E2E: E2eDefaults = E2eDefaults {
    config: CPU_CONFIG,
    small_layers: Some(DEFAULT_SMALL_LAYERS),
    batch: CPU_BATCH,
    seq_len: CPU_SEQ_LEN,
    iters: CPU_ITERS,
    a2a_gbps: CPU_A2A_GBPS,
    decode_steps: 0,
    throughput: false,
    interleave: true,
    host_size_limit: true,
    out: CPU_OUT,
};

/// `--device cuda --e2e`: Mixtral-8x7B whole (32 layers, bf16 weights drawn
/// on the device), T = 4 x 1024 = 4096, EP-8, 8 decode steps, 3 rounds.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const GPU_E2E: E2eDefaults = E2eDefaults {
    config: GPU_CONFIG,
    small_layers: None,
    batch: 4,
    seq_len: 1024,
    iters: 3,
    a2a_gbps: GPU_A2A_GBPS,
    decode_steps: 8,
    throughput: true,
    interleave: false,
    host_size_limit: false,
    out: "bench/out-gpu-e2e",
};

/// Loads or builds the model on `backend`, with the skew applied; random
/// weights tick a progress bar over the layers on stderr.
fn load_model<B: Backend>(
    args: &BenchArgs,
    skew: Skew,
    backend: B,
    d: &E2eDefaults,
) -> Result<(Model<B>, String), CliError> {
    if let Some(dir) = &args.model {
        let mut m = Model::load(backend, dir)?;
        m.apply_skew(skew, args.seed)?;
        return Ok((m, dir.display().to_string()));
    }
    let name = args.config.as_deref().unwrap_or(d.config);
    check_builtin(name)?;
    let mut cfg = MixtralConfig::builtin(name)?;
    let layers = match (args.layers, name, d.small_layers) {
        (Some(0), _, _) => {
            return Err(EpError::Zero { what: "--layers" }.into());
        }
        (Some(n), _, _) => n,
        (None, "small", Some(n)) => n,
        (None, _, _) => cfg.num_hidden_layers,
    };
    cfg.num_hidden_layers = layers;
    if d.host_size_limit {
        check_random_size(
            name,
            &cfg,
            "use fewer --layers, a smaller shape or a checkpoint",
        )?;
    }
    let label = if layers == MixtralConfig::builtin(name)?.num_hidden_layers {
        name.to_string()
    } else {
        format!("{name} ({layers} layers)")
    };
    let opts = InitOptions::new(args.seed).with_skew(skew);
    let pb = progress_bar(layers as u64);
    let model = Model::random_with_progress(backend, cfg, &opts, &pb)?;
    pb.finish_and_clear();
    Ok((model, label))
}

/// One EP size from --ranks / --experts-per-rank.
fn ranks(
    ranks: Option<usize>,
    experts_per_rank: Option<usize>,
    experts: usize,
) -> Result<usize, EpError> {
    match (ranks, experts_per_rank) {
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

/// Which benchmark the flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cpu,
    GpuLayer,
    GpuE2e,
}

fn mode(args: &BenchArgs) -> Mode {
    match (args.device, args.e2e) {
        (Device::Cpu, _) => Mode::Cpu,
        (Device::Cuda, false) => Mode::GpuLayer,
        (Device::Cuda, true) => Mode::GpuE2e,
    }
}

/// The flags of one benchmark given to another: a usage error naming them.
fn refuse_flags(args: &BenchArgs) -> Result<(), CliError> {
    let layer_only = [
        (!args.tokens.is_empty(), "--tokens"),
        (args.warmup.is_some(), "--warmup"),
        (args.min_case_ms.is_some(), "--min-case-ms"),
        (args.telemetry_ms.is_some(), "--telemetry-ms"),
        (args.tune, "--tune"),
        (!args.gemm_variants.is_empty(), "--gemm-variants"),
        (args.experts.is_some(), "--experts"),
        (args.hidden.is_some(), "--hidden"),
        (args.intermediate.is_some(), "--intermediate"),
        (args.top_k.is_some(), "--top-k"),
    ];
    let model_only = [
        (args.model.is_some(), "--model"),
        (args.layers.is_some(), "--layers"),
        (args.batch.is_some(), "--batch"),
        (args.seq_len.is_some(), "--seq-len"),
        (args.load_layer.is_some(), "--load-layer"),
        (args.decode_steps.is_some(), "--decode-steps"),
    ];
    let names = |flags: &[(bool, &'static str)]| -> Vec<&'static str> {
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f)
            .collect()
    };
    if args.e2e && args.device == Device::Cpu {
        return Err(CliError::Usage(
            "--e2e is only for --device cuda (the CPU benchmark is always the whole model)".into(),
        ));
    }
    let (given, place, hint) = match mode(args) {
        Mode::Cpu => (
            names(&layer_only),
            "--device cuda, not --device cpu",
            "add --device cuda for the GPU MoE-layer benchmark",
        ),
        Mode::GpuLayer => (
            names(&model_only),
            "--device cpu (or --device cuda --e2e), not the GPU MoE-layer benchmark",
            "it runs one MoE layer: give its batch sizes with --tokens and its shape with --config or --experts/--hidden/--intermediate/--top-k; add --e2e for the whole model",
        ),
        Mode::GpuE2e => (
            names(&layer_only),
            "the GPU MoE-layer benchmark (--device cuda without --e2e)",
            "--device cuda --e2e runs the whole model: give its batch with --batch and --seq-len",
        ),
    };
    if given.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "{} {} only for {place}; {hint}",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" },
    )))
}

/// The GPU benchmark's setup from the flags (no GPU needed: checked here,
/// before anything is built).
pub fn gpu_setup(args: &BenchArgs) -> Result<GpuBenchSetup, CliError> {
    refuse_flags(args)?;
    let name = args.config.as_deref().unwrap_or(GPU_CONFIG);
    check_builtin(name)?;
    let cfg = MixtralConfig::builtin(name)?;
    let shape = LayerShape {
        experts: args.experts.unwrap_or(cfg.num_local_experts),
        hidden: args.hidden.unwrap_or(cfg.hidden_size),
        intermediate: args.intermediate.unwrap_or(cfg.intermediate_size),
        top_k: args.top_k.unwrap_or(cfg.num_experts_per_tok),
    };
    let overridden = args.experts.is_some()
        || args.hidden.is_some()
        || args.intermediate.is_some()
        || args.top_k.is_some();
    let label = if overridden {
        format!(
            "{name} (E {}, H {}, I {}, k {})",
            shape.experts, shape.hidden, shape.intermediate, shape.top_k
        )
    } else {
        name.to_string()
    };
    if shape.top_k > shape.experts {
        return Err(CliError::Usage(format!(
            "--top-k {} is more than the layer's {} experts",
            shape.top_k, shape.experts
        )));
    }
    for (what, v) in [
        ("--hidden", shape.hidden),
        ("--intermediate", shape.intermediate),
    ] {
        if v % 8 != 0 {
            return Err(CliError::Usage(format!(
                "{what} {v} is not a multiple of 8 (the grouped GEMMs read 16-byte bf16 rows)"
            )));
        }
    }
    let ranks = match (args.ranks.as_slice(), args.experts_per_rank) {
        ([], None) => GPU_RANKS
            .iter()
            .copied()
            .filter(|r| shape.experts % r == 0)
            .collect::<Vec<_>>(),
        ([], per) => vec![ranks(None, per, shape.experts)?],
        ([r], per) => vec![ranks(Some(*r), per, shape.experts)?],
        (list, None) => list.to_vec(),
        (_, Some(_)) => {
            return Err(CliError::Usage(
                "--experts-per-rank gives one EP size; with a --ranks list, leave it out".into(),
            ))
        }
    };
    let variants = match args.gemm_variants.as_slice() {
        [] => None,
        [a, b] => Some((a.clone(), b.clone())),
        [a] => Some((a.clone(), a.clone())),
        v => {
            return Err(CliError::Usage(format!(
                "--gemm-variants takes one name or two (GEMM1,GEMM2), got {}",
                v.len()
            )))
        }
    };
    let setup = GpuBenchSetup {
        label,
        shape,
        tokens: if args.tokens.is_empty() {
            GPU_TOKENS.to_vec()
        } else {
            args.tokens.clone()
        },
        ranks: if ranks.is_empty() { vec![1] } else { ranks },
        skews: if args.skew.is_empty() {
            GPU_SKEWS.to_vec()
        } else {
            args.skew.clone()
        },
        policies: args.policies.clone(),
        capacity_factors: args.capacity_factors.clone(),
        iters: args.iters.unwrap_or(GPU_ITERS),
        warmup: args.warmup.unwrap_or(GPU_WARMUP),
        min_case_ms: args.min_case_ms.unwrap_or(GPU_MIN_CASE_MS),
        a2a_gbps: args.a2a_gbps.unwrap_or(GPU_A2A_GBPS),
        elem_bytes: WIRE_ELEM_BYTES,
        seed: args.seed,
        telemetry_ms: args.telemetry_ms.unwrap_or(GPU_TELEMETRY_MS),
        tune: args.tune,
        variants,
        // Under Nsight Compute, which serialises every launch, the gate would only wait for its
        // watchdog: CAPMOE_NO_GATE=1 times without it.
        launch_gate: std::env::var_os("CAPMOE_NO_GATE").is_none_or(|v| v.is_empty()),
        tune_cache: None,
    };
    setup.validate()?;
    Ok(setup)
}

fn progress_bar(len_hint: u64) -> Bar {
    Bar::new(len_hint)
}

/// Runs the CPU benchmark; returns the report (also written under --out).
pub fn bench(args: &BenchArgs) -> Result<BenchReport, CliError> {
    refuse_flags(args)?;
    if args.device == Device::Cuda {
        return Err(CliError::Usage(
            "bench() runs the CPU benchmark; --device cuda goes through bench_gpu() or bench_gpu_e2e()".into(),
        ));
    }
    whole_model(args, CpuBackend, &CPU_E2E)
}

/// The skew and the one EP size of a whole-model run, checked before the
/// model is built.
fn e2e_flags(args: &BenchArgs) -> Result<(Skew, Option<usize>), CliError> {
    if let Some(&g) = args
        .capacity_factors
        .iter()
        .find(|g| !(g.is_finite() && **g > 0.0))
    {
        return Err(EpError::InvalidCapacityFactor(g).into());
    }
    let skew = match args.skew.as_slice() {
        [] => Skew::Mixtral,
        [s] => *s,
        _ => return Err(CliError::Usage(
            "the whole-model benchmark runs one --skew; a list is for the GPU MoE-layer benchmark"
                .into(),
        )),
    };
    let one_rank = match args.ranks.as_slice() {
        [] => None,
        [r] => Some(*r),
        _ => {
            return Err(CliError::Usage(
                "the whole-model benchmark runs one EP size (--ranks R); a list is for the GPU MoE-layer benchmark"
                    .into(),
            ))
        }
    };
    for (what, v) in [("--batch", args.batch), ("--seq-len", args.seq_len)] {
        if v == Some(0) {
            return Err(EpError::Zero { what }.into());
        }
    }
    Ok((skew, one_rank))
}

/// The whole-model benchmark ([`ep::run`]) on `backend`.
fn whole_model<B: Backend>(
    args: &BenchArgs,
    backend: B,
    d: &E2eDefaults,
) -> Result<BenchReport, CliError> {
    let (skew, one_rank) = e2e_flags(args)?;
    let (model, label) = load_model(args, skew, backend, d)?;
    let cfg = model.config();
    let load_layer = args.load_layer.unwrap_or(0);
    let setup = BenchSetup {
        batch: args.batch.unwrap_or(d.batch),
        seq_len: args.seq_len.unwrap_or(d.seq_len),
        ranks: ranks(one_rank, args.experts_per_rank, cfg.num_local_experts)?,
        policies: args.policies.clone(),
        capacity_factors: args.capacity_factors.clone(),
        iters: args.iters.unwrap_or(d.iters),
        a2a_gbps: args.a2a_gbps.unwrap_or(d.a2a_gbps),
        elem_bytes: WIRE_ELEM_BYTES,
        seed: args.seed,
        load_layer,
        model_label: label,
        skew_label: skew.to_string(),
        throughput: d.throughput || args.decode_steps.is_some(),
        decode_steps: args.decode_steps.unwrap_or(d.decode_steps),
        interleave: d.interleave,
    };
    setup.validate(cfg.num_local_experts, cfg.num_hidden_layers)?;
    let out_dir = args.out.clone().unwrap_or_else(|| d.out.into());
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let pb = progress_bar(1);
    let mut rep = ep::run(&model, &setup, &pb)?;
    pb.finish_and_clear();
    let figs = plot::write_figures(&out_dir, &rep, load_layer)?;
    rep.figures = figs.iter().map(|p| p.display().to_string()).collect();
    write_reports(&out_dir, &rep, &mut |md| report::write_markdown(md, &rep))?;
    Ok(rep)
}

/// Runs the whole model end to end on the GPU (`--device cuda --e2e`):
/// the CPU benchmark's method on [`capmoe::cuda::CudaBackend`]; returns the
/// report (also written under --out).
#[cfg(feature = "cuda")]
pub fn bench_gpu_e2e(args: &BenchArgs) -> Result<BenchReport, CliError> {
    use capmoe::cuda::{CudaBackend, GpuContext};
    refuse_flags(args)?;
    if mode(args) != Mode::GpuE2e {
        return Err(CliError::Usage(
            "bench_gpu_e2e() runs --device cuda --e2e".into(),
        ));
    }
    e2e_flags(args)?;
    let gpu = GpuContext::new(0).map_err(EpError::from)?;
    let backend = CudaBackend::new(&gpu).map_err(EpError::from)?;
    whole_model(args, backend, &GPU_E2E)
}

/// Writes `report.json` and `report.md` (by `markdown`) into `dir`.
fn write_reports<R: serde::Serialize>(
    dir: &Path,
    rep: &R,
    markdown: &mut dyn FnMut(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let json_path = dir.join("report.json");
    let text = serde_json::to_string_pretty(rep)?;
    std::fs::write(&json_path, text + "\n").map_err(io_err(&json_path))?;
    let md_path = dir.join("report.md");
    let mut md = Vec::new();
    markdown(&mut md)?;
    std::fs::write(&md_path, md).map_err(io_err(&md_path))?;
    Ok(())
}

/// Runs the GPU MoE-layer benchmark; returns the report (also written under
/// --out).
#[cfg(feature = "cuda")]
pub fn bench_gpu(args: &BenchArgs) -> Result<capmoe::ep::gpu::GpuBenchReport, CliError> {
    use capmoe::cuda::GpuContext;
    use capmoe::ep::gpu;
    let mut setup = gpu_setup(args)?;
    let out_dir = args.out.clone().unwrap_or_else(|| GPU_OUT.into());
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let gpu = GpuContext::new(0).map_err(EpError::from)?;
    setup.tune_cache = Some(super::tune::open_cache(
        &gpu.name().map_err(EpError::from)?,
    )?);
    let pb = progress_bar(1);
    let mut rep = gpu::run(&setup, &gpu, &pb)?;
    pb.finish_and_clear();
    let figs = gpu::plot::write_figures(&out_dir, &rep)?;
    rep.figures = figs.iter().map(|p| p.display().to_string()).collect();
    write_reports(&out_dir, &rep, &mut |md| {
        gpu::report::write_markdown(md, &rep)
    })?;
    Ok(rep)
}

pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    // Flags are checked with or without the feature, so a mistake shows
    // before a rebuild does.
    match mode(args) {
        Mode::GpuLayer => {
            gpu_setup(args)?;
            run_gpu_layer(args, out)
        }
        Mode::GpuE2e => {
            refuse_flags(args)?;
            e2e_flags(args)?;
            run_gpu_e2e(args, out)
        }
        Mode::Cpu => {
            let rep = bench(args)?;
            write_e2e(out, args, &rep)
        }
    }
}

#[cfg(feature = "cuda")]
fn run_gpu_layer(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let rep = bench_gpu(args)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rep)?;
        writeln!(out)?;
    } else {
        capmoe::ep::gpu::report::write_table(out, &rep)?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_gpu_e2e(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let rep = bench_gpu_e2e(args)?;
    write_e2e(out, args, &rep)
}

#[cfg(not(feature = "cuda"))]
fn run_gpu_layer(_: &BenchArgs, _: &mut dyn Write) -> Result<(), CliError> {
    Err(EpError::CudaNotCompiled.into())
}

#[cfg(not(feature = "cuda"))]
fn run_gpu_e2e(_: &BenchArgs, _: &mut dyn Write) -> Result<(), CliError> {
    Err(EpError::CudaNotCompiled.into())
}

fn write_e2e(out: &mut dyn Write, args: &BenchArgs, rep: &BenchReport) -> Result<(), CliError> {
    if args.json {
        serde_json::to_writer_pretty(&mut *out, rep)?;
        writeln!(out)?;
    } else {
        report::write_table(out, rep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(a: &[&str]) -> BenchArgs {
        let mut v = vec!["bench"];
        v.extend_from_slice(a);
        Cli::try_parse_from(v).unwrap().args
    }

    #[test]
    fn gpu_defaults_are_mixtral_ep8_and_ep4_over_three_skews() {
        let s = gpu_setup(&parse(&["--device", "cuda"])).unwrap();
        assert_eq!(s.shape, LayerShape::MIXTRAL_8X7B);
        assert_eq!(s.tokens, vec![4096, 64]);
        assert_eq!(s.ranks, vec![8, 4]);
        assert_eq!(s.skews.len(), 3);
        assert_eq!(s.capacity_factors, vec![1.0, 1.25, 1.5, 2.0]);
        assert_eq!(s.a2a_gbps, GPU_A2A_GBPS);
        assert_eq!(s.iters, GPU_ITERS);
        assert_eq!(s.variants, None);
        assert!(s.policies.contains(&"reroute:optimal".parse().unwrap()));
    }

    #[test]
    fn gpu_flags_parse_lists_and_overrides() {
        let s = gpu_setup(&parse(&[
            "--device",
            "cuda",
            "--config",
            "small",
            "--tokens",
            "256,8",
            "--ep",
            "8,2",
            "--skew",
            "uniform,2.5",
            "--hidden",
            "256",
            "--intermediate",
            "512",
            "--iters",
            "2",
            "--gemm-variants",
            "a,b",
            "--a2a-gbps",
            "400",
        ]))
        .unwrap();
        assert_eq!(s.tokens, vec![256, 8]);
        assert_eq!(s.ranks, vec![8, 2]);
        assert_eq!(s.skews, vec![Skew::Uniform, Skew::Ratio(2.5)]);
        assert_eq!(
            (s.shape.experts, s.shape.hidden, s.shape.intermediate),
            (8, 256, 512)
        );
        assert!(s.label.contains("H 256"));
        assert_eq!(s.variants, Some(("a".into(), "b".into())));
        assert_eq!(s.a2a_gbps, 400.0);
        let s = gpu_setup(&parse(&["--device", "cuda", "--experts-per-rank", "2"])).unwrap();
        assert_eq!(s.ranks, vec![4]);
    }

    #[test]
    fn flags_of_the_other_device_are_usage_errors() {
        let err = |a: &[&str]| match gpu_setup(&parse(a)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{a:?} should fail"),
        };
        assert!(
            err(&["--device", "cuda", "--batch", "4"]).contains("--batch is only for --device cpu")
        );
        assert!(err(&["--device", "cuda", "--ranks", "3"]).contains("divisor"));
        assert!(err(&["--device", "cuda", "--tokens", "0"]).contains("--tokens"));
        assert!(err(&["--device", "cuda", "--hidden", "100"]).contains("multiple of 8"));
        assert!(err(&["--device", "cuda", "--top-k", "9"]).contains("more than"));
        assert!(err(&["--device", "cuda", "--config", "nope"]).contains("not a built-in"));
        assert!(err(&["--device", "cuda", "--gemm-variants", "a,b,c"]).contains("one name or two"));
        assert!(err(&[
            "--device",
            "cuda",
            "--ranks",
            "8,4",
            "--experts-per-rank",
            "2"
        ])
        .contains("one EP size"));
        let e = refuse_flags(&parse(&["--tokens", "64", "--tune"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("--tokens, --tune are only for --device cuda"),
            "{e}"
        );
    }

    #[test]
    fn e2e_flags_belong_to_the_whole_model_runs() {
        let err = |a: &[&str]| match refuse_flags(&parse(a))
            .and_then(|_| e2e_flags(&parse(a)).map(|_| ()))
        {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{a:?} should fail"),
        };
        assert!(err(&["--e2e"]).contains("--e2e is only for --device cuda"));
        assert!(err(&["--device", "cuda", "--e2e", "--tokens", "64"])
            .contains("--tokens is only for the GPU MoE-layer benchmark"));
        assert!(err(&["--device", "cuda", "--decode-steps", "2"])
            .contains("--decode-steps is only for --device cpu (or --device cuda --e2e)"));
        assert!(
            err(&["--device", "cuda", "--e2e", "--skew", "uniform,mixtral"]).contains("one --skew")
        );
        assert!(err(&["--device", "cuda", "--e2e", "--ranks", "8,4"]).contains("one EP size"));
        assert!(err(&["--device", "cuda", "--e2e", "--batch", "0"]).contains("--batch"));
        // The model flags are fine with --e2e.
        let a = parse(&[
            "--device",
            "cuda",
            "--e2e",
            "--config",
            "small",
            "--layers",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "8",
            "--decode-steps",
            "3",
            "--load-layer",
            "1",
        ]);
        assert!(refuse_flags(&a).is_ok());
        assert_eq!(mode(&a), Mode::GpuE2e);
        let d = &GPU_E2E;
        assert!(d.throughput && !d.interleave && !d.host_size_limit);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_e2e_without_the_feature_says_how_to_rebuild() {
        let mut out = Vec::new();
        let a = parse(&["--device", "cuda", "--e2e", "--config", "tiny"]);
        let e = run(&a, &mut out).unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
        assert!(out.is_empty());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let mut out = Vec::new();
        let e = run(&parse(&["--device", "cuda"]), &mut out).unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
        assert!(out.is_empty());
    }
}
