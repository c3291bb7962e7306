//! Fidelity of a capacity policy against the dropless baseline: the KL
//! divergence of next-token distributions and top-1 agreement.

use serde::Serialize;

/// Log-softmax of every logit row, f64, with each row's argmax.
pub struct LogProbs {
    /// Logits per row (at least 1).
    pub vocab: usize,
    /// Row-major `[rows, vocab]`.
    pub logp: Vec<f64>,
    /// Each row's greedy token (first maximum), in 0..vocab.
    pub argmax: Vec<usize>,
}

impl LogProbs {
    /// From row-major logits `[rows, vocab]`.
    pub fn new(logits: &[f32], vocab: usize) -> Self {
        let vocab = vocab.max(1);
        let mut logp = Vec::with_capacity(logits.len());
        let mut am = Vec::with_capacity(logits.len() / vocab);
        for row in logits.chunks(vocab) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            logp.extend(row.iter().map(|&x| x as f64 - lse));
            // Greedy next token: first maximum (ties to the lower id).
            am.push(crate::model::argmax(row).unwrap_or(0));
        }
        Self {
            vocab,
            logp,
            argmax: am,
        }
    }
    /// Rows (positions) held.
    pub fn rows(&self) -> usize {
        self.argmax.len()
    }
}

/// Fidelity of a policy's next-token distributions `q` against the
/// baseline's `p`, over every position of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fidelity {
    /// Mean over positions of `KL(p || q) = sum_v p_v (log p_v - log q_v)`, nats.
    pub kl: f64,
    /// Largest per-position KL.
    pub kl_max: f64,
    /// Fraction of positions whose argmax (greedy next token) is the same.
    pub top1: f64,
}

impl Fidelity {
    /// Compares `policy` against `baseline` (same rows and vocabulary).
    pub fn compare(baseline: &LogProbs, policy: &LogProbs) -> Self {
        let n = baseline.rows().min(policy.rows());
        if n == 0 {
            return Self {
                kl: 0.0,
                kl_max: 0.0,
                top1: 1.0,
            };
        }
        let v = baseline.vocab;
        let (mut sum, mut max, mut agree) = (0.0f64, 0.0f64, 0usize);
        for r in 0..n {
            let p = &baseline.logp[r * v..(r + 1) * v];
            let q = &policy.logp[r * v..(r + 1) * v];
            // Clamp at 0: rounding can make an identical row a hair negative.
            let kl = p
                .iter()
                .zip(q)
                .map(|(&lp, &lq)| lp.exp() * (lp - lq))
                .sum::<f64>()
                .max(0.0);
            sum += kl;
            max = max.max(kl);
            agree += usize::from(baseline.argmax[r] == policy.argmax[r]);
        }
        Self {
            kl: sum / n as f64,
            kl_max: max,
            top1: agree as f64 / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_have_zero_kl_and_full_agreement() {
        let l = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.0];
        let a = LogProbs::new(&l, 3);
        let f = Fidelity::compare(&a, &a);
        assert_eq!(f.kl, 0.0);
        assert_eq!(f.top1, 1.0);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        // p = (1/2, 1/2), q = (e/(1+e), 1/(1+e)) from logits (1, 0).
        let p = LogProbs::new(&[0.0, 0.0], 2);
        let q = LogProbs::new(&[1.0, 0.0], 2);
        let e = std::f64::consts::E;
        let q0 = e / (1.0 + e);
        let want = 0.5 * (0.5f64 / q0).ln() + 0.5 * (0.5f64 / (1.0 - q0)).ln();
        let f = Fidelity::compare(&p, &q);
        assert!((f.kl - want).abs() < 1e-12);
        assert_eq!(f.top1, 1.0); // tie in p goes to id 0, q's argmax is 0
    }
}
