//! What the GPU layer benchmark runs: the layer's shape and the setup, with its checks.

use crate::ep::EpError;
use crate::routing::Policy;
use crate::trace::Skew;
use serde::Serialize;

/// The layer speedup must reach this share of the ideal ratio (issue 6).
pub const BAR: f64 = 0.95;

/// The MoE layer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerShape {
    /// Experts in the layer (E).
    pub experts: usize,
    /// Hidden size (H).
    pub hidden: usize,
    /// Expert FFN intermediate size (I).
    pub intermediate: usize,
    /// Experts per token (k).
    pub top_k: usize,
}

impl LayerShape {
    /// Mixtral-8x7B's MoE layer: 8 experts, hidden 4096, intermediate
    /// 14336, top-2.
    pub const MIXTRAL_8X7B: LayerShape = LayerShape {
        experts: 8,
        hidden: 4096,
        intermediate: 14336,
        top_k: 2,
    };

    /// FLOPs of `rows` routed rows: `2 rows H 2I + 2 rows I H`.
    pub fn flops(&self, rows: u64) -> f64 {
        6.0 * rows as f64 * self.hidden as f64 * self.intermediate as f64
    }

    /// Bytes of bf16 weights `experts` experts read: `3 H I` each.
    pub fn weight_bytes(&self, experts: usize) -> f64 {
        6.0 * experts as f64 * self.hidden as f64 * self.intermediate as f64
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBenchSetup {
    /// Name of the shape for the report.
    pub label: String,
    /// The layer's shape.
    pub shape: LayerShape,
    /// Batch sizes (tokens routed together).
    pub tokens: Vec<usize>,
    /// EP sizes (each divides E).
    pub ranks: Vec<usize>,
    /// Router-logit skews to run.
    pub skews: Vec<Skew>,
    /// Policies; `none` (the baseline) runs first whether listed or not.
    pub policies: Vec<Policy>,
    /// gamma values every capacity policy runs at.
    pub capacity_factors: Vec<f64>,
    /// Timed iterations per case, at least (more when `min_case_ms` asks).
    pub iters: usize,
    /// Untimed iterations before each case's timed ones.
    pub warmup: usize,
    /// Each case's rank block runs at least this long (GPU time), so that
    /// telemetry has samples and P99 has iterations.
    pub min_case_ms: f64,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Seed of the weights, the logits and the activations.
    pub seed: u64,
    /// NVML sampling period, ms.
    pub telemetry_ms: f64,
    /// Run the FFN autotuner for every `T` first.
    pub tune: bool,
    /// Fixed (GEMM1, GEMM2) variant names instead of the per-`T` choice.
    pub variants: Option<(String, String)>,
    /// Hold each rank's launches behind a launch gate (stream memory operations) so that they
    /// start together; off, each launch is timed as it is queued (`capmoe bench` turns it off
    /// with `CAPMOE_NO_GATE=1`).
    pub launch_gate: bool,
    /// Tuning results to start from (the CLI loads its cache file); `None`: an empty in-memory
    /// cache. The benchmark never writes it.
    pub tune_cache: Option<crate::expert::TuneCache>,
}

/// Most untimed iterations (`--warmup`) before a timed block.
pub const MAX_WARMUP: usize = 1000;
/// `--min-case-ms`, ms: 0 (no floor) to a minute of GPU time per case.
pub const MIN_CASE_MS_RANGE: (f64, f64) = (0.0, 60_000.0);
/// `--telemetry-ms`, ms: NVML's sampling period, from 1 ms (NVML updates no
/// faster) to 10 s.
pub const TELEMETRY_MS_RANGE: (f64, f64) = (1.0, 10_000.0);

impl GpuBenchSetup {
    /// Checks everything that can be checked without a GPU.
    pub fn validate(&self) -> Result<(), EpError> {
        let s = &self.shape;
        for (what, v) in [
            ("--iters", self.iters),
            ("experts", s.experts),
            ("hidden size", s.hidden),
            ("intermediate size", s.intermediate),
            ("top-k", s.top_k),
            ("bytes per element", self.elem_bytes),
        ] {
            if v == 0 {
                return Err(EpError::Zero { what });
            }
        }
        for (what, list) in [("--tokens", &self.tokens), ("--ranks", &self.ranks)] {
            if list.is_empty() {
                return Err(EpError::EmptyList { what });
            }
            if list.contains(&0) {
                return Err(EpError::Zero { what });
            }
        }
        crate::ep::check_at_most(
            "--iters",
            self.iters,
            crate::ep::MAX_BENCH_ITERS,
            "capmoe's bound on timed repetitions",
        )?;
        for &t in &self.tokens {
            crate::ep::check_at_most(
                "--tokens",
                t,
                crate::ep::MAX_BENCH_TOKENS,
                "capmoe's bound on one benchmark batch",
            )?;
        }
        if self.skews.is_empty() {
            return Err(EpError::EmptyList { what: "--skew" });
        }
        if self.policies.is_empty() {
            return Err(EpError::NoPolicies);
        }
        if let Some(&r) = self.ranks.iter().find(|&&r| s.experts % r != 0) {
            return Err(EpError::RanksDoNotDivideExperts {
                ranks: r,
                experts: s.experts,
            });
        }
        crate::ep::check_policy_numbers(&self.policies, &self.capacity_factors, self.a2a_gbps)?;
        crate::ep::check_at_most(
            "--warmup",
            self.warmup,
            MAX_WARMUP,
            "capmoe's bound on untimed iterations",
        )?;
        for (what, v, (min, max)) in [
            ("--min-case-ms", self.min_case_ms, MIN_CASE_MS_RANGE),
            ("--telemetry-ms", self.telemetry_ms, TELEMETRY_MS_RANGE),
        ] {
            if !(v.is_finite() && (min..=max).contains(&v)) {
                return Err(EpError::InvalidNumber {
                    what,
                    value: v,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// The runs of one group in order (see [`crate::ep::cases`]).
    pub fn cases(&self) -> Vec<(Policy, Option<f64>)> {
        crate::ep::cases(&self.policies, &self.capacity_factors)
    }
}
