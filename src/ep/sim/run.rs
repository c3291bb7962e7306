//! The simulation: for each topology, route every layer's logits under
//! every case, count rows and links, cost the layer, and sum.

use super::model::{count_group, layer_cost, ComputeModel, EpLayout, LayerCost};
use super::topology::{Topology, Traffic};
use super::{Calibration, SimError};
use crate::routing::numerics::splitmix64;
use crate::routing::{route_gate, Gate, Logits, Placement, RouterConfig};
use crate::trace::{check_trace_shape, expert_bias, Rng, Skew};
use serde::Serialize;

/// One recorded forward's router logits: `layers` stacked `[tokens,
/// experts]` matrices, row-major (`[layers * tokens, experts]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedForward {
    /// Where it came from (a file name).
    pub name: String,
    /// Layers.
    pub layers: usize,
    /// Tokens per layer.
    pub tokens: usize,
    /// Experts (columns).
    pub experts: usize,
    /// `layers * tokens * experts` logits.
    pub logits: Vec<f32>,
}

/// Where the router logits come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SimTraces {
    /// Unit-normal logits plus [`expert_bias`] at `skew`: a fresh draw per
    /// layer and EP group, `tokens_per_gpu` tokens per rank.
    Synthetic {
        /// Busiest expert over the mean under plain top-k.
        skew: Skew,
        /// Seed of the draws.
        seed: u64,
    },
    /// Recorded forwards, all of one shape: EP group `g` routes forward `g
    /// mod n` (its tokens split over the group's ranks).
    Recorded(Vec<RecordedForward>),
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSetup {
    /// The clusters.
    pub topologies: Vec<Topology>,
    /// Experts `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub top_k: usize,
    /// Tokens per GPU per layer (synthetic traces).
    pub tokens_per_gpu: usize,
    /// MoE layers (synthetic traces; recorded ones bring their own).
    pub layers: usize,
    /// Bytes of one token row on the wire (hidden x element bytes).
    pub row_bytes: usize,
    /// Expert compute on the target.
    pub compute: ComputeModel,
    /// The cases, `none` first (their `ranks` is set per topology).
    pub cases: Vec<RouterConfig>,
    /// The logits.
    pub traces: SimTraces,
}

/// One case on one topology.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimCase {
    /// Policy.
    pub policy: String,
    /// Capacity factor, for capacity policies.
    pub gamma: Option<f64>,
    /// Modelled MoE layer latency, mean over layers, µs.
    pub latency_us: f64,
    /// `none`'s summed latency over this case's.
    pub speedup: f64,
    /// Busiest rank's rows under `none` over this case's, summed over layers.
    pub ideal_speedup: f64,
    /// The straggler's expert compute, mean over layers, µs.
    pub compute_us: f64,
    /// The straggler's NVLink time (dispatch + combine), mean over layers, µs.
    pub intra_us: f64,
    /// The straggler's network time (dispatch + combine), mean over layers, µs.
    pub inter_us: f64,
    /// The busiest rank's rows, mean over layers.
    pub busiest_rows: f64,
    /// Share of the `T k` token slots dropped (net of rerouting).
    pub dropped: f64,
    /// Gate mass kept (served over plain top-k), mean over layers and groups.
    pub gate_mass_kept: f64,
}

/// One topology's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimTopology {
    /// The topology and its links.
    pub topology: Topology,
    /// `NODESxGPUS`.
    pub spec: String,
    /// GPUs.
    pub gpus: usize,
    /// EP groups and ranks per group.
    pub layout: EpLayout,
    /// Tokens each EP group routes per layer.
    pub tokens_per_group: usize,
    /// Layers simulated.
    pub layers: usize,
    /// Plain top-k max/mean expert load, mean over layers and groups.
    pub imbalance: f64,
    /// The cases, `none` first.
    pub cases: Vec<SimCase>,
}

/// The simulation's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Bytes per token row on the wire.
    pub row_bytes: usize,
    /// Expert compute used.
    pub compute: ComputeModel,
    /// Where the logits came from.
    pub traces: String,
    /// Every assumption, in words (see [`assumptions`]); callers append
    /// their own.
    pub assumptions: Vec<String>,
    /// The calibration, when one was fitted (set by the caller).
    pub calibration: Option<Calibration>,
    /// Per topology.
    pub topologies: Vec<SimTopology>,
}

