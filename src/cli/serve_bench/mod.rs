//! `capmoe serve-bench`: a request-stream benchmark. Requests arrive by a seeded Poisson or
//! gamma process (or a replayed trace), carry prompts from the model's eval set, and are
//! served by continuous batching with chunked prefill, once per policy x controller (x decode
//! capacity). The scheduler and the reports are the library's ([`capmoe::serve`]).

pub mod args;
mod ep;
mod plot;

pub use args::ServeBenchArgs;

use super::eval::{self, protocol};
use super::model_args::{with_model, ModelArgs, ModelTask};
use super::progress::Bar;
use super::tokenizer::Tok;
use super::CliError;
use args::DecodeCapacity;
use capmoe::ep::{EpBackend, LatencyModel};
use capmoe::model::Model;
use capmoe::progress::{NoProgress, Progress};
use capmoe::serve::{
    self, clock_description, markdown, parse_trace, summarize, Request, RunReport, ServeOptions,
    ServeReport, ServeRun, Slo, StepClock, Workload,
};
use capmoe::trace::Skew;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SERVE_BENCH_HELP: &str = "Requests arrive on a virtual clock by a seeded Poisson or gamma process at --rate (or at the times of a --trace), each carrying a prompt of the model's eval set (request i: example i mod the examples, tokenized as `capmoe eval` does); a request generates exactly its answer's tokens plus the closing newline (at most --max-new-tokens), greedily, with no stop at eos, and is correct when it generates exactly those.\n\n\
Scheduling: continuous batching. Each step admits the arrived requests (FCFS, at most --max-seqs in flight), gives each decoding sequence one token of the --max-batch-tokens budget, then fills the rest with prompt chunks (oldest first), and runs them through the model together (one KV cache per sequence). With --decode-capacity off, a step holding prompt chunks and decode tokens runs two passes: chunks under the policy, decode tokens under none.\n\n\
Capacity: before each capped pass the controller (fixed:GAMMA or budget:RATIOx) plans every layer's capacity from the load monitor, which every pass's plans feed; each layer is routed at its own capacity.\n\n\
Time, modelled EP (the default): a step lasts the measured wall time of its passes in this process, except that the MoE layers' measured time (all experts in one process) is replaced by modelled EP time over --ranks ranks: measured MoE time x the busiest rank's share of the layer's rows, plus two all-to-alls at --a2a-gbps. Rank utilisation is modelled the same way. Nothing is measured on real EP ranks.\n\n\
Time, measured EP (--ep local:R, or --ep mpi under `mpirun -n R` with a build with --features mpi): every pass runs across R EP ranks, each holding only its group of experts (R must divide the experts; CPU only), and every MoE layer exchanges its rows between them (all-to-all-v dispatch and combine, an all-gather of the output). A step lasts the measured wall time of the slowest rank, its waits inside the collectives included; all ranks agree on it, so every rank runs the same schedule. Rank utilisation is each rank's measured expert FFN time over the run's duration, and rank_wait_s its time inside the all-to-alls. Plans, drops and answers equal the one-process run's for the same batches; the batches follow the step times, so they differ from a modelled run's unless every request has arrived before it starts. local:R ranks are threads of this process: they share its cores, with each other and with anything else running. Rank 0 alone prints and writes.\n\n\
Reported per run: requests/s and output tokens/s; TTFT, TPOT, ITL and end-to-end latency at P50/P90/P99 (nearest rank); goodput (requests meeting both --slo-ttft-ms and --slo-tpot-ms per second); per-rank utilisation; drop rate (all and decode tokens); gate mass kept; accuracy of the served answers.\n\n\
JSON (--json, serve.json): model, requests, arrival, rate, seed, max_batch_tokens, max_seqs, ranks, ep_timing (modelled or measured), a2a_gbps (null with --ep), slo, clock, runs (per run: label, policy, controller, decode_capacity, completed, output_tokens, duration_s, throughput_req_s, output_tok_s, ttft_ms, tpot_ms, itl_ms, e2e_ms (each count, p50, p90, p99, mean), goodput_req_s, slo_attained, rank_utilisation, rank_busy_s, rank_wait_s (measured EP only), mean_rank_utilisation, drop_rate, decode_drop_rate, gate_mass_kept, mean_effective_gamma, correct, accuracy, steps, forwards, measured_wall_s, measured_moe_s, modelled_ep_moe_s, modelled_a2a_s (both null with --ep)).\n\n\
Trace file (--trace): one arrival a line, in order: JSON lines {\"arrival_s\": 0.25, \"request\": 3}, or CSV `0.25,3` with an optional header `arrival_s,request`; request is the example's index in the eval data; at most 100000 lines.\n\n\
Examples:\n  capmoe serve-bench --requests 100 --rate 40\n  \
capmoe serve-bench --model bench/models/mixtral-like --requests 200 --rate 60 --arrival gamma:0.5 \\\n      --policies none,drop:score,reroute:next-best --controllers fixed:1.0,budget:1.2x --decode-capacity both --out results/\n  \
capmoe serve-bench --trace arrivals.csv --policies drop:score --json\n  \
capmoe serve-bench --requests 100 --rate 40 --policies none,drop:score --ep local:2\n  \
mpirun -n 2 capmoe serve-bench --requests 100 --rate 40 --ep mpi\n";

