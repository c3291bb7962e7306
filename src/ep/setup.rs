//! What to run: the benchmark's setup, its checks, and the case list.

use super::*;
use crate::routing::Policy;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSetup {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (all prefilled at once: `T = batch * seq_len`).
    pub seq_len: usize,
    /// Expert-parallel ranks (divides E).
    pub ranks: usize,
    /// Policies; `none` (the baseline) runs once, first, whether listed or not.
    pub policies: Vec<Policy>,
    /// gamma values every capacity policy runs at.
    pub capacity_factors: Vec<f64>,
    /// Timed repetitions of each rank's expert work (median taken).
    pub iters: usize,
    /// Modelled all-to-all bandwidth per rank and direction, GB/s.
    pub a2a_gbps: f64,
    /// Bytes per activation element on the wire.
    pub elem_bytes: usize,
    /// Seed of the prompt token ids.
    pub seed: u64,
    /// The layer whose per-expert load is drawn.
    pub load_layer: usize,
    /// Labels for the report.
    pub model_label: String,
    /// Router-skew label for the report (e.g. `uniform`).
    pub skew_label: String,
    /// Time every case's own prefill (one batch, logits at the last
    /// positions) and `decode_steps` greedy decode steps after it, on the
    /// one device: prefill and decode tokens/s ([`Throughput`]). Off, only
    /// the baseline's prefill is timed.
    pub throughput: bool,
    /// Decode steps timed after each timed prefill (with `throughput`).
    pub decode_steps: usize,
    /// Interleave the timing rounds over all cases (every case's forward
    /// pass first, its records kept until the end), so that load from other
    /// processes hits all cases alike: right on a shared CPU. Off, each case
    /// is timed right after its forward pass and its records dropped, so
    /// one case's MoE inputs are held at a time: right on a GPU, where a
    /// full model leaves little room.
    pub interleave: bool,
    /// Cases whose capacity differs per layer (a capacity controller's
    /// plan), run after the uniform cases.
    pub layer_cases: Vec<LayerCase>,
}

/// A case with one gamma per layer: what a capacity controller planned
/// (`capmoe bench --controllers`: each layer's mean over the eval's forwards).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCase {
    /// The report's policy label, e.g. `drop:score [budget:1.2x]`.
    pub label: String,
    /// A capacity policy.
    pub policy: Policy,
    /// One gamma per MoE layer.
    pub gammas: Vec<f64>,
}

impl LayerCase {
    /// The mean gamma over layers (the report's `capacity_factor`).
    pub fn mean_gamma(&self) -> f64 {
        self.gammas.iter().sum::<f64>() / self.gammas.len().max(1) as f64
    }
}

impl BenchSetup {
    /// Checks the setup against a model with `experts` experts and `layers` layers.
    pub fn validate(&self, experts: usize, layers: usize) -> Result<(), EpError> {
        for (what, v) in [
            ("--batch", self.batch),
            ("--seq-len", self.seq_len),
            ("--ranks", self.ranks),
            ("--iters", self.iters),
            ("bytes per element", self.elem_bytes),
        ] {
            if v == 0 {
                return Err(EpError::Zero { what });
            }
        }
        let tokens = (self.batch as u128) * (self.seq_len as u128);
        if tokens > MAX_BENCH_TOKENS as u128 {
            return Err(EpError::TooLarge {
                what: "--batch x --seq-len (tokens prefilled together)",
                value: tokens,
                max: MAX_BENCH_TOKENS as u128,
                why: "capmoe's bound on one benchmark batch",
            });
        }
        check_at_most(
            "--iters",
            self.iters,
            MAX_BENCH_ITERS,
            "capmoe's bound on timed repetitions",
        )?;
        if self.policies.is_empty() {
            return Err(EpError::NoPolicies);
        }
        if experts % self.ranks != 0 {
            return Err(EpError::RanksDoNotDivideExperts {
                ranks: self.ranks,
                experts,
            });
        }
        check_policy_numbers(&self.policies, &self.capacity_factors, self.a2a_gbps)?;
        if self.load_layer >= layers {
            return Err(EpError::NoSuchLayer {
                layer: self.load_layer,
                layers,
            });
        }
        for c in &self.layer_cases {
            let bad = |why: String| {
                Err(EpError::LayerCase {
                    label: c.label.clone(),
                    why,
                })
            };
            if !c.policy.has_capacity() {
                return bad(format!("policy {} has no capacity", c.policy));
            }
            if c.gammas.len() != layers {
                return bad(format!("{} gammas for {layers} layers", c.gammas.len()));
            }
            if let Some(g) = c
                .gammas
                .iter()
                .find(|g| !crate::routing::valid_capacity_factor(**g))
            {
                return bad(format!("gamma {g} is not a valid capacity factor"));
            }
            if c.label.is_empty()
                || cases(&self.policies, &self.capacity_factors)
                    .iter()
                    .any(|(p, _)| p.to_string() == c.label)
            {
                return bad("its label must be new and not empty".into());
            }
        }
        Ok(())
    }

