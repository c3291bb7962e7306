//! The model ops' kernels (cuda/model/: embedding, RMSNorm, RoPE, attention,
//! elementwise, greedy), the GPU twins of `backend::cpu`'s ops.
//!
//! [`launch`] is their `result` layer (`unsafe fn`s over [`crate::cuda::sys`]);
//! [`ops`] is their safe typed layer (device buffers and shapes in, checks,
//! launch) and [`greedy()`] the public door to the greedy pick.

mod greedy;
pub(crate) mod launch;
// backend::cuda's model ops move onto these (its own unsafe launches until then).
#[allow(dead_code)]
pub(crate) mod ops;

pub use greedy::{greedy, GreedyRow};
