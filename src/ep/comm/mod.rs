//! Collectives between EP ranks (design.md §9): one [`Communicator`] trait, with an in-process
//! implementation ([`LocalComm`], threads: tests and single-machine runs without MPI) and an MPI
//! one (`MpiComm`, feature `mpi`: one process per rank under `mpirun`), and NCCL for GPU ranks
//! (`NcclComm`, feature `nccl`: device collectives, the unique id over a host communicator).
//!
//! The trait moves bytes; [`all_gather`], [`all_to_all_v`] and [`gather_to_root`] give typed
//! views over any [`bytemuck::Pod`] element. Counts are known on both sides of an all-to-all-v:
//! every rank computes the same global plan, so each knows what it sends and receives.
//!
//! A rank that fails calls [`Communicator::abort`] (or simply drops its communicator): every
//! other rank's next collective returns an error that names it, within the deadline. Nothing
//! waits forever.
//!
//! ```
//! use capmoe::ep::comm::{all_to_all_v, run_local, Communicator};
//! use std::time::Duration;
//!
//! // Two ranks: rank r sends r+1 copies of its rank id to each peer.
//! let out = run_local(2, Duration::from_secs(10), |c| {
//!     let n = c.rank() + 1;
//!     let send = vec![c.rank() as u32; 2 * n];
//!     let recv_counts: Vec<usize> = (0..2).map(|from| from + 1).collect();
//!     let mut recv = vec![0u32; recv_counts.iter().sum()];
//!     all_to_all_v(c, &send, &[n, n], &mut recv, &recv_counts)?;
//!     Ok::<_, capmoe::ep::comm::CommError>(recv)
//! });
//! assert_eq!(out[0].as_ref().unwrap(), &vec![0, 1, 1]);
//! assert_eq!(out[1].as_ref().unwrap(), &vec![0, 1, 1]);
//! ```

mod error;
mod local;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(test)]
mod tests;

pub use error::CommError;
pub use local::{run_local, LocalComm, RankFailure};
#[cfg(feature = "mpi")]
pub use mpi::MpiComm;
#[cfg(feature = "nccl")]
pub use nccl::NcclComm;

use bytemuck::Pod;

/// Collectives among `size` ranks. Every rank calls the same collectives in the same order.
pub trait Communicator {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn size(&self) -> usize;
    /// Every rank's `mine` (all the same length) into `out`, in rank order
    /// (`out.len() == size * mine.len()`).
    fn all_gather_bytes(&self, mine: &[u8], out: &mut [u8]) -> Result<(), CommError>;
    /// Rank-ordered segments of `send` (`send_counts[r]` bytes to rank `r`) go out, and
    /// `recv_counts[r]` bytes from rank `r` land in rank-ordered segments of `recv`.
    fn all_to_all_v_bytes(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), CommError>;
    /// Returns once every rank has entered it.
    fn barrier(&self) -> Result<(), CommError>;
    /// Rank 0 receives every rank's `mine` (all the same length), in rank order; the other
    /// ranks get `None`.
    fn gather_bytes(&self, mine: &[u8]) -> Result<Option<Vec<u8>>, CommError>;
    /// Tells every other rank that this one failed, with a reason, so that they stop instead of
    /// waiting for it. The communicator is unusable afterwards.
    fn abort(&self, reason: &str);
    /// This communicator's NCCL device collectives, if it has them: the EP
    /// layer then moves rows GPU to GPU ([`crate::ep::EpBackend::device_rows`]).
    #[cfg(feature = "nccl")]
    fn nccl(&self) -> Option<&NcclComm> {
        None
    }
}

fn bytes_of(what: &'static str, count: usize, size: usize) -> Result<usize, CommError> {
    count
        .checked_mul(size)
        .ok_or(CommError::TooLarge { what, count, size })
}

fn check_counts(
    what: &'static str,
    counts: &[usize],
    ranks: usize,
    len: usize,
) -> Result<(), CommError> {
    if counts.len() != ranks {
        return Err(CommError::Shape {
            what,
            got: format!("{} counts", counts.len()),
            expected: format!("one per rank ({ranks})"),
        });
    }
    let total = counts
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or(CommError::TooLarge {
            what,
            count: usize::MAX,
            size: 1,
        })?;
    if total != len {
        return Err(CommError::Shape {
            what,
            got: format!("counts summing to {total}"),
            expected: format!("the buffer's {len} elements"),
        });
    }
    Ok(())
}

