//! The cluster: nodes of GPUs, NVLink inside a node, NICs between nodes,
//! and the hierarchical all-to-all cost over it.

use super::SimError;
use serde::Serialize;
use std::fmt;

/// Most GPUs a topology may have (nodes x GPUs per node): far above any
/// EP deployment, low enough that per-rank tables stay small.
pub const MAX_SIM_GPUS: usize = 1 << 16;

/// Default NVLink rate per GPU and direction, GB/s (H100/H200 NVLink 4:
/// 900 GB/s both directions together).
pub const DEFAULT_NVLINK_GBPS: f64 = 450.0;
/// Default rate of one NIC per direction, GB/s (400 Gb/s InfiniBand NDR or
/// RoCE).
pub const DEFAULT_NIC_GBPS: f64 = 50.0;
/// Default NICs per node (one per GPU, as on DGX H100 and DeepSeek's H800
/// nodes).
pub const DEFAULT_NICS_PER_NODE: usize = 8;
/// Default start-up latency of an all-to-all phase over NVLink, µs.
pub const DEFAULT_INTRA_LATENCY_US: f64 = 2.0;
/// Default start-up latency of an all-to-all phase over the network, µs.
pub const DEFAULT_INTER_LATENCY_US: f64 = 5.0;

/// A cluster of `nodes` nodes with `gpus_per_node` GPUs each (one EP rank
/// per GPU; global rank `n * gpus_per_node + g`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Topology {
    /// Nodes.
    pub nodes: usize,
    /// GPUs (EP ranks) per node.
    pub gpus_per_node: usize,
    /// NVLink rate of one GPU per direction, GB/s (10^9 bytes/s).
    pub nvlink_gbps: f64,
    /// Rate of one NIC per direction, GB/s.
    pub nic_gbps: f64,
    /// NICs per node; a node's inter-node traffic shares all of them.
    pub nics_per_node: usize,
    /// Start-up latency of an all-to-all phase over NVLink, µs.
    pub intra_latency_us: f64,
    /// Start-up latency of an all-to-all phase over the network, µs.
    pub inter_latency_us: f64,
}

impl Topology {
    /// `nodes x gpus_per_node` with the default links (checked).
    pub fn new(nodes: usize, gpus_per_node: usize) -> Result<Self, SimError> {
        let t = Self {
            nodes,
            gpus_per_node,
            nvlink_gbps: DEFAULT_NVLINK_GBPS,
            nic_gbps: DEFAULT_NIC_GBPS,
            nics_per_node: DEFAULT_NICS_PER_NODE,
            intra_latency_us: DEFAULT_INTRA_LATENCY_US,
            inter_latency_us: DEFAULT_INTER_LATENCY_US,
        };
        t.check()?;
        Ok(t)
    }

    /// Parses `NODESxGPUS` (e.g. `8x8`, `128x8`), with the default links.
    pub fn parse(spec: &str) -> Result<Self, SimError> {
        let bad = |why: &'static str| SimError::BadTopology {
            spec: spec.to_string(),
            why,
        };
        let (n, g) = spec
            .trim()
            .split_once(['x', 'X'])
            .ok_or_else(|| bad("expected NODESxGPUS, e.g. 8x8"))?;
        let num = |s: &str| -> Result<usize, SimError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("NODES and GPUS must be whole numbers, e.g. 16x8"));
            }
            s.parse::<usize>()
                .map_err(|_| bad("a count does not fit in a machine word"))
        };
        let (nodes, gpus) = (num(n)?, num(g)?);
        Self::new(nodes, gpus).map_err(|e| match e {
            SimError::BadTopology { why, .. } => bad(why),
            other => other,
        })
    }

    /// Fails on zero counts, more than [`MAX_SIM_GPUS`] GPUs, or a link
    /// rate or latency that is not finite and positive (latency: >= 0).
    pub fn check(&self) -> Result<(), SimError> {
        let bad = |why: &'static str| SimError::BadTopology {
            spec: self.to_string(),
            why,
        };
        if self.nodes == 0 || self.gpus_per_node == 0 {
            return Err(bad("NODES and GPUS must be at least 1"));
        }
        match self.nodes.checked_mul(self.gpus_per_node) {
            Some(g) if g <= MAX_SIM_GPUS => {}
            _ => return Err(bad("more GPUs than the simulator's limit of 65536")),
        }
        if self.nics_per_node == 0 {
            return Err(bad("a node needs at least one NIC"));
        }
        for (what, v) in [
            ("NVLink GB/s", self.nvlink_gbps),
            ("NIC GB/s", self.nic_gbps),
        ] {
            if !(v.is_finite() && (1e-6..=1e6).contains(&v)) {
                return Err(SimError::BadParameter { what, value: v });
            }
        }
        for (what, v) in [
            ("intra-node latency µs", self.intra_latency_us),
            ("inter-node latency µs", self.inter_latency_us),
        ] {
            if !(v.is_finite() && (0.0..=1e6).contains(&v)) {
                return Err(SimError::BadParameter { what, value: v });
            }
        }
        Ok(())
    }

    /// All GPUs, `nodes * gpus_per_node` (checked when built).
    pub fn gpus(&self) -> usize {
        self.nodes * self.gpus_per_node
    }

    /// The node of global rank `r`.
    pub fn node_of(&self, r: usize) -> usize {
        r / self.gpus_per_node
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.nodes, self.gpus_per_node)
    }
}

