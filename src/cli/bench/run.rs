//! Running each mode and writing its reports and figures.

use super::*;
use crate::cli::eval::report::EvalReport;
use crate::cli::progress::Bar;
use crate::cli::CliError;
use capmoe::backend::CpuBackend;
use capmoe::ep::EpBackend;
use capmoe::ep::{self, plot, report, BenchReport, BenchSetup, EpError};
use capmoe::trace::Skew;
use std::io::Write;
use std::path::Path;

pub(super) fn progress_bar(len_hint: u64) -> Bar {
    Bar::new(len_hint)
}

/// The skew and the one EP size of a whole-model run, checked before the
/// model is built.
pub(super) fn e2e_flags(args: &BenchArgs) -> Result<(Option<Skew>, Option<usize>), CliError> {
    if let Some(&g) = args
        .capacity_factors
        .iter()
        .find(|g| !capmoe::routing::valid_capacity_factor(**g))
    {
        return Err(EpError::InvalidCapacityFactor(g).into());
    }
    let skew = match args.skew.as_slice() {
        [] => None,
        [s] => Some(*s),
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

/// The whole-model benchmark ([`ep::run`]) on `backend`. With `controllers` (and a checkpoint
/// with eval data) the eval runs first, so that each controller's per-layer gammas join the
/// benchmark as cases; the eval comes back with the report.
pub(super) fn whole_model<B: EpBackend>(
    args: &BenchArgs,
    backend: B,
    d: &E2eDefaults,
    controllers: bool,
) -> Result<(BenchReport, Option<EvalReport>), CliError> {
    let (skew, one_rank) = e2e_flags(args)?;
    let checkpoint = trained::checkpoint(args)?;
    // A checkpoint keeps its router as trained unless --skew asks otherwise.
    let skew_label = match (skew, &checkpoint) {
        (None | Some(Skew::Uniform), Some(_)) => "as trained".to_string(),
        (s, _) => s.unwrap_or(Skew::Mixtral).to_string(),
    };
    let skew = skew.unwrap_or(if checkpoint.is_some() {
        Skew::Uniform
    } else {
        Skew::Mixtral
    });
    let (model, label) = load_model(args, checkpoint.as_deref(), skew, backend, d)?;
    let cfg = model.config();
    let load_layer = args.load_layer.unwrap_or(0);
    let eval_text = checkpoint.as_deref().filter(|c| trained::has_eval_data(c));
    let (batch, seq_len) = match eval_text {
        Some(_) => (trained::EVAL_BATCH, trained::EVAL_SEQ_LEN),
        None => (d.batch, d.seq_len),
    };
    let mut setup = BenchSetup {
        batch: args.batch.unwrap_or(batch),
        seq_len: args.seq_len.unwrap_or(seq_len),
        ranks: ranks(one_rank, args.experts_per_rank, cfg.num_local_experts)?,
        policies: args.policies.clone(),
        capacity_factors: args.capacity_factors.clone(),
        iters: args.iters.unwrap_or(d.iters),
        a2a_gbps: args.a2a_gbps.unwrap_or(d.a2a_gbps),
        elem_bytes: WIRE_ELEM_BYTES,
        seed: args.seed,
        load_layer,
        model_label: label,
        skew_label,
        throughput: d.throughput || args.decode_steps.is_some(),
        decode_steps: args.decode_steps.unwrap_or(d.decode_steps),
        interleave: d.interleave,
        layer_cases: Vec::new(),
    };
    setup.validate(cfg.num_local_experts, cfg.num_hidden_layers)?;
    let mut ev = None;
    if controllers && !args.controllers.is_empty() {
        if let Some(eargs) = trained::eval_args(args, setup.batch, setup.seq_len, setup.ranks)? {
            let e = crate::cli::eval::evaluate(&eargs)?;
            setup.layer_cases = trained::controller_cases(&e);
            setup.validate(cfg.num_local_experts, cfg.num_hidden_layers)?;
            ev = Some(e);
        }
    }
    let out_dir = args.out.clone().unwrap_or_else(|| d.out.into());
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let pb = progress_bar(1);
    let mut rep = match eval_text {
        Some(dir) => {
            let prompts = trained::eval_prompts(dir, setup.batch, setup.seq_len, cfg.vocab_size)?;
            ep::run_prompts(&model, &setup, &prompts, &pb)?
        }
        None => ep::run(&model, &setup, &pb)?,
    };
    pb.finish_and_clear();
    let figs = plot::write_figures(&out_dir, &rep, load_layer)?;
    rep.figures = figs.iter().map(|p| p.display().to_string()).collect();
    write_reports(&out_dir, &rep, &mut |md| report::write_markdown(md, &rep))?;
    Ok((rep, ev))
}

/// Runs the whole model end to end on the GPU (`--device cuda --e2e`):
/// the CPU benchmark's method on [`capmoe::backend::CudaBackend`]; returns the
/// report (also written under --out).
#[cfg(feature = "cuda")]
pub fn bench_gpu_e2e(args: &BenchArgs) -> Result<BenchReport, CliError> {
    use capmoe::backend::CudaBackend;
    use capmoe::cuda::GpuContext;
    refuse_flags(args)?;
    if mode(args) != Mode::GpuE2e {
        return Err(CliError::Usage(
            "bench_gpu_e2e() runs --device cuda --e2e".into(),
        ));
    }
    e2e_flags(args)?;
    let gpu = GpuContext::new(0).map_err(EpError::from)?;
    let backend = CudaBackend::new(&gpu)
        .and_then(CudaBackend::with_decode_graphs)
        .map_err(EpError::from)?;
    Ok(whole_model(args, backend, &GPU_E2E, false)?.0)
}

/// Writes `report.json` and `report.md` (by `markdown`) into `dir`.
pub(super) fn write_reports<R: serde::Serialize>(
    dir: &Path,
    rep: &R,
    markdown: &mut dyn FnMut(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let json_path = dir.join("report.json");
    let text = serde_json::to_string_pretty(rep)?;
    capmoe::io::atomic::write_atomic(&json_path, (text + "\n").as_bytes())
        .map_err(io_err(&json_path))?;
    let md_path = dir.join("report.md");
    let mut md = Vec::new();
    markdown(&mut md)?;
    capmoe::io::atomic::write_atomic(&md_path, &md).map_err(io_err(&md_path))?;
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
    setup.tune_cache = Some(crate::cli::tune::open_cache(
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
    if !args.sim.simulate_ep.is_empty() {
        return super::simulate::run(args, out);
    }
    if let Some(ep) = args.ep.ep {
        return super::ep::run_ep(args, ep, out);
    }
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
            refuse_flags(args)?;
            let (rep, ev) = whole_model(args, CpuBackend, &CPU_E2E, true)?;
            write_e2e(out, args, &rep)?;
            trained::fidelity(args, &rep, ev, out)
        }
    }
}

#[cfg(feature = "cuda")]
pub(super) fn run_gpu_layer(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
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
pub(super) fn run_gpu_e2e(args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let rep = bench_gpu_e2e(args)?;
    write_e2e(out, args, &rep)
}

#[cfg(not(feature = "cuda"))]
pub(super) fn run_gpu_layer(_: &BenchArgs, _: &mut dyn Write) -> Result<(), CliError> {
    Err(EpError::CudaNotCompiled.into())
}

#[cfg(not(feature = "cuda"))]
pub(super) fn run_gpu_e2e(_: &BenchArgs, _: &mut dyn Write) -> Result<(), CliError> {
    Err(EpError::CudaNotCompiled.into())
}

pub(super) fn write_e2e(
    out: &mut dyn Write,
    args: &BenchArgs,
    rep: &BenchReport,
) -> Result<(), CliError> {
    if args.json {
        serde_json::to_writer_pretty(&mut *out, rep)?;
        writeln!(out)?;
    } else if args.verbose {
        report::write_table(out, rep)?;
    } else {
        report::write_summary(out, rep)?;
    }
    Ok(())
}