/// The model's assumptions in words, for a report.
pub fn assumptions(setup: &SimSetup) -> Vec<String> {
    let mut a = vec![
        format!("expert compute per rank and layer = {:.2} µs + {:.4} µs x rows", setup.compute.fixed_us, setup.compute.per_row_us),
        format!("a token row is {} bytes on the wire, both ways (dispatch and combine)", setup.row_bytes),
        "a token goes once to each other rank serving one of its experts (per-rank deduplication, no per-node forwarding)".into(),
        "NVLink: each GPU its own port; time = busier direction's bytes / NVLink rate + intra latency".into(),
        "network: a node's GPUs share its NICs; time = node's busier direction's bytes / (NICs x NIC rate) + inter latency".into(),
        "an all-to-all phase = NVLink part + network part (not overlapped); combine costs what dispatch does".into(),
        "layer latency = max over ranks of compute + dispatch + combine (everyone waits for the straggler); no overlap of compute with communication".into(),
        "more GPUs than experts: GPUs / E EP groups of E ranks (one expert each), each routing its own tokens; the layer waits for the slowest group".into(),
        "not modelled: attention and dense layers, the shared expert, routing time, congestion beyond the NICs (full-bisection fabric), stragglers from anything but load".into(),
    ];
    if let Some(t) = setup.topologies.first() {
        a.push(format!(
            "links: NVLink {} GB/s per GPU per direction, {} NICs x {} GB/s per node, latency {} µs intra / {} µs inter",
            t.nvlink_gbps, t.nics_per_node, t.nic_gbps, t.intra_latency_us, t.inter_latency_us
        ));
    }
    a
}

/// Runs the simulation; `tick` hears each topology as it starts.
pub fn simulate(setup: &SimSetup, mut tick: impl FnMut(&str)) -> Result<SimReport, SimError> {
    if setup.topologies.is_empty() {
        return Err(SimError::Empty("no topology"));
    }
    if setup.cases.is_empty() {
        return Err(SimError::Empty("no case"));
    }
    if setup.row_bytes == 0 {
        return Err(SimError::Zero("bytes per row"));
    }
    setup.compute.check()?;
    let bias = match &setup.traces {
        SimTraces::Synthetic { skew, .. } => {
            check_trace_shape(1, setup.experts, setup.top_k)?;
            Some(expert_bias(setup.experts, setup.top_k, *skew)?)
        }
        SimTraces::Recorded(f) => {
            check_recorded(f, setup.experts)?;
            None
        }
    };
    let mut topologies = Vec::with_capacity(setup.topologies.len());
    for topo in &setup.topologies {
        topo.check()?;
        tick(&topo.to_string());
        topologies.push(one_topology(setup, topo, bias.as_deref())?);
    }
    Ok(SimReport {
        experts: setup.experts,
        top_k: setup.top_k,
        row_bytes: setup.row_bytes,
        compute: setup.compute,
        traces: match &setup.traces {
            SimTraces::Synthetic { skew, seed } => {
                format!(
                    "synthetic (trace.rs), skew {skew}, seed {seed}, {} tokens per GPU, {} layers",
                    setup.tokens_per_gpu, setup.layers
                )
            }
            SimTraces::Recorded(f) => format!("{} recorded forwards", f.len()),
        },
        assumptions: assumptions(setup),
        calibration: None,
        topologies,
    })
}

fn check_recorded(f: &[RecordedForward], experts: usize) -> Result<(), SimError> {
    let first = f.first().ok_or(SimError::Empty("no recorded forward"))?;
    for r in f {
        let bad = |why: String| SimError::TraceShape {
            name: r.name.clone(),
            why,
        };
        if r.experts != experts {
            return Err(bad(format!(
                "{} experts, the simulation has {experts}",
                r.experts
            )));
        }
        if (r.layers, r.tokens) != (first.layers, first.tokens) {
            return Err(bad(format!(
                "[{}, {}, {experts}] differs from {}'s [{}, {}, {experts}]",
                r.layers, r.tokens, first.name, first.layers, first.tokens
            )));
        }
        let want = r
            .layers
            .checked_mul(r.tokens)
            .and_then(|n| n.checked_mul(experts));
        if r.layers == 0 || r.tokens == 0 || want != Some(r.logits.len()) {
            return Err(bad("empty, or its data does not match its shape".into()));
        }
    }
    Ok(())
}

/// Per case accumulators over layers.
#[derive(Default, Clone)]
struct Acc {
    cost: LayerCost,
    busiest: f64,
    dropped: u64,
    slots: u64,
    mass: f64,
    plans: usize,
}

