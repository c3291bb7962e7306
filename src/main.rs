//! `capmoe`: capacity-aware MoE routing and benchmarks.

mod cli;

use capmoe::routing::POLICY_HELP;
use clap::{Parser, Subcommand};
use cli::CliError;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "capmoe", version, about = "Capacity-aware Mixture-of-Experts inference", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The expert-parallel straggler benchmark: speedup of every policy x gamma, end to end on the CPU model (and fidelity) or one MoE layer on the GPU (--device cuda).
    #[command(after_long_help = cli::bench::BENCH_HELP)]
    Bench(Box<cli::bench::BenchArgs>),
    /// Route a trace of router logits under a capacity policy and report the plan.
    #[command(after_long_help = policy_help())]
    Route(cli::route::RouteArgs),
    /// Write a synthetic router trace with a chosen skew (.npy, float32), or a folder of forwards whose skew shifts.
    Trace(cli::trace::TraceArgs),
    /// Route a folder of forwards with the load monitor and a capacity controller (fixed gamma or a latency budget) in the loop.
    #[command(after_long_help = cli::replay::REPLAY_HELP)]
    Replay(cli::replay::ReplayArgs),
    /// Fit the per-layer cost model (ms per busiest-rank row) from a measured EP benchmark
    #[command(after_long_help = cli::calibrate::CALIBRATE_HELP)]
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Run token ids through a Mixtral model (checkpoint or built-in random) and print logits.
    #[command(after_long_help = MODEL_HELP)]
    Logits(cli::logits::LogitsArgs),
    /// Greedy generation with a Mixtral model; prints the new ids.
    #[command(after_long_help = MODEL_HELP)]
    Generate(cli::generate::GenerateArgs),
    /// Exact-answer accuracy of a trained checkpoint under every capacity policy and gamma (prefill, capacity on), with NLL, KL to none, load and drops.
    #[command(after_long_help = cli::eval::EVAL_HELP)]
    Eval(Box<cli::eval::EvalArgs>),
    /// A request-stream benchmark: Poisson/gamma arrivals (or a trace) of eval-set prompts served by continuous batching per policy and capacity controller; latency percentiles, goodput, modelled EP utilisation, drops, accuracy.
    #[command(after_long_help = cli::serve_bench::SERVE_BENCH_HELP)]
    ServeBench(Box<cli::serve_bench::ServeBenchArgs>),
    /// Time the expert FFN's grouped-GEMM variants on this GPU and cache the fastest per token bucket (needs the `cuda` feature).
    #[command(after_long_help = cli::tune::tune_help())]
    Tune(cli::tune::TuneArgs),
}

const MODEL_HELP: &str = "Every MoE layer routes all tokens of the batch through the routing contract (`capmoe route --help` lists the policies); tokens dropped by capacity pass through the residual only.\n\n\
Examples:\n  capmoe logits --model tests/fixtures/tiny-mixtral/f32 --ids 1,2,3 --json\n  \
capmoe logits --model tiny --seed 7 --ids 1,2,3 --policy drop:score --capacity-factor 1.0\n  \
capmoe generate --model small --skew mixtral --ids 1,2,3 --max-new-tokens 8 --ignore-eos --json\n";

fn policy_help() -> String {
    let mut s = String::from("Policies:\n");
    for (name, what) in POLICY_HELP {
        s.push_str(&format!("  {name:<20} {what}\n"));
    }
    s.push_str(
        "\nJSON keys (--format json): tokens, experts, top_k, capacity (C or null), assignments \
         (per token, [{expert, weight}] in decreasing p), load (per expert), dropped (token slots lost), \
         rerouted (served outside the top-k), gate_mass_kept (served sum p / top-k sum p).\n\n\
         Example:\n  capmoe route --logits examples/traces/mixtral-skew-t1024-e8.npy --top-k 2 \\\n      --policy drop:score --capacity-factor 1.5\n",
    );
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let res: Result<(), CliError> = match &cli.command {
        Command::Bench(a) => cli::bench::run(a, &mut out),
        Command::Route(a) => cli::route::run(a, &mut out),
        Command::Trace(a) => cli::trace::run(a, &mut out),
        Command::Replay(a) => cli::replay::run(a, &mut out),
        Command::Calibrate(a) => cli::calibrate::run(a, &mut out),
        Command::Logits(a) => cli::logits::run(a, &mut out),
        Command::Generate(a) => cli::generate::run(a, &mut out),
        Command::Eval(a) => cli::eval::run(a, &mut out),
        Command::ServeBench(a) => cli::serve_bench::run(a, &mut out),
        Command::Tune(a) => cli::tune::run(a, &mut out),
    };
    let _ = out.flush();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