/// The modelled all-to-all's bandwidth unless --a2a-gbps says, GB/s.
const DEFAULT_A2A_GBPS: f64 = 25.0;

/// The default checkpoint: in the working directory, else in the source tree.
const DEFAULT_MODEL: &str = "bench/models/mixtral-like";

fn model_dir(args: &ServeBenchArgs) -> Result<PathBuf, CliError> {
    if let Some(d) = &args.model {
        return Ok(d.clone());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    [PathBuf::from(DEFAULT_MODEL), built]
        .into_iter()
        .find(|d| d.join("config.json").is_file())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "the default model {DEFAULT_MODEL} is not here; name a checkpoint with --model DIR"
            ))
        })
}

fn usage(e: serve::ServeError) -> CliError {
    CliError::Usage(e.to_string())
}

/// What one run is: policy, controller, decode capacity.
type RunSpec = (
    capmoe::routing::Policy,
    Option<capmoe::online::ControllerSpec>,
    Option<bool>,
);

fn run_specs(args: &ServeBenchArgs) -> Vec<RunSpec> {
    let decode: &[bool] = match args.decode_capacity {
        DecodeCapacity::Off => &[false],
        DecodeCapacity::On => &[true],
        DecodeCapacity::Both => &[false, true],
    };
    let mut out: Vec<RunSpec> = Vec::new();
    for &p in &args.policies {
        if !p.has_capacity() {
            if !out.iter().any(|s| s.0 == p) {
                out.push((p, None, None));
            }
            continue;
        }
        for &c in &args.controllers {
            for &d in decode {
                if !out.contains(&(p, Some(c), Some(d))) {
                    out.push((p, Some(c), Some(d)));
                }
            }
        }
    }
    out
}

/// What every run serves: the request stream, and how it is described.
struct Stream {
    requests: Vec<Request>,
    arrival: String,
    rate: Option<f64>,
}

/// The request stream of `args` over the eval examples, tokenized for a model of `vocab` ids.
fn stream(
    args: &ServeBenchArgs,
    dir: &Path,
    examples: &[protocol::Example],
    vocab: usize,
) -> Result<Stream, CliError> {
    let a = args;
    let tok = Tok::load(dir, vocab).map_err(eval::EvalError::from)?;
    let stream = protocol::build_stream(examples, |s| tok.encode(s))?;
    let pool: Vec<Workload> = stream
        .spans
        .iter()
        .map(|s| Workload {
            prompt: stream.ids[s.start..s.answer].to_vec(),
            expected: stream.ids[s.answer..s.end.min(s.answer + a.max_new_tokens)].to_vec(),
        })
        .collect();
    let (arrivals, arrival, rate) = match &a.trace {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read --trace {}: {e}", path.display()))
            })?;
            let t = parse_trace(&text).map_err(usage)?;
            let arr: Vec<(f64, usize)> = t.iter().map(|e| (e.arrival_s, e.request)).collect();
            (arr, format!("trace:{}", path.display()), None)
        }
        None => {
            let t = serve::arrival_times(a.requests, a.rate, a.arrival, a.seed).map_err(usage)?;
            let n = pool.len();
            let arr = t.into_iter().enumerate().map(|(i, t)| (t, i % n)).collect();
            (arr, a.arrival.to_string(), Some(a.rate))
        }
    };
    let requests = serve::requests(&arrivals, &pool).map_err(usage)?;
    Ok(Stream {
        requests,
        arrival,
        rate,
    })
}

