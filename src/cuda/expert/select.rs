//! Which compiled variant runs each GEMM: a fixed pair, the autotuner's
//! cached choice for the batch's token bucket, or a shape heuristic.

use super::variants::{CompiledVariant, Schedule, COMPILED};
use crate::cuda::GpuError;

/// The variants of GEMM1 (`x W13^T`) and GEMM2 (`h W2^T`).
#[derive(Clone, Copy)]
pub struct VariantPair {
    /// Runs GEMM1, `x W13^T`.
    pub gemm1: &'static CompiledVariant,
    /// Runs GEMM2, `h W2^T`.
    pub gemm2: &'static CompiledVariant,
}

impl std::fmt::Debug for VariantPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {}",
            self.gemm1.variant.name, self.gemm2.variant.name
        )
    }
}

/// The compiled variants that run on compute capability `cc`, in declaration
/// order (the tie-break order everywhere).
pub(crate) fn runnable(cc: (u32, u32)) -> Vec<&'static CompiledVariant> {
    COMPILED
        .iter()
        .filter(|v| v.variant.runs_on(cc.0, cc.1))
        .collect()
}

fn names(vs: &[&'static CompiledVariant]) -> String {
    if vs.is_empty() {
        return "none".into();
    }
    vs.iter()
        .map(|v| v.variant.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The runnable variant named `name`.
pub(crate) fn by_name(
    runnable: &[&'static CompiledVariant],
    name: &str,
) -> Result<&'static CompiledVariant, GpuError> {
    runnable
        .iter()
        .copied()
        .find(|v| v.variant.name == name)
        .ok_or_else(|| GpuError::UnknownVariant {
            name: name.into(),
            valid: names(runnable),
        })
}

/// An error naming what was compiled when nothing runs on `cc`.
pub(crate) fn none_runs(cc: (u32, u32)) -> GpuError {
    GpuError::NoKernel {
        major: cc.0,
        minor: cc.1,
        compiled: names(&COMPILED.iter().collect::<Vec<_>>()),
    }
}

/// The untuned default for `rows_per_expert` average rows: on Hopper, the
/// first pingpong 64-row tile for decode-sized groups (bound by reading the
/// weights) and the first cooperative one otherwise; the first runnable
/// variant when the preferred kind was not compiled.
pub(crate) fn heuristic(
    runnable: &[&'static CompiledVariant],
    rows_per_expert: usize,
) -> Option<&'static CompiledVariant> {
    let small = rows_per_expert <= 64;
    let want = |v: &&&CompiledVariant| match v.variant.schedule {
        Schedule::Pingpong => small && v.variant.tile[0] == 64,
        Schedule::Cooperative => !small,
        Schedule::Multistage { .. } => false,
    };
    runnable
        .iter()
        .find(want)
        .or_else(|| runnable.first())
        .copied()
}
