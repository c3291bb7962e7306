//! `capmoe bench`: the expert-parallel straggler benchmark, end to end on
//! the CPU model, end to end on the GPU (`--device cuda --e2e`, the same
//! `ep::run` on `CudaBackend`), or one MoE layer on the GPU (`--device cuda`).

use capmoe::routing::Policy;
use capmoe::trace::Skew;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

mod ep;
mod run;
mod setup;
mod simulate;
#[cfg(test)]
mod tests;
mod trained;

pub use run::run;
use run::*;
use setup::*;

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
    /// [cpu, --e2e] A Hugging Face Mixtral checkpoint directory (instead of --config) [default
    /// on cpu, when no --config or --layers is given: bench/models/mixtral-like, trained here].
    /// A checkpoint that ships eval.jsonl and tokenizer.json is fed its own held-out text (16 x
    /// 128 tokens unless --batch/--seq-len say otherwise), and on cpu its accuracy under every
    /// policy and gamma is measured after the timing (`capmoe eval`; see --no-eval).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "layers"])]
    pub model: Option<PathBuf>,
    /// [cpu] Skip the accuracy eval of a checkpoint that ships eval.jsonl.
    #[arg(long)]
    pub no_eval: bool,
    /// [cpu] Score only the first N examples of the checkpoint's eval.jsonl [default: all].
    #[arg(long, value_name = "N")]
    pub eval_limit: Option<usize>,
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
    #[arg(long, value_delimiter = ',', value_name = "R,R,...")]
    pub ranks: Vec<usize>,
    /// Experts per rank (the other way to give one EP size: R = E / this).
    #[arg(long, value_name = "N")]
    pub experts_per_rank: Option<usize>,
    /// Synthetic router skew (busiest expert over the mean under plain
    /// top-k): uniform, mixtral (~2.75x), olmoe (~7x, needs E/k > 7) or a
    /// ratio >= 1 (below E/k). cpu: one value [default: mixtral for random
    /// weights; for a checkpoint its router as trained, which `uniform` also
    /// asks for]; any other value biases a checkpoint's router too. cuda: a
    /// comma list [default: uniform,mixtral,3.5].
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
    /// [cpu, a checkpoint with eval data] Capacity controllers (fixed:GAMMA, budget:RATIOx) the
    /// accuracy eval also runs under drop:score, each layer at its planned capacity (`capmoe
    /// eval --help`). The eval then runs first, and each controller joins the benchmark as a
    /// case with each layer at the mean gamma the controller gave it there, labelled
    /// `drop:score [SPEC]`: the front sets its speedup beside uniform gamma's, and says whether
    /// it beats the best uniform gamma of at least its accuracy.
    #[arg(long, value_delimiter = ',', value_name = "C,C,...")]
    pub controllers: Vec<capmoe::online::ControllerSpec>,
    /// Print the per-layer table too (per rank with --ep); it is always in report.md.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub ep: crate::cli::ep_args::EpArgs,
    #[command(flatten)]
    pub sim: simulate::SimArgs,
    /// Seed of the random weights, prompt ids (cpu), activations and router
    /// logits (cuda).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s [default:
    /// 25 on cpu; 150 on cuda, about what EP all-to-all kernels reach over
    /// NVLink within a node (DeepEP: 150-160 GB/s on H800); H100/H200 NVLink
    /// peaks at 450 GB/s per direction].
    #[arg(long, value_name = "GBPS", value_parser = parse_gbps)]
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

/// `--a2a-gbps`: checked when parsed, finite and in the benchmark's range.
fn parse_gbps(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    capmoe::ep::check_bandwidth(v).map_err(|e| e.to_string())?;
    Ok(v)
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

Default run: bench/models/mixtral-like, a Mixtral-format MoE trained in this repository (hidden 128,
  4 layers, 8 experts top-2; tools/train, README in its folder), with its router as trained (the skew it
  learned, not a synthetic one) and its own held-out text as the batch: 16 x 128 tokens (T = 2048), EP 8
  ranks x 1 expert, 7 policies x 4 gammas, 3 iterations. Then the accuracy: `capmoe eval` on the model's
  eval.jsonl with the same policies, gammas, T and EP size (exact answers of 7 tasks; --no-eval skips it,
  --eval-limit N scores fewer), and the accuracy-speedup front: per policy the smallest gamma within 1
  point of none's accuracy, with the EP speedup there. About 2 minutes on a 2-core CPU. The model is
  small, so its expert times are short and noisy; `ideal` (busiest rank's rows) is exact.
  Random weights (accuracy means nothing there, only KL and top-1): --config small (hidden 1024, 8
  experts top-2, vocab 32000; 2 layers by default), batch 4 x 64 tokens, mixtral skew.

--device cuda: one MoE layer on the GPU (build with --features cuda)
  Mixtral-8x7B's MoE layer by default (8 experts top-2, hidden 4096, intermediate 14336; bf16 weights
  2.8 GB drawn on the device from --seed), for every batch size in --tokens, skew in --skew, EP size in
  --ranks and policy x gamma. The batch is routed on the GPU (GpuRouter). Each rank's expert work
  (GEMM1 + SwiGLU + GEMM2 on the rows the plan sends to its experts, the real CUTLASS kernels) is run
  alone and timed with CUDA events, one rank after another: the grouped GEMMs run the rank's experts only,
  over their span of the whole batch's dispatch rows (the call EP replay makes per rank), so they see exactly
  the rank's per-expert row counts. Launches are queued behind a gate so the events time the GPU, not the host.
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
  vs gamma per policy, a panel per EP size x skew) and gpu-latency-T<T>.png (P50 and P99). With the
  accuracy eval (cpu, a checkpoint with eval.jsonl) also eval.json, accuracy.png and fidelity.json
  (accuracy and its change from none per case beside the speedups, and the front); its tables follow the
  benchmark's on stdout (not with --json, which prints the benchmark report alone). A progress bar shows
  on stderr when it is a terminal.

Examples:
  capmoe bench                                  # the trained model: timing, then accuracy per policy
  capmoe bench --policies none,drop:score,reroute:optimal --capacity-factors 1.0,1.5 --eval-limit 500
  capmoe bench --model bench/models/fine-grained --ranks 8
  capmoe bench --config small --layers 4 --batch 8 --seq-len 64 --iters 5 --out bench/results/ep-cpu
  capmoe bench --config tiny --policies none,drop:score --capacity-factors 1.0,1.5 --ranks 2 --json
  capmoe bench --model path/to/mixtral --skew uniform --ranks 8 --a2a-gbps 50
  capmoe bench --device cuda --out bench/results/ep-gpu
  capmoe bench --device cuda --tokens 4096 --ranks 8 --skew mixtral --policies none,drop:score --iters 50
  capmoe bench --device cuda --config small --tokens 256 --ranks 8 --iters 5 --min-case-ms 0   # short, for nsight
  capmoe bench --device cuda --e2e --out bench/results/ep-gpu-e2e      # whole Mixtral-8x7B on one GPU
  capmoe bench --device cuda --e2e --config mixtral-8x7b --layers 4 --batch 4 --seq-len 512 --iters 3
";

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
