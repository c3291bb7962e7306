//! # capmoe
//!
//! Capacity-aware Mixture-of-Experts inference, after "Capacity-Aware
//! Inference: Mitigating the Straggler Effect in Mixture of Experts" (He et
//! al., ICLR 2026). Each expert's load is capped at `C = ceil(gamma T k / E)`;
//! overflow is dropped or rerouted.
//!
//! [`routing`] is the contract every backend implements and its CPU oracle.
//! [`io`] reads router traces.

#![warn(missing_docs)]

#[cfg(feature = "bench")]
pub mod chart;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod ep;
pub mod expert;
pub mod io;
pub mod online;
pub mod progress;
pub mod routing;
pub mod serve;
pub mod trace;

pub use routing::{RoutingError, MAX_EXPERTS};
pub mod backend;
pub mod model;

/// The README's Rust examples run as doctests, so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
