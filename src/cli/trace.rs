//! `capmoe trace`: write a synthetic skewed router trace as .npy: one [tokens, experts] batch,
//! or with `--forwards` a folder of forwards, each [layers, tokens, experts], whose skew can
//! shift at a chosen forward (for `capmoe replay`).

use super::CliError;
use capmoe::io::npy;
use capmoe::trace::{add_bias, normal_bias, synthetic_logits, Skew};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Most forwards one `capmoe trace --forwards` writes.
pub const MAX_FORWARDS: usize = 100_000;
/// Most layers per forward.
pub const MAX_LAYERS: usize = 1024;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Tokens in the batch (rows).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Experts (columns).
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// The top-k the skew is calibrated for.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Busiest expert's load over the mean under plain top-k: uniform,
    /// mixtral (~2.75x), olmoe (~7x, needs E/k > 7) or a number >= 1.
    #[arg(long, default_value = "mixtral")]
    pub skew: Skew,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Add a per-expert logit bias drawn from N(0, STD^2) (seeded by --seed, its own stream)
    /// on top of --skew's: e.g. `--skew uniform --bias-std 1.6`, a hard skew with hot experts
    /// scattered over the index range. 0 (the default) adds nothing.
    #[arg(long, default_value_t = 0.0, value_name = "STD")]
    pub bias_std: f64,
    /// Write this many forwards into the folder --out (forward-00000.npy, ..., each float32
    /// [layers, tokens, experts]) instead of one [tokens, experts] file. Each layer's hot
    /// experts sit at its own rotation, the same in every forward until --shift-at.
    #[arg(long, value_name = "N")]
    pub forwards: Option<usize>,
    /// MoE layers per forward (with --forwards).
    #[arg(long, default_value_t = 1, value_name = "L")]
    pub layers: usize,
    /// From this forward on, every layer's hot experts move by E/2 and the skew becomes
    /// --shift-skew (with --forwards).
    #[arg(long, value_name = "F")]
    pub shift_at: Option<usize>,
    /// The skew after --shift-at (default: each layer's own).
    #[arg(long, value_name = "SKEW")]
    pub shift_skew: Option<Skew>,
    /// Per-layer skews, cycled over the layers (with --forwards; default: --skew for all), so
    /// that layers differ the way real routers' layers do.
    #[arg(long, value_delimiter = ',', value_name = "SKEW,..")]
    pub layer_skews: Vec<Skew>,
    /// Output .npy (float32, [tokens, experts]), or the folder with --forwards.
    #[arg(long, value_name = "FILE.npy|DIR")]
    pub out: PathBuf,
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    capmoe::io::atomic::write_atomic(path, bytes)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
}

fn bias_note(std: f64) -> String {
    if std > 0.0 {
        format!(", per-expert bias N(0, {std}^2)")
    } else {
        String::new()
    }
}

pub fn run(args: &TraceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let Some(forwards) = args.forwards else {
        for (set, flag) in [
            (args.layers != 1, "--layers"),
            (args.shift_at.is_some(), "--shift-at"),
            (args.shift_skew.is_some(), "--shift-skew"),
            (!args.layer_skews.is_empty(), "--layer-skews"),
        ] {
            if set {
                return Err(CliError::Usage(format!(
                    "{flag} describes forwards: it needs --forwards N (and --out DIR)"
                )));
            }
        }
        let mut l = synthetic_logits(args.tokens, args.experts, args.top_k, args.skew, args.seed)?;
        add_bias(
            &mut l,
            &normal_bias(args.experts, args.bias_std, args.seed)?,
        );
        write(&args.out, &npy::to_bytes(&l, args.tokens, args.experts))?;
        writeln!(
            out,
            "wrote {} ({} x {}, skew {}{})",
            args.out.display(),
            args.tokens,
            args.experts,
            args.skew,
            bias_note(args.bias_std)
        )?;
        return Ok(());
    };
    if forwards == 0 || forwards > MAX_FORWARDS {
        return Err(CliError::Usage(format!(
            "--forwards {forwards}: expected 1..={MAX_FORWARDS}"
        )));
    }
    if args.layers == 0 || args.layers > MAX_LAYERS {
        return Err(CliError::Usage(format!(
            "--layers {}: expected 1..={MAX_LAYERS}",
            args.layers
        )));
    }
    if args.shift_skew.is_some() && args.shift_at.is_none() {
        return Err(CliError::Usage(
            "--shift-skew sets the skew after the shift: it needs --shift-at F".into(),
        ));
    }
    if let Some(f) = args.shift_at.filter(|&f| f >= forwards) {
        return Err(CliError::Usage(format!(
            "--shift-at {f} is past the last forward ({}); expected 0..{forwards}",
            forwards - 1
        )));
    }
    let per_file = args
        .layers
        .checked_mul(args.tokens)
        .and_then(|n| n.checked_mul(args.experts))
        .filter(|&n| n as u64 <= npy::MAX_VALUES as u64)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--layers x --tokens x --experts is over {} values per forward",
                npy::MAX_VALUES
            ))
        })?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", args.out.display())))?;
    let e = args.experts;
    for f in 0..forwards {
        let shifted = args.shift_at.is_some_and(|s| f >= s);
        let mut data = Vec::with_capacity(per_file);
        for l in 0..args.layers {
            let own = match args.layer_skews.as_slice() {
                [] => args.skew,
                s => s[l % s.len()],
            };
            let skew = match (shifted, args.shift_skew) {
                (true, Some(s)) => s,
                _ => own,
            };
            let seed = args.seed ^ ((f as u64) << 32) ^ (l as u64).wrapping_mul(0x9E37_79B9);
            let mut x = synthetic_logits(args.tokens, e, args.top_k, skew, seed)?;
            add_bias(&mut x, &normal_bias(e, args.bias_std, seed)?);
            // Rotate columns: layer l's hottest expert is expert (l + shift) % E.
            let rot = (l + if shifted { e / 2 } else { 0 }) % e;
            for row in x.chunks_exact(e) {
                data.extend((0..e).map(|c| row[(c + e - rot) % e]));
            }
        }
        let path = args.out.join(format!("forward-{f:05}.npy"));
        write(
            &path,
            &npy::layers_to_bytes(&data, args.layers, args.tokens, e)?,
        )?;
    }
    writeln!(
        out,
        "wrote {forwards} forwards to {} ({} layers x {} tokens x {} experts, skew {}{})",
        args.out.display(),
        args.layers,
        args.tokens,
        e,
        args.skew,
        match args.shift_at {
            Some(s) => format!(
                ", shifting at forward {s}{}",
                args.shift_skew
                    .map_or(String::new(), |k| format!(" to {k}"))
            ),
            None => String::new(),
        }
    )?;
    Ok(())
}