/// Both sides of an all-to-all-v: one count per rank, summing to the buffer's length.
fn check_all_to_all(
    ranks: usize,
    send: (usize, &[usize]),
    recv: (usize, &[usize]),
) -> Result<(), CommError> {
    check_counts("all_to_all_v send_counts", send.1, ranks, send.0)?;
    check_counts("all_to_all_v recv_counts", recv.1, ranks, recv.0)
}

/// An all-gather's output holds `ranks` copies of `mine`'s length.
fn check_gather_out(ranks: usize, mine: usize, out: usize) -> Result<(), CommError> {
    if Some(out) != mine.checked_mul(ranks) {
        return Err(CommError::Shape {
            what: "all_gather out",
            got: format!("{out} bytes"),
            expected: format!("{ranks} ranks x {mine} bytes"),
        });
    }
    Ok(())
}

/// Every rank's `mine` (all the same length), concatenated in rank order.
pub fn all_gather<T: Pod, C: Communicator + ?Sized>(
    c: &C,
    mine: &[T],
) -> Result<Vec<T>, CommError> {
    let total = mine
        .len()
        .checked_mul(c.size())
        .ok_or(CommError::TooLarge {
            what: "all_gather",
            count: mine.len(),
            size: c.size(),
        })?;
    bytes_of("all_gather", total, std::mem::size_of::<T>())?;
    let mut out = vec![T::zeroed(); total];
    c.all_gather_bytes(
        bytemuck::cast_slice(mine),
        bytemuck::cast_slice_mut(&mut out),
    )?;
    Ok(out)
}

/// The typed all-to-all-v: counts are in elements of `T`; `send_counts` and `recv_counts` have
/// one entry per rank and sum to `send.len()` and `recv.len()`.
pub fn all_to_all_v<T: Pod, C: Communicator + ?Sized>(
    c: &C,
    send: &[T],
    send_counts: &[usize],
    recv: &mut [T],
    recv_counts: &[usize],
) -> Result<(), CommError> {
    check_all_to_all(
        c.size(),
        (send.len(), send_counts),
        (recv.len(), recv_counts),
    )?;
    let size = std::mem::size_of::<T>();
    let sb = send_counts
        .iter()
        .map(|&n| bytes_of("all_to_all_v send", n, size))
        .collect::<Result<Vec<_>, _>>()?;
    let rb = recv_counts
        .iter()
        .map(|&n| bytes_of("all_to_all_v recv", n, size))
        .collect::<Result<Vec<_>, _>>()?;
    c.all_to_all_v_bytes(
        bytemuck::cast_slice(send),
        &sb,
        bytemuck::cast_slice_mut(recv),
        &rb,
    )
}

/// Rank 0 gets every rank's `mine` (all the same length) in rank order; others get `None`.
/// For per-rank timings: each rank's seconds per (layer, phase) go to rank 0, which reports.
pub fn gather_to_root<T: Pod, C: Communicator + ?Sized>(
    c: &C,
    mine: &[T],
) -> Result<Option<Vec<T>>, CommError> {
    bytes_of("gather", mine.len(), std::mem::size_of::<T>())?;
    Ok(c.gather_bytes(bytemuck::cast_slice(mine))?.map(|b| {
        // Copy out of the byte buffer: its alignment is u8's, not T's.
        let mut out = vec![T::zeroed(); b.len() / std::mem::size_of::<T>().max(1)];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&b);
        out
    }))
}

/// Every rank passes a hash of what must agree (model, config, policy, rank count); a rank
/// whose hash differs from any other's makes every rank refuse with [`CommError::Disagree`].
pub fn check_agreement<C: Communicator + ?Sized>(
    c: &C,
    what: &str,
    hash: u64,
) -> Result<(), CommError> {
    let all = all_gather(c, &[hash])?;
    match all.iter().enumerate().find(|(_, &h)| h != hash) {
        None => Ok(()),
        Some((peer, &theirs)) => Err(CommError::Disagree {
            what: what.to_string(),
            rank: c.rank(),
            mine: hash,
            peer,
            theirs,
        }),
    }
}