fn slo(a: &ServeBenchArgs) -> Slo {
    Slo {
        ttft_ms: a.slo_ttft_ms,
        tpot_ms: a.slo_tpot_ms,
    }
}

/// Serves the stream (in `serve_one`) once per run of `args` with `serve_one` under `clock` over `ranks`,
/// ticking `bar` (if any); the runs' reports and raw records.
fn serve_all(
    args: &ServeBenchArgs,
    ranks: usize,
    clock: StepClock,
    bar: Option<&Bar>,
    mut serve_one: impl FnMut(&ServeOptions, &dyn Progress) -> Result<ServeRun, serve::ServeError>,
) -> Result<(Vec<RunReport>, Vec<ServeRun>), CliError> {
    let a = args;
    let (mut reports, mut runs) = (Vec::new(), Vec::new());
    for (policy, controller, decode) in run_specs(a) {
        let opts = ServeOptions {
            policy,
            controller,
            decode_capacity: decode.unwrap_or(false),
            ranks,
            max_batch_tokens: a.max_batch_tokens,
            max_seqs: a.max_seqs,
            window: a.window,
            ema: a.ema,
            clock,
        };
        if let Some(b) = bar {
            b.set_message(&summarize_label(policy, controller, decode));
        }
        let progress: &dyn Progress = match bar {
            Some(b) => b,
            None => &NoProgress,
        };
        let run = serve_one(&opts, progress).map_err(usage)?;
        reports.push(summarize(
            &run,
            &policy.to_string(),
            controller.map(|c| c.to_string()),
            decode,
            slo(a),
        ));
        runs.push(run);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok((reports, runs))
}

/// The benchmark's report of `runs`.
fn outcome(
    args: &ServeBenchArgs,
    dir: &Path,
    stream: &Stream,
    ranks: usize,
    clock: StepClock,
    clock_text: String,
    (reports, runs): (Vec<RunReport>, Vec<ServeRun>),
) -> Outcome {
    let a = args;
    Outcome {
        report: ServeReport {
            model: dir.display().to_string(),
            requests: stream.requests.len(),
            arrival: stream.arrival.clone(),
            rate: stream.rate,
            seed: a.seed,
            max_batch_tokens: a.max_batch_tokens,
            max_seqs: a.max_seqs,
            ranks,
            ep_timing: serve::ep_timing(&clock).into(),
            a2a_gbps: match clock {
                StepClock::Measured { a2a } => a2a.map(|m| m.a2a_gbps),
                _ => None,
            },
            slo: slo(a),
            clock: clock_text,
            runs: reports,
        },
        runs,
    }
}

struct Task<'a> {
    args: &'a ServeBenchArgs,
    dir: PathBuf,
    examples: Vec<protocol::Example>,
}

/// The benchmark's report and each run's raw record (for the figures).
pub struct Outcome {
    pub report: ServeReport,
    pub runs: Vec<ServeRun>,
}

/// `--ranks`, or the largest of 8, 4, 2, 1 that divides the experts.
fn modelled_ranks(a: &ServeBenchArgs, experts: usize) -> usize {
    match a.ranks {
        Some(r) => r,
        None => [8, 4, 2, 1]
            .into_iter()
            .find(|r| experts % r == 0)
            .unwrap_or(1),
    }
}

