//! The routing plan: the one shape every backend fills.

use super::dispatch::check_len;
use super::error::RoutingError;
use super::gate::Gate;
use super::numerics::seq_sum;
use super::policy::Policy;
use super::served::Served;
use super::stats::{mass_fx, PlanStats, PlanTotals};
use super::CapacityScope;

/// One served `(token, expert)` pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    /// The serving expert (`< E`).
    pub expert: u32,
    /// Combine weight: `p / sum(p over top-k)`, or over the served experts
    /// when the plan is renormalised.
    pub weight: f32,
    /// Router probability `p[t, e]`.
    pub prob: f32,
}

/// A plan's raw arrays, CSR by token (see [`RoutingPlan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanParts {
    /// CSR offsets, `T + 1` entries: token `t` owns `offsets[t]..offsets[t+1]`.
    pub offsets: Vec<u32>,
    /// Expert of each assignment, token-major.
    pub expert: Vec<u32>,
    /// Combine weight of each assignment (see [`Assignment::weight`]).
    pub weight: Vec<f32>,
    /// Router probability `p[t, e]` of each assignment.
    pub prob: Vec<f32>,
}

/// The capacity a plan was built under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityInfo {
    /// `C = ceil(gamma T k / E)`, per expert.
    pub per_expert: u64,
    /// Whether `C` bounds each expert or each rank's experts together.
    pub scope: CapacityScope,
    /// EP ranks `R` the placement used.
    pub ranks: usize,
}

/// Served assignments per token (CSR, each token's list in decreasing `p`,
/// ties to the lower expert), their weights, the plain top-k they came from,
/// and statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingPlan {
    tokens: usize,
    experts: usize,
    top_k: usize,
    policy: Policy,
    capacity: Option<CapacityInfo>,
    renormalized: bool,
    offsets: Vec<u32>,
    expert: Vec<u32>,
    weight: Vec<f32>,
    prob: Vec<f32>,
    topk: Vec<u32>,
    stats: PlanStats,
    /// The served and top-k gate mass in 2^-32 fixed point ([`PlanTotals`]).
    mass_fx: (u64, u64),
}

impl RoutingPlan {
    pub(crate) fn build(
        gate: &Gate,
        served: Served,
        policy: Policy,
        capacity: Option<CapacityInfo>,
        renormalize: bool,
    ) -> Self {
        let n = served.experts.len();
        let mut expert = Vec::with_capacity(n);
        let mut weight = Vec::with_capacity(n);
        let mut prob = Vec::with_capacity(n);
        let mut list: Vec<u32> = Vec::with_capacity(gate.experts());
        for t in 0..gate.tokens() {
            let p = gate.prob_row(t);
            list.clear();
            list.extend_from_slice(served.of(t));
            list.sort_unstable_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
            let denom = if renormalize {
                seq_sum(list.iter().map(|&e| p[e as usize]))
            } else {
                gate.topk_sum(t)
            };
            for &e in &list {
                let pe = p[e as usize];
                expert.push(e);
                prob.push(pe);
                // A token served only by experts with p == 0 has no mass to
                // rescale: its weights stay 0 (never 0/0), as if dropped.
                weight.push(if denom > 0.0 { pe / denom } else { 0.0 });
            }
        }
        let parts = PlanParts {
            offsets: served.offsets,
            expert,
            weight,
            prob,
        };
        Self::assemble(gate, parts, policy, capacity, renormalize)
    }