fn one_topology(
    setup: &SimSetup,
    topo: &Topology,
    bias: Option<&[f32]>,
) -> Result<SimTopology, SimError> {
    let layout = EpLayout::new(topo.gpus(), setup.experts)?;
    let (tokens, layers) = match &setup.traces {
        SimTraces::Synthetic { .. } => (
            layout
                .ranks_per_group
                .checked_mul(setup.tokens_per_gpu)
                .ok_or(SimError::Overflow("tokens per EP group"))?,
            setup.layers,
        ),
        SimTraces::Recorded(f) => (f[0].tokens, f[0].layers),
    };
    if tokens == 0 || layers == 0 {
        return Err(SimError::Zero("tokens per GPU and layers"));
    }
    check_trace_shape(tokens, setup.experts, setup.top_k)?;
    let placement = Placement::new(layout.ranks_per_group, setup.experts, tokens)?;
    let mut acc = vec![Acc::default(); setup.cases.len()];
    let (mut imb, mut imb_n) = (0.0, 0usize);
    for layer in 0..layers {
        let mut rows = vec![vec![0u64; topo.gpus()]; setup.cases.len()];
        let mut traffic = vec![Traffic::new(topo); setup.cases.len()];
        for g in 0..layout.groups {
            let logits = group_logits(setup, bias, tokens, layer, g);
            let gate = Gate::new(&Logits::new(&logits, tokens, setup.experts)?, setup.top_k)?;
            for (i, case) in setup.cases.iter().enumerate() {
                let cfg = case.clone().with_ranks(layout.ranks_per_group);
                let plan = route_gate(&gate, &cfg)?;
                if i == 0 {
                    imb += plan.stats().imbalance();
                    imb_n += 1;
                }
                count_group(&plan, &placement, g, topo, &mut rows[i], &mut traffic[i]);
                let a = &mut acc[i];
                a.dropped += plan.stats().dropped;
                a.slots += (tokens * setup.top_k) as u64;
                a.mass += plan.stats().gate_mass_kept;
                a.plans += 1;
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let c = layer_cost(
                topo,
                &setup.compute,
                &rows[i],
                &traffic[i],
                setup.row_bytes as f64,
            );
            a.cost.latency_us += c.latency_us;
            a.cost.compute_us += c.compute_us;
            a.cost.intra_us += c.intra_us;
            a.cost.inter_us += c.inter_us;
            a.busiest += c.busiest_rows as f64;
        }
    }
    let base = acc[0].clone();
    let n = layers as f64;
    let cases = setup
        .cases
        .iter()
        .zip(&acc)
        .map(|(case, a)| SimCase {
            policy: case.policy.to_string(),
            gamma: case.capacity_factor.filter(|_| case.policy.has_capacity()),
            latency_us: finite(a.cost.latency_us / n),
            speedup: finite(base.cost.latency_us / a.cost.latency_us),
            ideal_speedup: finite(base.busiest / a.busiest),
            compute_us: finite(a.cost.compute_us / n),
            intra_us: finite(a.cost.intra_us / n),
            inter_us: finite(a.cost.inter_us / n),
            busiest_rows: finite(a.busiest / n),
            dropped: finite(a.dropped as f64 / a.slots as f64),
            gate_mass_kept: finite(a.mass / a.plans as f64),
        })
        .collect();
    Ok(SimTopology {
        topology: *topo,
        spec: topo.to_string(),
        gpus: topo.gpus(),
        layout,
        tokens_per_group: tokens,
        layers,
        imbalance: finite(imb / imb_n as f64),
        cases,
    })
}

/// The `[tokens, experts]` logits EP group `g` routes in `layer`.
fn group_logits(
    setup: &SimSetup,
    bias: Option<&[f32]>,
    tokens: usize,
    layer: usize,
    g: usize,
) -> Vec<f32> {
    match (&setup.traces, bias) {
        (SimTraces::Recorded(f), _) => {
            let r = &f[g % f.len()];
            let n = tokens * setup.experts;
            r.logits[layer * n..(layer + 1) * n].to_vec()
        }
        (SimTraces::Synthetic { seed, .. }, Some(bias)) => {
            let s = splitmix64(*seed ^ splitmix64(((layer as u64) << 32) | g as u64));
            let mut rng = Rng::new(s);
            (0..tokens * setup.experts)
                .map(|i| rng.normal() as f32 + bias[i % setup.experts])
                .collect()
        }
        (SimTraces::Synthetic { .. }, None) => Vec::new(),
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}
