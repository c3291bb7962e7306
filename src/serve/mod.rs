//! The serving benchmark's library side (`capmoe serve-bench`; design.md §10): a stream of
//! requests arriving by a seeded Poisson or gamma process (or a replayed trace), served by
//! continuous batching with chunked prefill over [`Model::forward`](crate::model::Model),
//! each step's capacity set by an [`online`](crate::online) controller fed by the load monitor.
//!
//! Time is a virtual clock. By default ([`serve`], [`StepClock::Measured`]) a step lasts the
//! measured wall time of its forward passes in this process, with the MoE layers' share
//! replaced by a model of expert parallelism (the busiest rank's share of the rows, plus
//! modelled all-to-alls); reports say "modelled EP". On real EP ranks ([`serve_ep`],
//! [`StepClock::MeasuredEp`]) every forward runs across the ranks of a communicator, which
//! exchange every MoE layer's rows, and a step lasts the slowest rank's measured wall time,
//! its waits included; reports say "measured EP". Nothing here prints or reads the environment.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capmoe::backend::CpuBackend;
//! use capmoe::model::{InitOptions, MixtralConfig, Model};
//! use capmoe::progress::NoProgress;
//! use capmoe::routing::Policy;
//! use capmoe::serve::{arrival_times, requests, serve, ArrivalProcess, ServeOptions, StepClock, Workload};
//! let model = Model::random(CpuBackend, MixtralConfig::builtin("tiny")?, &InitOptions::new(7))?;
//! let pool = vec![Workload { prompt: vec![1, 2, 3], expected: vec![4, 5] }];
//! let times = arrival_times(4, 10.0, ArrivalProcess::Poisson, 1)?;
//! let arrivals: Vec<(f64, usize)> = times.into_iter().map(|t| (t, 0)).collect();
//! let reqs = requests(&arrivals, &pool)?;
//! let opts = ServeOptions {
//!     policy: Policy::None,
//!     controller: None,
//!     decode_capacity: false,
//!     ranks: 2,
//!     max_batch_tokens: 16,
//!     max_seqs: 4,
//!     window: 8,
//!     ema: 0.25,
//!     clock: StepClock::Synthetic { per_forward_s: 0.01, per_token_s: 0.001 },
//! };
//! let run = serve(&model, &reqs, &opts, &NoProgress)?;
//! assert_eq!(run.requests.len(), 4);
//! assert!(run.requests.iter().all(|r| r.output.len() == 2));
//! # Ok(()) }
//! ```

mod arrival;
mod engine;
mod ep;
mod error;
mod percentile;
mod report;
mod request;
mod step;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ep;
mod timing;

pub use arrival::{
    arrival_times, check_rate, parse_trace, ArrivalProcess, Rng, TraceEntry, GAMMA_SHAPE_RANGE,
    MAX_ARRIVAL_S, MAX_RATE,
};
pub use engine::{serve, RequestRecord, ServeOptions, ServeRun, Slo, StepRecord};
pub use ep::serve_ep;
pub use error::ServeError;
pub use percentile::{percentile, Percentiles};
pub use report::{markdown, summarize, RunReport, ServeReport};
pub use request::{requests, Request, Workload};
pub use step::RunTotals;
pub use timing::StepClock;

/// The most requests one run serves (and lines a trace may hold).
pub const MAX_REQUESTS: usize = 100_000;
/// The most output tokens one request may ask for.
pub const MAX_NEW_TOKENS: usize = 4096;
/// The most tokens one step may hold.
pub const MAX_BATCH_TOKENS: usize = 1 << 16;
/// The most sequences in flight at once.
pub const MAX_SEQS: usize = 1024;

/// Whether `clock` measures EP on real ranks (`"measured"`) or models it (`"modelled"`;
/// `"synthetic"`: nothing measured), for reports.
pub fn ep_timing(clock: &StepClock) -> &'static str {
    match clock {
        StepClock::Measured { .. } => "modelled",
        StepClock::MeasuredEp => "measured",
        StepClock::Synthetic { .. } => "synthetic",
    }
}

/// What a [`StepClock`] measures and models, in words (every report carries it). The words
/// for [`StepClock::MeasuredEp`] say nothing of where the ranks ran: the caller adds that.
pub fn clock_description(clock: &StepClock, ranks: usize) -> String {
    match clock {
        StepClock::Measured { a2a } => format!(
            "modelled EP. Each step lasts the measured wall time of its forward passes on this machine (CPU, one process), \
             except the MoE layers: their measured time (all experts here) is replaced by the modelled EP time over {ranks} ranks, \
             measured MoE time x the busiest rank's share of the layer's rows{}. Rank utilisation is modelled the same way \
             (measured MoE time x the rank's share of rows, over the run's duration). Not measured on real EP ranks.",
            match a2a {
                Some(m) => format!(
                    ", plus two all-to-alls of the busiest rank's rows at {} GB/s ({} bytes per element, hidden {})",
                    m.a2a_gbps, m.elem_bytes, m.hidden
                ),
                None => String::new(),
            }
        ),
        StepClock::MeasuredEp => format!(
            "measured EP on {ranks} ranks. Every forward pass runs across {ranks} EP ranks, each holding only its group of experts; \
             every MoE layer exchanges its rows between the ranks (all-to-all-v dispatch and combine, an all-gather of the output), \
             and a step lasts the measured wall time of the slowest rank, its waits inside the collectives included. \
             Rank utilisation is each rank's measured expert FFN time over the run's duration; rank waits are its measured time inside the all-to-alls. \
             Nothing is modelled. Where the ranks run (threads of one process or MPI processes, which machine, how many cores) decides what these times mean."
        ),
        StepClock::Synthetic {
            per_forward_s,
            per_token_s,
        } => format!(
            "synthetic (nothing measured): a forward of T tokens takes {per_forward_s} s + {per_token_s} s x T, half of it in the MoE layers, modelled over {ranks} EP ranks"
        ),
    }
}
