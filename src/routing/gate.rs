//! Gating: softmax over all experts, top-k (ties to the lower index) and the
//! Mixtral renormalisation denominator. CPU twin of the fused gating kernel.

use super::dispatch::check_len;
use super::error::RoutingError;
use super::logits::Logits;
use super::numerics::{exp_canonical, seq_sum, warp_sum};

/// Router probabilities and the plain top-k choice of every token.
#[derive(Debug, Clone)]
pub struct Gate {
    tokens: usize,
    experts: usize,
    top_k: usize,
    probs: Vec<f32>,
    topk: Vec<u32>,
    topk_sum: Vec<f32>,
}

/// Strict preference of a token over experts: larger `p` first, then lower index.
#[inline]
pub fn prefers(pa: f32, a: u32, pb: f32, b: u32) -> bool {
    pa > pb || (pa == pb && a < b)
}

/// Softmax of one row in the canonical order (see [`super::numerics`]).
pub fn softmax_row(row: &[f32], out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &l) in out.iter_mut().zip(row) {
        *o = exp_canonical(l - max);
    }
    let sum = warp_sum(out.iter().copied());
    for o in out.iter_mut() {
        *o /= sum;
    }
}

impl Gate {
    /// Computes `p = softmax(logits)` and each token's top-k.
    pub fn new(logits: &Logits<'_>, top_k: usize) -> Result<Self, RoutingError> {
        let (tokens, experts) = (logits.tokens(), logits.experts());
        if top_k == 0 {
            return Err(RoutingError::ZeroTopK);
        }
        if top_k > experts {
            return Err(RoutingError::TopKExceedsExperts { k: top_k, experts });
        }
        let mut probs = vec![0.0f32; tokens * experts];
        let mut topk = vec![0u32; tokens * top_k];
        let mut topk_sum = vec![0.0f32; tokens];
        for t in 0..tokens {
            let p = &mut probs[t * experts..(t + 1) * experts];
            softmax_row(logits.row(t), p);
            let sel = &mut topk[t * top_k..(t + 1) * top_k];
            select_topk(p, sel);
            topk_sum[t] = seq_sum(sel.iter().map(|&e| p[e as usize]));
        }
        Ok(Self {
            tokens,
            experts,
            top_k,
            probs,
            topk,
            topk_sum,
        })
    }

    /// A gate from arrays another backend computed (`probs [T, E]`,
    /// `topk [T, k]`, `topk_sum [T]`), shape-checked.
    pub fn from_parts(
        experts: usize,
        top_k: usize,
        probs: Vec<f32>,
        topk: Vec<u32>,
        topk_sum: Vec<f32>,
    ) -> Result<Self, RoutingError> {
        if experts == 0 {
            return Err(RoutingError::NoExperts);
        }
        let tokens = topk_sum.len();
        if top_k == 0 {
            return Err(RoutingError::ZeroTopK);
        }
        if top_k > experts {
            return Err(RoutingError::TopKExceedsExperts { k: top_k, experts });
        }
        check_len("gate probabilities", probs.len(), tokens * experts)?;
        check_len("gate top-k", topk.len(), tokens * top_k)?;
        if let Some(&e) = topk.iter().find(|&&e| e as usize >= experts) {
            return Err(RoutingError::ShapeMismatch {
                what: "gate top-k expert id (out of range)",
                len: e as usize,
                expected: experts,
            });
        }
        Ok(Self {
            tokens,
            experts,
            top_k,
            probs,
            topk,
            topk_sum,
        })
    }

