//! The model ops' kernels (cuda/model/: embedding, RMSNorm, RoPE, attention,
//! elementwise, greedy), the GPU twins of `backend::cpu`'s ops.
//!
//! [`launch`] is their `result` layer (`unsafe fn`s over [`crate::cuda::sys`]);
//! [`greedy()`] is the safe door to the greedy pick.

mod greedy;
pub(crate) mod launch;

pub use greedy::{greedy, GreedyRow};