impl ModelTask for Task<'_> {
    type Output = Outcome;
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<Outcome, CliError> {
        let a = self.args;
        let cfg = model.config();
        let stream = stream(a, &self.dir, &self.examples, cfg.vocab_size)?;
        let ranks = modelled_ranks(a, cfg.num_local_experts);
        let a2a_gbps = a.a2a_gbps.unwrap_or(DEFAULT_A2A_GBPS);
        capmoe::ep::check_bandwidth(a2a_gbps)?;
        let clock = StepClock::Measured {
            a2a: Some(LatencyModel {
                a2a_gbps,
                elem_bytes: 2,
                hidden: cfg.hidden_size,
            }),
        };
        let bar = Bar::new((run_specs(a).len() * stream.requests.len()) as u64);
        let runs = serve_all(a, ranks, clock, Some(&bar), |o, p| {
            serve::serve(&model, &stream.requests, o, p)
        })?;
        let text = clock_description(&clock, ranks);
        Ok(outcome(a, &self.dir, &stream, ranks, clock, text, runs))
    }
}

fn summarize_label(
    p: capmoe::routing::Policy,
    c: Option<capmoe::online::ControllerSpec>,
    d: Option<bool>,
) -> String {
    match (c, d) {
        (Some(c), Some(d)) => format!("{p} {c} decode-cap {}", if d { "on" } else { "off" }),
        _ => p.to_string(),
    }
}

fn check_flags(a: &ServeBenchArgs) -> Result<(), CliError> {
    let bad = |m: String| Err(CliError::Usage(m));
    if a.trace.is_none() {
        serve::check_rate(a.rate).map_err(usage)?;
    }
    if a.max_new_tokens == 0 || a.max_new_tokens > serve::MAX_NEW_TOKENS {
        return bad(format!(
            "--max-new-tokens {} is not in 1..={}",
            a.max_new_tokens,
            serve::MAX_NEW_TOKENS
        ));
    }
    for (what, v) in [
        ("--slo-ttft-ms", a.slo_ttft_ms),
        ("--slo-tpot-ms", a.slo_tpot_ms),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return bad(format!("{what} {v} is not a finite number > 0"));
        }
    }
    if a.policies.is_empty() {
        return bad("--policies names no policy".into());
    }
    if a.policies.iter().any(|p| p.has_capacity()) && a.controllers.is_empty() {
        return bad("--controllers names no controller for the capacity policies".into());
    }
    Ok(())
}

/// Runs every policy x controller (x decode capacity) over the same request stream; `None` on
/// the EP ranks other than 0 (`--ep`), which report nothing.
pub fn bench(args: &ServeBenchArgs) -> Result<Option<Outcome>, CliError> {
    check_flags(args)?;
    let dir = model_dir(args)?;
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "--model {} is not a checkpoint directory; expected config.json, model.safetensors, tokenizer.json and eval.jsonl in it",
            dir.display()
        )));
    }
    let data = args.data.clone().unwrap_or_else(|| dir.join("eval.jsonl"));
    let examples = eval::read_examples(&data, None)?;
    let model_args = ModelArgs {
        model: dir.display().to_string(),
        seed: 0,
        skew: Skew::Uniform,
        device: args.device,
    };
    if let Some(mode) = args.ep.ep {
        return ep::bench_ep(args, mode, &model_args, &dir, &examples);
    }
    with_model(
        &model_args,
        Task {
            args,
            dir,
            examples,
        },
    )
    .map(Some)
}

/// Writes serve.json, serve.md and the two figures into `dir`, each atomically.
pub fn write_out(dir: &Path, o: &Outcome) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(&o.report)?;
    capmoe::io::atomic::write_atomic(&dir.join("serve.json"), &json)?;
    capmoe::io::atomic::write_atomic(&dir.join("serve.md"), markdown(&o.report).as_bytes())?;
    for (name, draw) in [
        ("latency_cdf.png", plot::latency_cdf as plot::Figure),
        ("load.png", plot::load_over_time),
    ] {
        let png = dir.join(name);
        draw(&png, o)
            .map_err(|e| CliError::Usage(format!("cannot draw {}: {e}", png.display())))?;
    }
    Ok(())
}

pub fn run(args: &ServeBenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let Some(o) = bench(args)? else {
        return Ok(());
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &o.report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", markdown(&o.report))?;
    }
    if let Some(dir) = &args.out {
        write_out(dir, &o)?;
    }
    Ok(())
}
