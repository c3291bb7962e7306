//! The policies' common output: which experts serve each token.

use super::gate::Gate;

/// Experts serving each token, CSR by token (order within a token is not
/// meaningful; the plan sorts it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    pub offsets: Vec<u32>,
    pub experts: Vec<u32>,
}

impl Served {
    /// Every token served by its plain top-k.
    pub fn topk(gate: &Gate) -> Self {
        let k = gate.top_k() as u32;
        Self {
            offsets: (0..=gate.tokens() as u32).map(|t| t * k).collect(),
            experts: gate.topk_all().to_vec(),
        }
    }

    /// Keeps the flagged `(token, expert)` candidates; `cands` must be sorted by token.
    pub fn from_kept(tokens: usize, cands: &[(u32, u32)], keep: &[bool]) -> Self {
        let mut offsets = vec![0u32; tokens + 1];
        let mut experts = Vec::with_capacity(cands.len());
        for (&(t, e), &k) in cands.iter().zip(keep) {
            if k {
                offsets[t as usize + 1] += 1;
                experts.push(e);
            }
        }
        for t in 0..tokens {
            offsets[t + 1] += offsets[t];
        }
        Self { offsets, experts }
    }

    /// From per-token lists.
    pub fn from_lists(lists: impl Iterator<Item = impl IntoIterator<Item = u32>>) -> Self {
        let mut offsets = vec![0u32];
        let mut experts = Vec::new();
        for l in lists {
            experts.extend(l);
            offsets.push(experts.len() as u32);
        }
        Self { offsets, experts }
    }

    pub fn of(&self, t: usize) -> &[u32] {
        &self.experts[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }
}