    /// Tokens `T`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Experts `E`.
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// Experts per token `k`.
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// `p[t, e]`, row-major `[T, E]`.
    pub fn probs(&self) -> &[f32] {
        &self.probs
    }
    /// `p[t, e]` (`t < T`, `e < E`).
    #[inline]
    pub fn p(&self, t: usize, e: usize) -> f32 {
        self.probs[t * self.experts + e]
    }
    /// Token `t`'s probabilities over all experts, `E` values.
    pub fn prob_row(&self, t: usize) -> &[f32] {
        &self.probs[t * self.experts..(t + 1) * self.experts]
    }
    /// All tokens' top-k, `[T, k]`, each row in decreasing `p`.
    pub fn topk_all(&self) -> &[u32] {
        &self.topk
    }
    /// Token `t`'s top-k experts in decreasing `p`.
    pub fn topk(&self, t: usize) -> &[u32] {
        &self.topk[t * self.top_k..(t + 1) * self.top_k]
    }
    /// Sum of `p` over `topk(t)`, added in decreasing-`p` order: the Mixtral
    /// renormalisation denominator.
    pub fn topk_sum(&self, t: usize) -> f32 {
        self.topk_sum[t]
    }
    /// Token `t`'s full preference list: every expert, decreasing `p`, ties to
    /// the lower index.
    pub fn preference(&self, t: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.experts as u32).collect();
        order.sort_unstable_by(preference_order(self.prob_row(t)));
        order
    }
}

/// The preference order over a token's experts (`p` is its row): decreasing
/// `p`, ties to the lower index. A total order, so any partial selection
/// under it agrees with [`Gate::preference`].
pub(crate) fn preference_order(p: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |a, b| {
        p[*b as usize]
            .total_cmp(&p[*a as usize])
            .then_with(|| a.cmp(b))
    }
}

/// Writes the `sel.len()` largest entries of `p` into `sel`, in decreasing `p`
/// with ties to the lower index (insertion into a short sorted list: k <= E,
/// and k is small in practice).
fn select_topk(p: &[f32], sel: &mut [u32]) {
    let k = sel.len();
    let mut n = 0usize;
    for (e, &pe) in p.iter().enumerate() {
        let e = e as u32;
        // Find the insertion point among the n kept entries.
        let mut pos = n;
        while pos > 0 && prefers(pe, e, p[sel[pos - 1] as usize], sel[pos - 1]) {
            pos -= 1;
        }
        if pos >= k {
            continue;
        }
        let end = n.min(k - 1);
        for i in (pos..end).rev() {
            sel[i + 1] = sel[i];
        }
        sel[pos] = e;
        n = (n + 1).min(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_ties_go_to_lower_index() {
        let l = [1.0f32, 3.0, 3.0, 0.0, 3.0];
        let logits = Logits::new(&l, 1, 5).unwrap();
        let g = Gate::new(&logits, 2).unwrap();
        assert_eq!(g.topk(0), &[1, 2]);
        let g = Gate::new(&logits, 4).unwrap();
        assert_eq!(g.topk(0), &[1, 2, 4, 0]);
        assert_eq!(g.preference(0), vec![1, 2, 4, 0, 3]);
    }

    #[test]
    fn softmax_sums_to_one_and_matches_libm() {
        let l: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
            .collect();
        let logits = Logits::new(&l, 1, 64).unwrap();
        let g = Gate::new(&logits, 2).unwrap();
        let max = l.iter().copied().fold(f32::MIN, f32::max);
        let z: f64 = l.iter().map(|&v| ((v - max) as f64).exp()).sum();
        for (e, &v) in l.iter().enumerate() {
            let want = ((v - max) as f64).exp() / z;
            assert!((g.p(0, e) as f64 - want).abs() < 1e-6);
        }
        let s: f32 = g.prob_row(0).iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }

    #[test]
    fn rejects_bad_k() {
        let l = [0.0f32; 4];
        let logits = Logits::new(&l, 1, 4).unwrap();
        assert_eq!(Gate::new(&logits, 0).unwrap_err(), RoutingError::ZeroTopK);
        assert_eq!(
            Gate::new(&logits, 5).unwrap_err(),
            RoutingError::TopKExceedsExperts { k: 5, experts: 4 }
        );
    }
}
