//! `--record-router DIR`: each forward's router logits as one `[layers, tokens, experts]` .npy
//! (forward-00000.npy, ...), what `capmoe replay --traces DIR` reads.

use super::CliError;
use capmoe::io::npy::layers_to_bytes;
use capmoe::model::RecordedForward;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Write every forward's router logits (bias included) to DIR as forward-00000.npy, ...
    /// (float32, [layers, tokens, experts]): the prefill, then each decode step. `capmoe replay
    /// --traces DIR` routes them again under a controller. Not with --ep.
    #[arg(long, value_name = "DIR")]
    pub record_router: Option<PathBuf>,
}

/// Writes `forwards` into `dir` (created if missing), each file atomically.
pub fn write_forwards(dir: &Path, forwards: &[RecordedForward]) -> Result<(), CliError> {
    let io = |p: &Path, e: &dyn std::fmt::Display| {
        CliError::Usage(format!(
            "--record-router: cannot write {}: {e}",
            p.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    for (i, f) in forwards.iter().enumerate() {
        let path = dir.join(format!("forward-{i:05}.npy"));
        let bytes = layers_to_bytes(&f.logits, f.layers, f.tokens, f.experts)?;
        capmoe::io::atomic::write_atomic(&path, &bytes).map_err(|e| io(&path, &e))?;
    }
    Ok(())
}
