//! The model ops' kernels (cuda/model/: embedding, RMSNorm, RoPE, attention,
//! elementwise, greedy), the GPU twins of `backend::cpu`'s ops.
//!
//! [`launch`] is their `result` layer (`unsafe fn`s over [`crate::cuda::sys`]);
//! [`ops`] is their safe typed layer (device buffers and shapes in, checks,
//! launch) and [`greedy()`] the public door to the greedy pick.

mod greedy;
pub(crate) mod launch;
pub(crate) mod ops;

pub use greedy::{greedy, GreedyRow};
