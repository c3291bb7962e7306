//! The expert FFN's host side: the CPU twin of the GPU pipeline and the
//! autotuner's logic. Always compiled (no CUDA).
//!
//! The GPU expert FFN (`capmoe::cuda`, feature `cuda`) is verified against
//! this twin, as the routing kernels are against the routing oracle:
//! - [`variants`]: the CUTLASS grouped-GEMM variants, declared once for
//!   build.rs and the runtime.
//! - [`init`]: the hash that draws random weights, bit-exact with the GPU's
//!   `capmoe_fill_hash_bf16`.
//! - [`interleave`]: W1/W3 to the interleaved bf16 W13 the fused GEMM reads.
//! - [`reference`](mod@reference): the bf16 FFN over a
//!   [`DispatchLayout`](crate::routing::DispatchLayout), rounding where the
//!   kernels round; [`compare`](mod@compare) says how close the GPU must come and why.
//! - [`tune`]: token buckets, tuning keys, the JSON cache and the choice
//!   among timed variants, generic over the timer.

pub mod compare;
mod error;
mod host;
pub mod init;
pub mod interleave;
pub mod reference;
mod shape;
pub mod tune;
pub mod variants;

pub use compare::{compare, compare_served, tolerance, Tolerance};
pub use error::ExpertError;
pub use host::HostExpert;
pub use reference::ExpertFfnRef;
pub use shape::FfnShape;
pub use tune::{token_bucket, Choice, TuneCache, TuneEntry, TuneKey};
pub use variants::{Arch, Schedule, Variant, VARIANTS};
