//! The numbers a case's summary is checked and made from: finiteness, each timing round's MoE
//! time, and the spread over rounds.

use super::rounds::CaseTimes;
use super::run::Measured;
use super::*;

/// Outputs never hold NaN or Inf: the first non-finite summary number is an
/// error naming the case and the inputs behind it.
pub(super) fn check_finite(cases: &[CaseReport], setup: &BenchSetup) -> Result<(), EpError> {
    for c in cases {
        let s = &c.summary;
        for (what, value) in [
            ("imbalance", s.imbalance),
            ("rank_imbalance", s.rank_imbalance),
            ("dropped_pct", s.dropped_pct),
            ("rerouted_pct", s.rerouted_pct),
            ("gate_mass_kept", s.gate_mass_kept),
            ("expert_ms", s.expert_ms),
            ("a2a_ms", s.a2a_ms),
            ("moe_ms", s.moe_ms),
            ("ep_prefill_ms", s.ep_prefill_ms),
            ("speedup_moe", s.speedup_moe),
            ("speedup_e2e", s.speedup_e2e),
            ("ideal_speedup", s.ideal_speedup),
        ] {
            if !value.is_finite() {
                return Err(EpError::NonFinite {
                    what,
                    case: match c.capacity_factor {
                        Some(g) => format!("{} gamma {g}", c.policy),
                        None => c.policy.clone(),
                    },
                    value,
                    inputs: format!(
                        "--a2a-gbps {}, {} bytes per element and the measured times",
                        setup.a2a_gbps, setup.elem_bytes
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Each timing round's MoE time of a case: over layers, the slowest rank's time in that round
/// plus the layer's modelled all-to-all, ms.
pub(super) fn round_moe_ms<B: EpBackend>(m: &Measured<B>, t: &CaseTimes) -> Vec<f64> {
    let rounds = t.rank.iter().flatten().map(Vec::len).min().unwrap_or(0);
    (0..rounds)
        .map(|i| {
            m.layers
                .iter()
                .zip(&t.rank)
                .map(|(l, ranks)| ranks.iter().map(|r| r[i]).fold(0.0, f64::max) + l.a2a_ms)
                .sum()
        })
        .collect()
}

/// `[min, median, max]` of `v` (zeros when empty).
pub(super) fn spread(v: &[f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [lo, median(v), hi]
}