    /// A plan from arrays another backend computed; checks their shape and
    /// derives the statistics here, so every backend reports them alike.
    pub fn from_parts(
        gate: &Gate,
        parts: PlanParts,
        policy: Policy,
        capacity: Option<CapacityInfo>,
        renormalize: bool,
    ) -> Result<Self, RoutingError> {
        let t = gate.tokens();
        check_len("plan offsets", parts.offsets.len(), t + 1)?;
        let n = parts.offsets.last().copied().unwrap_or(0) as usize;
        if parts.offsets.first() != Some(&0) || parts.offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(RoutingError::ShapeMismatch {
                what: "plan offsets (not increasing from 0)",
                len: parts.offsets.len(),
                expected: t + 1,
            });
        }
        check_len("plan experts", parts.expert.len(), n)?;
        check_len("plan weights", parts.weight.len(), n)?;
        check_len("plan probabilities", parts.prob.len(), n)?;
        if let Some(&e) = parts.expert.iter().find(|&&e| e as usize >= gate.experts()) {
            return Err(RoutingError::ShapeMismatch {
                what: "plan expert id (out of range)",
                len: e as usize,
                expected: gate.experts(),
            });
        }
        Ok(Self::assemble(gate, parts, policy, capacity, renormalize))
    }

    fn assemble(
        gate: &Gate,
        parts: PlanParts,
        policy: Policy,
        capacity: Option<CapacityInfo>,
        renormalize: bool,
    ) -> Self {
        let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
        let mut load = vec![0u64; experts];
        let (mut dropped, mut rerouted) = (0u64, 0u64);
        let (mut served_mass, mut topk_mass) = (0.0f64, 0.0f64);
        let (mut served_fx, mut topk_fx) = (0u64, 0u64);
        for t in 0..tokens {
            let top = gate.topk(t);
            let r = parts.offsets[t] as usize..parts.offsets[t + 1] as usize;
            for (&e, &pe) in parts.expert[r.clone()].iter().zip(&parts.prob[r.clone()]) {
                load[e as usize] += 1;
                served_mass += pe as f64;
                served_fx += mass_fx(pe);
                rerouted += u64::from(!top.contains(&e));
            }
            topk_mass += top
                .iter()
                .map(|&e| gate.p(t, e as usize) as f64)
                .sum::<f64>();
            topk_fx += top
                .iter()
                .map(|&e| mass_fx(gate.p(t, e as usize)))
                .sum::<u64>();
            dropped += k.saturating_sub(r.len()) as u64;
        }
        let n = parts.expert.len();
        let stats = PlanStats {
            max_load: load.iter().copied().max().unwrap_or(0),
            mean_load: n as f64 / experts as f64,
            served: n as u64,
            load,
            dropped,
            rerouted,
            served_mass,
            topk_mass,
            gate_mass_kept: if topk_mass > 0.0 {
                served_mass / topk_mass
            } else {
                1.0
            },
        };
        Self {
            tokens,
            experts,
            top_k: k,
            policy,
            capacity,
            renormalized: renormalize,
            offsets: parts.offsets,
            expert: parts.expert,
            weight: parts.weight,
            prob: parts.prob,
            topk: gate.topk_all().to_vec(),
            stats,
            mass_fx: (served_fx, topk_fx),
        }
    }

    /// Tokens `T`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Experts `E`.
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// Experts per token `k` of the plain top-k.
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// The policy the plan was built under.
    pub fn policy(&self) -> Policy {
        self.policy
    }
    /// `None` for the `none` policy.
    pub fn capacity(&self) -> Option<CapacityInfo> {
        self.capacity
    }
    /// Whether weights were rescaled over each token's served experts.
    pub fn renormalized(&self) -> bool {
        self.renormalized
    }
    /// Loads, drops and gate mass (see [`PlanStats`]).
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// The statistics as a device sums them ([`PlanTotals`]; what a forward
    /// pass keeps of a layer whose plan stays on the device).
    pub fn totals(&self) -> PlanTotals {
        PlanTotals {
            load: self.stats.load.clone(),
            dropped: self.stats.dropped,
            rerouted: self.stats.rerouted,
            served_mass_fx: self.mass_fx.0,
            topk_mass_fx: self.mass_fx.1,
        }
    }
    /// Total served assignments.
    pub fn len(&self) -> usize {
        self.expert.len()
    }
    /// No assignment served (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.expert.is_empty()
    }
    /// CSR offsets: token `t`'s assignments are `offsets[t]..offsets[t+1]`.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// Expert of every assignment, token-major.
    pub fn expert_ids(&self) -> &[u32] {
        &self.expert
    }
    /// Combine weight of every assignment, token-major.
    pub fn weights(&self) -> &[f32] {
        &self.weight
    }
    /// Router probability of every assignment, token-major.
    pub fn probs(&self) -> &[f32] {
        &self.prob
    }
    /// Token `t`'s plain top-k, before capacity.
    pub fn topk(&self, t: usize) -> &[u32] {
        &self.topk[t * self.top_k..(t + 1) * self.top_k]
    }
    /// Token `t`'s served assignments, decreasing `p`.
    pub fn assignments(&self, t: usize) -> impl ExactSizeIterator<Item = Assignment> + '_ {
        let r = self.offsets[t] as usize..self.offsets[t + 1] as usize;
        r.map(|i| Assignment {
            expert: self.expert[i],
            weight: self.weight[i],
            prob: self.prob[i],
        })
    }
}
