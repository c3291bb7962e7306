//! Flags of `capmoe serve-bench`.

use super::super::ep_args::EpArgs;
use super::super::model_args::ModelDevice;
use capmoe::online::ControllerSpec;
use capmoe::routing::Policy;
use capmoe::serve::ArrivalProcess;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Whether decode tokens are capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecodeCapacity {
    /// Decode tokens routed under `none` (the paper's code).
    Off,
    /// Decode tokens capped like prompt tokens.
    On,
    /// One run each way.
    Both,
}

#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Checkpoint directory with eval.jsonl and tokenizer.json [default: bench/models/mixtral-like].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Prompts and answers, JSONL of {"task","prompt","answer"} [default: DIR/eval.jsonl].
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Requests per run (1..=100000); request i serves example i mod the examples (a --trace
    /// sets its own).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub requests: usize,
    /// Mean arrival rate, requests per second (> 0, at most 1e6).
    #[arg(
        long,
        default_value_t = 20.0,
        value_name = "R",
        conflicts_with = "trace"
    )]
    pub rate: f64,
    /// Arrival process: poisson, or gamma:SHAPE (SHAPE in [0.01, 100]; below 1 is burstier).
    #[arg(long, default_value = "poisson", value_name = "PROCESS", value_parser = parse_arrival, conflicts_with = "trace")]
    pub arrival: ArrivalProcess,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Replay arrivals from a trace file instead (JSON lines or CSV; format below).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Capacity policies, comma-separated (`none` runs once, without a controller).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,drop:score",
        value_name = "P,P,..."
    )]
    pub policies: Vec<Policy>,
    /// Capacity controllers, comma-separated: fixed:GAMMA, budget:RATIOx.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fixed:1.0",
        value_name = "C,C,..."
    )]
    pub controllers: Vec<ControllerSpec>,
    /// Whether decode tokens are capped too.
    #[arg(long, value_enum, default_value = "off")]
    pub decode_capacity: DecodeCapacity,
    /// Tokens per step, decode and prompt chunks together (1..=65536).
    #[arg(long, default_value_t = 256, value_name = "T")]
    pub max_batch_tokens: usize,
    /// Sequences in flight at once (1..=1024).
    #[arg(long, default_value_t = 32, value_name = "S")]
    pub max_seqs: usize,
    /// Most output tokens per request (1..=4096): a longer answer is cut to it and scored on
    /// that prefix.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_new_tokens: usize,
    /// EP ranks of the modelled EP (divides E) [default: the largest of 8, 4, 2, 1 that does];
    /// with --ep, the ranks running (a different --ranks is refused).
    #[arg(long, value_name = "R")]
    pub ranks: Option<usize>,
    /// Bandwidth of the modelled all-to-all, GB/s per rank and direction [default: 25];
    /// refused with --ep (the exchanges are measured there).
    #[arg(long, value_name = "GBPS")]
    pub a2a_gbps: Option<f64>,
    /// Forwards the load monitor keeps per layer (at least 1).
    #[arg(long, default_value_t = 16, value_name = "W")]
    pub window: usize,
    /// Weight of the newest forward in the monitor's demand EMA, in (0, 1].
    #[arg(long, default_value_t = 0.25, value_name = "A")]
    pub ema: f64,
    /// Goodput's time-to-first-token objective, ms.
    #[arg(long, default_value_t = 500.0, value_name = "MS")]
    pub slo_ttft_ms: f64,
    /// Goodput's time-per-output-token objective, ms.
    #[arg(long, default_value_t = 50.0, value_name = "MS")]
    pub slo_tpot_ms: f64,
    /// Also write serve.json, serve.md, latency_cdf.png and load.png into DIR (atomically).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the JSON report instead of the Markdown one.
    #[arg(long)]
    pub json: bool,
    /// Where the model runs (`cuda` needs a build with `--features cuda`; not with --ep).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: ModelDevice,
    #[command(flatten)]
    pub ep: EpArgs,
}

fn parse_arrival(s: &str) -> Result<ArrivalProcess, String> {
    s.parse()
        .map_err(|e: capmoe::serve::ServeError| e.to_string())
}
