//! What can go wrong between ranks.

use std::time::Duration;
use thiserror::Error;

/// Errors from a [`Communicator`](super::Communicator).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CommError {
    /// A buffer or count list does not fit the collective; says what was expected.
    #[error("{what}: got {got}, expected {expected}")]
    Shape {
        /// Which argument (e.g. `all_to_all_v send_counts`).
        what: &'static str,
        /// What was passed.
        got: String,
        /// What the collective needs.
        expected: String,
    },
    /// A byte count overflows `usize`.
    #[error("{what} overflows: {count} elements of {size} bytes")]
    TooLarge {
        /// Which count.
        what: &'static str,
        /// Elements.
        count: usize,
        /// Bytes per element.
        size: usize,
    },
    /// A peer is gone: its process or thread ended (or failed) before the collective finished.
    #[error("rank {peer} is gone (it exited or failed) while rank {rank} waited in {op}")]
    PeerGone {
        /// This rank.
        rank: usize,
        /// The rank that is gone.
        peer: usize,
        /// The collective.
        op: &'static str,
    },
    /// A peer reported a failure of its own, so every rank stops.
    #[error("rank {peer} failed: {reason}")]
    PeerFailed {
        /// The failed rank.
        peer: usize,
        /// Its message.
        reason: String,
    },
    /// A peer did not answer within the deadline: it hangs, or it is far slower than stated.
    #[error("rank {rank} waited {waited:?} for rank {peer} in {op} (deadline): the peer hangs or died silently")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The peer waited for.
        peer: usize,
        /// The collective.
        op: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// Ranks called different collectives, or sent sizes that disagree with the counts.
    #[error("rank {rank} and rank {peer} disagree in {op}: {detail}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
        /// The collective.
        op: &'static str,
        /// What differs.
        detail: String,
    },
    /// Ranks were started with different models, configs, policies or rank counts.
    #[error("ranks disagree on {what}: rank {rank} has {mine:016x}, rank {peer} has {theirs:016x}; start every rank with the same model and flags")]
    Disagree {
        /// What was compared (e.g. `model and flags`).
        what: String,
        /// This rank.
        rank: usize,
        /// Its hash.
        mine: u64,
        /// The first rank that differs.
        peer: usize,
        /// That rank's hash.
        theirs: u64,
    },
    /// NCCL's library cannot be loaded under any name cudarc's loader tries (feature `nccl`;
    /// the variant exists in every build). `soname` is the NCCL 2 library that does load under a
    /// name cudarc never tries (the NVIDIA wheel's `libnccl.so.2`), if any.
    #[error("{}", no_nccl(searched, soname.as_deref()))]
    NoNccl {
        /// The names probed (each one cudarc's loader also tries).
        searched: Vec<String>,
        /// A library that loads but that cudarc does not look for.
        soname: Option<String>,
    },
    /// The transport itself failed (MPI, NCCL), with its message.
    #[error("{transport}: {message}")]
    Transport {
        /// `mpi` or `nccl`.
        transport: &'static str,
        /// What it said.
        message: String,
    },
}

fn no_nccl(searched: &[String], soname: Option<&str>) -> String {
    let names = searched.join(", ");
    match soname {
        Some(so) => format!(
            "NCCL is installed as {so} (NCCL's soname, what the NVIDIA wheel nvidia-nccl-cu13 \
             installs), but cudarc's loader only tries {names}: make libnccl.so resolvable, e.g. a \
             symlink named libnccl.so to {so} in a folder on LD_LIBRARY_PATH (for the wheel: \
             site-packages/nvidia/nccl/lib)"
        ),
        None => format!(
            "NCCL could not be loaded: none of {names} (nor libnccl.so.2) loads; install NCCL 2 \
             (libnccl2 and libnccl-dev, or pip's nvidia-nccl-cu13) and make libnccl.so \
             resolvable: put its folder on LD_LIBRARY_PATH, with a symlink libnccl.so -> \
             libnccl.so.2 where only the latter exists"
        ),
    }
}
