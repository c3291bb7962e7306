//! `capmoe bench --ep local:R|mpi`: the measured EP benchmark. Every rank
//! holds its expert group and runs the same prefill forwards; ranks wait for
//! each other inside real collectives (threads, or MPI processes). Rank 0
//! prints the summary and writes report.json, report.md and speedup.png.

use super::trained::{checkpoint, eval_prompts, has_eval_data};
use super::*;
use crate::cli::ep_args::{on_ranks, EpMode};
use crate::cli::CliError;
use capmoe::backend::CpuBackend;
use capmoe::ep::comm::Communicator;
use capmoe::ep::dist::{ep_bench, expert_group, EpBenchReport, EpBenchSetup};
use capmoe::ep::{cases, prompt_ids, LatencyModel};
use capmoe::model::{InitOptions, MixtralConfig, Model};
use capmoe::progress::NoProgress;
use capmoe::routing::RouterConfig;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Timed forwards per case, at least, by default.
const MIN_ITERS: usize = 5;
/// Timed forwards per case, at most.
const MAX_ITERS: usize = 60;
/// The median must move less than this over the last three forwards.
const TOLERANCE: f64 = 0.02;
/// Or a case stops after this long.
const CASE_CAP: Duration = Duration::from_secs(20);

/// Flags the measured EP benchmark does not take.
fn refuse(args: &BenchArgs) -> Result<(), CliError> {
    let flags = [
        (args.device != Device::Cpu, "--device cuda"),
        (args.e2e, "--e2e"),
        (args.decode_steps.is_some(), "--decode-steps"),
        (!args.tokens.is_empty(), "--tokens"),
        (args.experts_per_rank.is_some(), "--experts-per-rank"),
        (args.load_layer.is_some(), "--load-layer"),
        (args.tune, "--tune"),
        (args.min_case_ms.is_some(), "--min-case-ms"),
        (args.telemetry_ms.is_some(), "--telemetry-ms"),
        (!args.gemm_variants.is_empty(), "--gemm-variants"),
        (
            args.experts.is_some() || args.hidden.is_some(),
            "--experts/--hidden",
        ),
        (
            args.intermediate.is_some() || args.top_k.is_some(),
            "--intermediate/--top-k",
        ),
    ];
    setup::refuse_with(&flags, "--ep (the measured EP benchmark runs the whole model on CPU ranks; the rank count is the --ep count)")
}

/// What every rank builds alike: the config, the prompts, the cases.
struct Plan {
    dir: Option<PathBuf>,
    cfg: MixtralConfig,
    prompts: Vec<Vec<u32>>,
    setup: EpBenchSetup,
    label: String,
}

fn plan(args: &BenchArgs) -> Result<Plan, CliError> {
    refuse(args)?;
    let dir = checkpoint(args)?;
    let cfg = match &dir {
        Some(d) => MixtralConfig::from_path(d)?,
        None => {
            let name = args.config.as_deref().unwrap_or("small");
            setup::check_builtin(name)?;
            let mut c = MixtralConfig::builtin(name)?;
            c.num_hidden_layers = match (args.layers, name) {
                (Some(0), _) => return Err(capmoe::ep::EpError::Zero { what: "--layers" }.into()),
                (Some(n), _) => n,
                (None, "small") => DEFAULT_SMALL_LAYERS,
                (None, _) => c.num_hidden_layers,
            };
            crate::cli::model_args::check_random_size(name, &c, "use a smaller built-in")?;
            c
        }
    };
    let (batch, seq) = (args.batch.unwrap_or(4), args.seq_len.unwrap_or(64));
    if batch == 0 || seq == 0 {
        return Err(CliError::Usage(
            "--batch and --seq-len must be at least 1".into(),
        ));
    }
    let prompts = match &dir {
        Some(d) if has_eval_data(d) => eval_prompts(d, batch, seq, cfg.vocab_size)?,
        _ => prompt_ids(batch, seq, cfg.vocab_size, args.seed),
    };
    let k = cfg.num_experts_per_tok;
    let iters = args.iters.unwrap_or(MIN_ITERS).max(1);
    let setup = EpBenchSetup {
        cases: cases(&args.policies, &args.capacity_factors)
            .into_iter()
            .map(|(p, g)| {
                let r = RouterConfig::new(k, p);
                g.map_or(r.clone(), |g| r.with_capacity_factor(g))
            })
            .collect(),
        warmup: 1,
        min_iters: iters,
        max_iters: MAX_ITERS.max(iters),
        tolerance: TOLERANCE,
        time_cap: CASE_CAP,
        model: LatencyModel {
            a2a_gbps: args.a2a_gbps.unwrap_or(25.0),
            elem_bytes: std::mem::size_of::<f32>(),
            hidden: cfg.hidden_size,
        },
    };
    let label = dir.as_ref().map_or_else(
        || args.config.clone().unwrap_or("small".into()),
        |d| d.display().to_string(),
    );
    Ok(Plan {
        dir,
        cfg,
        prompts,
        setup,
        label,
    })
}