    /// The runs in order: see [`cases`].
    pub fn cases(&self) -> Vec<(Policy, Option<f64>)> {
        cases(&self.policies, &self.capacity_factors)
    }
}

/// Least all-to-all bandwidth a benchmark accepts, GB/s (1 kB/s: below it
/// the modelled times stop meaning anything).
pub const MIN_A2A_GBPS: f64 = 1e-6;
/// Most all-to-all bandwidth a benchmark accepts, GB/s (1 PB/s).
pub const MAX_A2A_GBPS: f64 = 1e6;
/// Most tokens one CPU/e2e benchmark batch prefills (`batch * seq_len`).
pub const MAX_BENCH_TOKENS: usize = 1 << 20;

/// Most timed iterations (`--iters`) a benchmark runs.
pub const MAX_BENCH_ITERS: usize = 10_000;

/// `v <= max`, else [`EpError::TooLarge`] naming `what` and `why`.
pub(crate) fn check_at_most(
    what: &'static str,
    v: usize,
    max: usize,
    why: &'static str,
) -> Result<(), EpError> {
    if v > max {
        return Err(EpError::TooLarge {
            what,
            value: v as u128,
            max: max as u128,
            why,
        });
    }
    Ok(())
}

/// Checks what both benchmarks share: capacity policies need gammas, every
/// gamma is finite and positive, and so is the all-to-all bandwidth.
pub(crate) fn check_policy_numbers(
    policies: &[Policy],
    capacity_factors: &[f64],
    a2a_gbps: f64,
) -> Result<(), EpError> {
    if policies.iter().any(Policy::has_capacity) && capacity_factors.is_empty() {
        return Err(EpError::NoCapacityFactors);
    }
    if let Some(&g) = capacity_factors
        .iter()
        .find(|g| !crate::routing::valid_capacity_factor(**g))
    {
        return Err(EpError::InvalidCapacityFactor(g));
    }
    check_bandwidth(a2a_gbps)
}

/// Checks an all-to-all bandwidth (GB/s): finite, in
/// [`MIN_A2A_GBPS`, `MAX_A2A_GBPS`].
pub fn check_bandwidth(a2a_gbps: f64) -> Result<(), EpError> {
    if !(a2a_gbps.is_finite() && (MIN_A2A_GBPS..=MAX_A2A_GBPS).contains(&a2a_gbps)) {
        return Err(EpError::InvalidBandwidth(a2a_gbps));
    }
    Ok(())
}

/// The runs of a benchmark in order: `none` first, then each capacity policy
/// at each gamma (duplicates removed; policies without capacity other than
/// `none` have nothing to vary and are skipped).
pub fn cases(policies: &[Policy], capacity_factors: &[f64]) -> Vec<(Policy, Option<f64>)> {
    let mut out = vec![(Policy::None, None)];
    for &p in policies {
        if !p.has_capacity() {
            continue;
        }
        for &g in capacity_factors {
            if !out.contains(&(p, Some(g))) {
                out.push((p, Some(g)));
            }
        }
    }
    out
}
