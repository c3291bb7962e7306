//! The host weight format of one expert: what a checkpoint loader, the
//! backends and the CUDA expert FFN all take, below every one of them.

use crate::io::HostTensor;

/// One expert's SwiGLU weights as f32 host tensors, each `[out, in]`: `w1`,
/// `w3` are `[intermediate, hidden]`, `w2` is `[hidden, intermediate]`.
#[derive(Debug, Clone)]
pub struct HostExpert {
    /// Gate projection `[intermediate, hidden]` (goes through SiLU).
    pub w1: HostTensor,
    /// Down projection `[hidden, intermediate]`.
    pub w2: HostTensor,
    /// Up projection `[intermediate, hidden]`.
    pub w3: HostTensor,
}