/// Rows one all-to-all phase (the dispatch; the combine moves the same rows
/// back) puts on each link, counted per global rank and per node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Traffic {
    /// Rows rank `r` sends to other ranks of its node.
    pub intra_send: Vec<u64>,
    /// Rows rank `r` receives from other ranks of its node.
    pub intra_recv: Vec<u64>,
    /// Rows node `n` sends to other nodes (all its ranks together).
    pub node_out: Vec<u64>,
    /// Rows node `n` receives from other nodes.
    pub node_in: Vec<u64>,
}

impl Traffic {
    /// No traffic on `topo`.
    pub fn new(topo: &Topology) -> Self {
        Self {
            intra_send: vec![0; topo.gpus()],
            intra_recv: vec![0; topo.gpus()],
            node_out: vec![0; topo.nodes],
            node_in: vec![0; topo.nodes],
        }
    }

    /// Counts one row from global rank `src` to global rank `dst` (`src !=
    /// dst`; a rank's rows to itself never leave it).
    pub fn add(&mut self, topo: &Topology, src: usize, dst: usize) {
        if src == dst {
            return;
        }
        let (ns, nd) = (topo.node_of(src), topo.node_of(dst));
        if ns == nd {
            self.intra_send[src] += 1;
            self.intra_recv[dst] += 1;
        } else {
            self.node_out[ns] += 1;
            self.node_in[nd] += 1;
        }
    }
}

/// One rank's time in one all-to-all phase, µs, split by link class.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PhaseTime {
    /// NVLink part: `max(send, recv) rows * row_bytes / nvlink`, plus the
    /// intra-node latency if the rank moves any rows over NVLink.
    pub intra_us: f64,
    /// Network part: the node's `max(out, in) rows * row_bytes / (nics *
    /// nic)`, plus the inter-node latency if the node moves any rows.
    pub inter_us: f64,
}

impl PhaseTime {
    /// Both parts: the phase is modelled as the NVLink part then the network
    /// part, not overlapped (an upper bound where a kernel overlaps them).
    pub fn total_us(&self) -> f64 {
        self.intra_us + self.inter_us
    }
}

/// The hierarchical cost of one all-to-all phase for global rank `r`
/// carrying `row_bytes` bytes per row.
///
/// Within a node every GPU has its own NVLink port, so a rank's NVLink time
/// is its own busier direction. Across nodes all of a node's GPUs share its
/// NICs, so every rank of a node waits for the node's busier direction over
/// the NICs' summed rate.
pub fn phase_time(topo: &Topology, traffic: &Traffic, r: usize, row_bytes: f64) -> PhaseTime {
    let n = topo.node_of(r);
    let intra_rows = traffic.intra_send[r].max(traffic.intra_recv[r]);
    let inter_rows = traffic.node_out[n].max(traffic.node_in[n]);
    let us = |rows: u64, gbps: f64| rows as f64 * row_bytes / (gbps * 1e9) * 1e6;
    let lat = |rows: u64, l: f64| if rows > 0 { l } else { 0.0 };
    PhaseTime {
        intra_us: us(intra_rows, topo.nvlink_gbps) + lat(intra_rows, topo.intra_latency_us),
        inter_us: us(inter_rows, topo.nic_gbps * topo.nics_per_node as f64)
            + lat(inter_rows, topo.inter_latency_us),
    }
}
