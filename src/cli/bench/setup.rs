//! From flags to a checked setup: the model, the EP sizes, the flags each mode refuses.

use super::*;
use crate::cli::model_args::check_random_size;
use crate::cli::CliError;
use capmoe::ep::gpu::{GpuBenchSetup, LayerShape};
use capmoe::ep::EpBackend;
use capmoe::ep::EpError;
use capmoe::model::{InitOptions, MixtralConfig, Model, BUILTIN_NAMES};
use capmoe::trace::Skew;
use std::path::Path;

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EpError + '_ {
    move |source| EpError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A usage error naming every flag of `flags` that is set, as `FLAGS cannot go with WHAT`.
pub(super) fn refuse_with(flags: &[(bool, &str)], what: &str) -> Result<(), CliError> {
    let given: Vec<&str> = flags
        .iter()
        .filter_map(|(on, f)| on.then_some(*f))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "{} cannot go with {what}",
        given.join(", ")
    )))
}

pub(super) fn check_builtin(name: &str) -> Result<(), CliError> {
    if BUILTIN_NAMES.contains(&name) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "--config `{name}` is not a built-in shape; expected one of {} (or --model DIR for a checkpoint)",
        BUILTIN_NAMES.join(", ")
    )))
}

/// weights tick a progress bar over the layers on stderr.
/// Loads or builds the model on `backend`, with the skew applied; random
/// weights tick a progress bar over the layers on stderr.
pub(super) fn load_model<B: EpBackend>(
    args: &BenchArgs,
    checkpoint: Option<&Path>,
    skew: Skew,
    backend: B,
    d: &E2eDefaults,
) -> Result<(Model<B>, String), CliError> {
    if let Some(dir) = checkpoint {
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
pub(super) fn ranks(
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
pub(super) enum Mode {
    Cpu,
    GpuLayer,
    GpuE2e,
}

pub(super) fn mode(args: &BenchArgs) -> Mode {
    match (args.device, args.e2e) {
        (Device::Cpu, _) => Mode::Cpu,
        (Device::Cuda, false) => Mode::GpuLayer,
        (Device::Cuda, true) => Mode::GpuE2e,
    }
}

/// The flags of one benchmark given to another: a usage error naming them.
pub(super) fn refuse_flags(args: &BenchArgs) -> Result<(), CliError> {
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
        (args.no_eval, "--no-eval"),
        (args.eval_limit.is_some(), "--eval-limit"),
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
