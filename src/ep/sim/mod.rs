//! Expert parallelism beyond one machine, simulated (`capmoe bench
//! --simulate-ep NODESxGPUS,...`; design.md §9's last point).
//!
//! Router logits (synthetic, from [`crate::trace`], or recorded) are routed
//! by the real policies, the experts placed on `nodes x gpus_per_node`
//! ranks, and each MoE layer costed with a hierarchical model:
//!
//! - a rank's expert compute is `fixed_us + per_row_us * rows`
//!   ([`ComputeModel`]);
//! - dispatch: a token goes once to every other rank serving one of its
//!   experts. Rows to ranks of the same node ride that GPU's NVLink (its
//!   busier direction over the NVLink rate); rows to other nodes share the
//!   node's NICs (the node's busier direction over `nics * nic rate`). Each
//!   link class used adds its start-up latency, and the two parts add
//!   ([`phase_time`]). The combine moves the same rows back at the same
//!   cost;
//! - a rank's layer time is compute + dispatch + combine, and the layer's
//!   latency the maximum over ranks: everyone waits for the straggler
//!   ([`layer_cost`]);
//! - EP speedup of a case = summed layer latency of `none` over the case's.
//!
//! A measured EP run calibrates the compute's fixed part in rows and is
//! replayed through the same model as a check ([`calibrate`]); link rates,
//! latencies and the per-row compute rate of the target are stated
//! assumptions ([`assumptions`]).

mod calibrate;
mod model;
#[cfg(feature = "bench")]
mod plot;
mod report;
mod run;
#[cfg(test)]
mod tests;
mod topology;

pub use calibrate::{
    calibrate, fit_line, Calibration, CalibrationCheck, MeasuredCase, MeasuredRankLayer,
    MeasuredRun, MeasuredSpeedup,
};
pub use model::{count_group, layer_cost, ComputeModel, EpLayout, LayerCost};
#[cfg(feature = "bench")]
pub use plot::speedup_figure;
pub use report::{write_markdown, write_table};
pub use run::{
    assumptions, simulate, RecordedForward, SimCase, SimReport, SimSetup, SimTopology, SimTraces,
};
pub use topology::{
    phase_time, PhaseTime, Topology, Traffic, DEFAULT_INTER_LATENCY_US, DEFAULT_INTRA_LATENCY_US,
    DEFAULT_NICS_PER_NODE, DEFAULT_NIC_GBPS, DEFAULT_NVLINK_GBPS, MAX_SIM_GPUS,
};

use crate::routing::RoutingError;
use crate::trace::TraceError;

/// Errors of the EP simulation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A topology string or topology is invalid.
    #[error("topology `{spec}`: {why}")]
    BadTopology {
        /// What was given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A number is out of range or not finite.
    #[error("{what} = {value} is out of range (finite, positive, within reason)")]
    BadParameter {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A product of counts overflows.
    #[error("{0} overflows")]
    Overflow(&'static str),
    /// Neither the GPU count divides the experts nor the experts the GPUs.
    #[error("{gpus} GPUs cannot hold {experts} experts in equal groups: the GPU count must divide E (one EP group) or be a multiple of E (GPUs / E EP groups of E ranks, one expert each)")]
    RanksVsExperts {
        /// GPUs.
        gpus: usize,
        /// Experts.
        experts: usize,
    },
    /// Recorded traces disagree with each other or with the setup.
    #[error("trace {name}: {why}")]
    TraceShape {
        /// The forward's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The calibration report cannot be read or fitted.
    #[error("calibration: {0}")]
    Calibration(String),
    /// Nothing to simulate.
    #[error("nothing to simulate: {0}")]
    Empty(&'static str),
    /// Routing failed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Building a synthetic trace failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
}