/// This rank's model: its expert group only.
fn rank_model(
    args: &BenchArgs,
    p: &Plan,
    comm: &dyn Communicator,
) -> Result<Model<CpuBackend>, CliError> {
    let group = expert_group(comm.size(), comm.rank(), p.cfg.num_local_experts)?;
    let skew = args.skew.first().copied();
    Ok(match &p.dir {
        Some(d) => {
            let mut m = Model::load_expert_group(CpuBackend, d, group.clone())?;
            if let Some(s) = skew {
                m.apply_skew(s, args.seed)?;
            }
            m
        }
        None => {
            let opts =
                InitOptions::new(args.seed).with_skew(skew.unwrap_or(capmoe::trace::Skew::Mixtral));
            Model::random_group(CpuBackend, p.cfg.clone(), &opts, group, &NoProgress)?
        }
    })
}

pub(super) fn run_ep(args: &BenchArgs, mode: EpMode, out: &mut dyn Write) -> Result<(), CliError> {
    let p = plan(args)?;
    let refs: Vec<&[u32]> = p.prompts.iter().map(Vec::as_slice).collect();
    let bar = progress_bar(p.setup.cases.len() as u64);
    let rep = on_ranks(&args.ep, mode, |comm| {
        if !args.ranks.is_empty() && args.ranks != [comm.size()] {
            return Err(CliError::Usage(format!(
                "--ranks {:?} disagrees with the {} EP ranks running; drop --ranks",
                args.ranks,
                comm.size()
            )));
        }
        let model = rank_model(args, &p, comm)?;
        let rep = ep_bench(comm, &model, &refs, &p.setup, |case| {
            if comm.rank() == 0 {
                bar.set_message(case.to_string());
                bar.inc(1);
            }
        })?;
        Ok(rep)
    })?;
    bar.finish_and_clear();
    let Some(Some(rep)) = rep else {
        return Ok(());
    };
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench/out-ep"));
    std::fs::create_dir_all(&dir).map_err(setup::io_err(&dir))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    write_reports(&dir, &rep, &mut |md| {
        markdown(md, &rep, &p.label, &command, true)
    })?;
    let fig = dir.join("speedup.png");
    capmoe::ep::dist::speedup_figure(&fig, &rep).map_err(|e| capmoe::ep::EpError::Plot {
        path: fig.display().to_string(),
        message: e.to_string(),
    })?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rep)?;
        writeln!(out)?;
    } else {
        markdown(out, &rep, &p.label, &command, args.verbose)?;
        writeln!(
            out,
            "\nwrote {}/report.json, report.md, speedup.png",
            dir.display()
        )?;
    }
    Ok(())
}

fn gb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// The summary table, and with `layers` the per-layer, per-rank table.
fn markdown(
    out: &mut dyn Write,
    r: &EpBenchReport,
    model: &str,
    command: &str,
    layers: bool,
) -> std::io::Result<()> {
    writeln!(
        out,
        "# Measured EP benchmark: {} ranks, {} tokens per forward\n",
        r.ranks, r.tokens
    )?;
    writeln!(out, "Model `{model}`. Command: `{command}`\n")?;
    writeln!(
        out,
        "Each rank holds {} of {} expert parameters ({:.1}%). Times are measured on each rank; a layer's latency is its slowest rank's. *Modelled* is today's model (the slowest rank's measured expert time plus the all-to-all at the stated bandwidth), beside the measurement.\n",
        r.expert_params_held,
        r.expert_params_total,
        100.0 * r.expert_params_held as f64 / r.expert_params_total.max(1) as f64
    )?;
    writeln!(out, "| case | forwards | MoE ms min / med / max | speedup med [min-max] | ideal | modelled | measured / modelled | note |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for c in &r.cases {
        let name = c
            .gamma
            .map_or(c.policy.clone(), |g| format!("{} @ {g}", c.policy));
        writeln!(
            out,
            "| {name} | {}{} | {:.2} / {:.2} / {:.2} | {:.2}x [{:.2}-{:.2}] | {:.2}x | {:.2}x | {:.2} | {} |",
            c.iters,
            if c.settled { "" } else { " (cap)" },
            c.moe_ms.min,
            c.moe_ms.p50,
            c.moe_ms.max,
            c.speedup.p50,
            c.speedup.min,
            c.speedup.max,
            c.ideal_speedup,
            c.modelled_speedup,
            c.measured_over_modelled,
            c.above_ideal.as_deref().map_or("", |_| "above ideal (see below)")
        )?;
    }
    if r.cases.iter().any(|c| c.above_ideal.is_some()) {
        writeln!(out, "\n*Above ideal*: the ideal counts only the busiest rank's rows. A measured speedup above it comes from noise (a loaded machine, a slow baseline forward) or from work that shrinks with every rank's rows (the dispatch and combine copies, the all-gather), not from the straggler.")?;
    }
    if !layers {
        return Ok(());
    }
    writeln!(out, "\n## Per layer and rank (medians)\n")?;
    writeln!(out, "| case | layer | rank | rows | expert ms | dispatch wait ms | combine wait ms | layer ms | MB sent | MB recv |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    for c in &r.cases {
        let name = c
            .gamma
            .map_or(c.policy.clone(), |g| format!("{} @ {g}", c.policy));
        for (l, ranks) in c.layers.iter().enumerate() {
            for (k, x) in ranks.iter().enumerate() {
                writeln!(
                    out,
                    "| {name} | {l} | {k} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                    x.rows,
                    x.expert_ms,
                    x.dispatch_ms,
                    x.combine_ms,
                    x.total_ms,
                    gb(x.sent_bytes),
                    gb(x.recv_bytes)
                )?;
            }
        }
    }
    Ok(())
}
