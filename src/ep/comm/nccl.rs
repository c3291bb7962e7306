//! The NCCL communicator (feature `nccl`): GPU EP ranks exchanging device buffers through
//! cudarc's `nccl` module, one process (and one GPU) per rank under `mpirun`.
//!
//! - Set-up: [`NcclComm::from_host`] over a host [`Communicator`] (an [`MpiComm`](super::MpiComm)
//!   under mpirun): rank 0 makes NCCL's unique id and every rank gets it through the host
//!   all-gather; [`NcclComm::single`] is one rank on its own (tests, one GPU).
//! - Device collectives: [`NcclComm::device_all_gather`] and [`NcclComm::device_all_to_all_v`]
//!   (grouped `ncclSend`/`ncclRecv`, counts known on both sides) over typed cudarc views, queued on
//!   the [`GpuContext`]'s stream; [`Communicator::barrier`] is a one-element all-reduce followed by
//!   a stream synchronisation.
//! - As a host [`Communicator`] each collective stages its bytes through the device: upload,
//!   the device collective, download. `ep::dist::EpMoe` uses that only for its small host
//!   collectives; its rows move through the device collectives ([`Communicator::nccl`]).
//!
//! Before cudarc first touches NCCL the library is probed (cudarc's loader panics when none of
//! its names loads, and it never tries `libnccl.so.2`, the NVIDIA wheel's name): a missing NCCL
//! is [`CommError::NoNccl`], which says what was searched and what to do. Every shape and count is
//! checked before anything is queued. NCCL collectives have no deadline: a rank that dies is
//! noticed by mpirun, which ends the others (as with MPI). NCCL refuses two ranks on one GPU
//! before 2.30, and multi-GPU EP over NCCL is unverified until a machine with several GPUs runs
//! it: only one rank has run (emulated, tests/gpu_nccl.rs).

use super::{check_all_to_all, CommError, Communicator};
use crate::cuda::probe::{self, NcclMissing};
use crate::cuda::GpuContext;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use cudarc::driver::{DeviceRepr, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{group_end, group_start, Comm, Id, NcclType, ReduceOp};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

/// Bytes of NCCL's unique id (`ncclUniqueId`).
const ID_BYTES: usize = 128;

/// One rank's NCCL communicator on one GPU (its [`GpuContext`]'s device and stream).
///
/// Not `Send`: NCCL's handle stays on the thread that made it, like an
/// [`MpiComm`](super::MpiComm). Dropping it (or [`Communicator::abort`]) ends the communicator
/// with `ncclCommAbort`, through cudarc's drop of its `Comm`; cudarc panics there if NCCL itself
/// fails to abort (a broken NCCL, never bad input).
pub struct NcclComm {
    /// `None` once [`Communicator::abort`] has ended it.
    comm: RefCell<Option<Comm>>,
    stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn nccl_err(op: &'static str) -> impl Fn(NcclError) -> CommError {
    move |e| CommError::Transport {
        transport: "nccl",
        message: format!("{op}: {:?}", e.0),
    }
}

fn cuda_err(op: &'static str) -> impl Fn(DriverError) -> CommError {
    move |e| CommError::Transport {
        transport: "nccl",
        message: format!("{op}: CUDA: {e}"),
    }
}

/// NCCL's library, probed: the typed error instead of cudarc's panic.
fn probe_nccl() -> Result<(), CommError> {
    probe::nccl_library().map_err(no_nccl)
}

fn no_nccl(missing: NcclMissing) -> CommError {
    CommError::NoNccl {
        searched: probe::NCCL_NAMES.iter().map(|s| s.to_string()).collect(),
        soname: (missing == NcclMissing::OnlySoname).then(|| probe::NCCL_SONAME.to_string()),
    }
}

/// NCCL's ranks and counts are C ints.
fn to_int(what: &'static str, n: usize) -> Result<i32, CommError> {
    i32::try_from(n).map_err(|_| CommError::TooLarge {
        what,
        count: n,
        size: 1,
    })
}

/// Each rank's segment of a buffer cut by `counts` (whose sum the caller checked).
fn segments(counts: &[usize]) -> Vec<Range<usize>> {
    let mut at = 0usize;
    counts
        .iter()
        .map(|&n| {
            let r = at..at + n;
            at += n;
            r
        })
        .collect()
}

impl NcclComm {
    /// One rank on its own (`size` 1), on `gpu`'s device and stream: for tests and one GPU.
    pub fn single(gpu: &GpuContext) -> Result<Self, CommError> {
        probe_nccl()?;
        let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
        Self::init(gpu, 0, 1, id)
    }

    /// Whether NCCL's library loads here: [`CommError::NoNccl`] (what was searched, what to
    /// do) when it does not. Nothing is initialised.
    pub fn probe() -> Result<(), CommError> {
        probe_nccl()
    }

    /// Rank `host.rank()` of `host.size()`, on `gpu`'s device and stream. Every rank of `host`
    /// calls it at the same point (it is a collective of `host` and then of NCCL). Rank 0 makes
    /// the unique id; one all-gather over `host` hands it to every rank together with each
    /// rank's readiness, so a rank without NCCL makes every rank return an error (naming it)
    /// instead of leaving the others in NCCL's set-up. Under mpirun, `host` is the
    /// [`MpiComm`](super::MpiComm); each process should own its GPU (NCCL before 2.30 refuses
    /// two ranks on one device).
    pub fn from_host<C: Communicator + ?Sized>(
        host: &C,
        gpu: &GpuContext,
    ) -> Result<Self, CommError> {
        let (rank, size) = (host.rank(), host.size());
        to_int("nccl ranks", size)?;
        // [ready flag, id bytes]: rank 0's id is the one used.
        let mut mine = vec![0u8; 1 + ID_BYTES];
        let local = probe_nccl().and_then(|()| {
            if rank == 0 {
                let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
                for (b, &c) in mine[1..].iter_mut().zip(id.internal()) {
                    *b = c as u8;
                }
            }
            Ok(())
        });
        mine[0] = u8::from(local.is_ok());
        let total = size.checked_mul(mine.len()).ok_or(CommError::TooLarge {
            what: "nccl id all_gather",
            count: size,
            size: mine.len(),
        })?;
        let mut all = vec![0u8; total];
        host.all_gather_bytes(&mine, &mut all)?;
        local?;
        if let Some(peer) = all.chunks(mine.len()).position(|c| c[0] == 0) {
            return Err(CommError::PeerFailed {
                peer,
                reason: "it could not set up NCCL (no loadable libnccl, or ncclGetUniqueId failed)"
                    .into(),
            });
        }
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (c, &b) in internal.iter_mut().zip(&all[1..=ID_BYTES]) {
            *c = b as std::ffi::c_char;
        }
        Self::init(gpu, rank, size, Id::uninit(internal))
    }

    fn init(gpu: &GpuContext, rank: usize, size: usize, id: Id) -> Result<Self, CommError> {
        to_int("nccl rank", rank)?;
        to_int("nccl ranks", size)?;
        // ncclCommInitRank binds the communicator to the calling thread's current device.
        gpu.context()
            .bind_to_thread()
            .map_err(cuda_err("binding the GPU context"))?;
        let stream = gpu.stream().clone();
        let comm = Comm::from_rank(stream.clone(), rank, size, id)
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Self {
            comm: RefCell::new(Some(comm)),
            stream,
            rank,
            size,
        })
    }

    /// The stream every collective is queued on (the [`GpuContext`]'s).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn with_comm<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Comm) -> Result<R, CommError>,
    ) -> Result<R, CommError> {
        let guard = self.comm.try_borrow().map_err(|_| CommError::Transport {
            transport: "nccl",
            message: format!("{op}: the communicator is being aborted"),
        })?;
        match guard.as_ref() {
            Some(c) => f(c),
            None => Err(CommError::Transport {
                transport: "nccl",
                message: format!("{op}: rank {}'s NCCL communicator was aborted", self.rank),
            }),
        }
    }

    /// Every rank's `mine` (all the same length) into `out` in rank order
    /// (`out.len() == size * mine.len()`), queued on [`Self::stream`].
    pub fn device_all_gather<T: NcclType + DeviceRepr>(
        &self,
        mine: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<(), CommError> {
        if Some(out.len()) != mine.len().checked_mul(self.size) {
            return Err(CommError::Shape {
                what: "nccl all_gather out",
                got: format!("{} elements", out.len()),
                expected: format!("{} ranks x {} elements", self.size, mine.len()),
            });
        }
        super::bytes_of("nccl all_gather", out.len(), std::mem::size_of::<T>())?;
        if mine.is_empty() {
            return Ok(());
        }
        self.with_comm("ncclAllGather", |c| {
            c.all_gather(mine, out)
                .map(drop)
                .map_err(nccl_err("ncclAllGather"))
        })
    }

    /// The device all-to-all-v: `send_counts[r]` elements of `send` (rank-ordered segments) go to
    /// rank `r` and `recv_counts[r]` elements from rank `r` land in rank-ordered segments of
    /// `recv`; both count lists have one entry per rank and sum to their buffer's length. Counts
    /// are known on both sides: rank r's `send_counts[q]` must equal rank q's `recv_counts[r]`.
    /// This rank's own pair is checked here ([`CommError::Mismatch`]); a disagreement with a
    /// peer is the caller's contract (every rank derives its counts from the same global plan).
    /// One NCCL group of `ncclSend`/`ncclRecv` (zero counts skipped on both sides), queued on
    /// [`Self::stream`].
    pub fn device_all_to_all_v<T: NcclType + DeviceRepr>(
        &self,
        send: &CudaView<'_, T>,
        send_counts: &[usize],
        recv: &mut CudaViewMut<'_, T>,
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        check_all_to_all(
            self.size,
            (send.len(), send_counts),
            (recv.len(), recv_counts),
        )?;
        let elem = std::mem::size_of::<T>();
        super::bytes_of("nccl all_to_all_v send", send.len(), elem)?;
        super::bytes_of("nccl all_to_all_v recv", recv.len(), elem)?;
        let (to_self, from_self) = (send_counts[self.rank], recv_counts[self.rank]);
        if to_self != from_self {
            return Err(CommError::Mismatch {
                rank: self.rank,
                peer: self.rank,
                op: "nccl all_to_all_v",
                detail: format!(
                    "sends {to_self} elements to itself but expects to receive {from_self}"
                ),
            });
        }
        let (sends, recvs) = (segments(send_counts), segments(recv_counts));
        self.with_comm("nccl all_to_all_v", |c| {
            group_start().map_err(nccl_err("ncclGroupStart"))?;
            // The group is always closed, whatever a send or receive returned.
            let queued = (|| {
                for peer in 0..self.size {
                    let p = to_int("nccl peer", peer)?;
                    if !sends[peer].is_empty() {
                        c.send(&send.slice(sends[peer].clone()), p)
                            .map_err(nccl_err("ncclSend"))?;
                    }
                    if !recvs[peer].is_empty() {
                        c.recv(&mut recv.slice_mut(recvs[peer].clone()), p)
                            .map_err(nccl_err("ncclRecv"))?;
                    }
                }
                Ok(())
            })();
            let ended = group_end().map_err(nccl_err("ncclGroupEnd"));
            // The transfers were queued at ncclGroupEnd, after the per-call event records of
            // cudarc's cross-stream tracking: record both buffers again now, so that work on
            // another stream of the context waits for the transfers, not only for their calls.
            drop(send.device_ptr(&self.stream));
            drop(recv.device_ptr_mut(&self.stream));
            queued.and(ended.map(drop))
        })
    }

    /// `bytes` on the device (at least one element: CUDA allocations are never empty).
    fn upload(&self, bytes: &[u8]) -> Result<CudaSlice<u8>, CommError> {
        if bytes.is_empty() {
            return self
                .stream
                .alloc_zeros::<u8>(1)
                .map_err(cuda_err("allocating a staging buffer"));
        }
        self.stream
            .clone_htod(bytes)
            .map_err(cuda_err("uploading a staging buffer"))
    }

    /// A zeroed device buffer of `n` bytes (at least one).
    fn staging(&self, n: usize) -> Result<CudaSlice<u8>, CommError> {
        self.stream
            .alloc_zeros::<u8>(n.max(1))
            .map_err(cuda_err("allocating a staging buffer"))
    }

    /// The first `out.len()` bytes of `d` into `out` (synchronises the stream).
    fn download(&self, d: &CudaSlice<u8>, out: &mut [u8]) -> Result<(), CommError> {
        if out.is_empty() {
            return Ok(());
        }
        let host = self
            .stream
            .clone_dtoh(&d.slice(..out.len()))
            .map_err(cuda_err("downloading a staging buffer"))?;
        out.copy_from_slice(&host);
        Ok(())
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn nccl(&self) -> Option<&NcclComm> {
        Some(self)
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_bytes(&self, mine: &[u8], out: &mut [u8]) -> Result<(), CommError> {
        super::check_gather_out(self.size, mine.len(), out.len())?;
        let d_mine = self.upload(mine)?;
        let mut d_out = self.staging(out.len())?;
        self.device_all_gather(
            &d_mine.slice(..mine.len()),
            &mut d_out.slice_mut(..out.len()),
        )?;
        self.download(&d_out, out)
    }

    fn all_to_all_v_bytes(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        check_all_to_all(
            self.size,
            (send.len(), send_counts),
            (recv.len(), recv_counts),
        )?;
        let d_send = self.upload(send)?;
        let mut d_recv = self.staging(recv.len())?;
        self.device_all_to_all_v(
            &d_send.slice(..send.len()),
            send_counts,
            &mut d_recv.slice_mut(..recv.len()),
            recv_counts,
        )?;
        self.download(&d_recv, recv)
    }

    fn barrier(&self) -> Result<(), CommError> {
        let mut one = self
            .stream
            .alloc_zeros::<f32>(1)
            .map_err(cuda_err("allocating the barrier's element"))?;
        self.with_comm("nccl barrier", |c| {
            c.all_reduce_in_place(&mut one, &ReduceOp::Sum)
                .map(drop)
                .map_err(nccl_err("ncclAllReduce"))
        })?;
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronising after the barrier"))
    }

    fn gather_bytes(&self, mine: &[u8]) -> Result<Option<Vec<u8>>, CommError> {
        // NCCL has no gather: an all-gather, kept by rank 0 only.
        let total = mine
            .len()
            .checked_mul(self.size)
            .ok_or(CommError::TooLarge {
                what: "nccl gather",
                count: mine.len(),
                size: self.size,
            })?;
        let mut out = vec![0u8; total];
        self.all_gather_bytes(mine, &mut out)?;
        Ok((self.rank == 0).then_some(out))
    }

    fn abort(&self, _reason: &str) {
        // ncclCommAbort (cudarc's drop of the communicator): this rank's operations stop and
        // later calls fail. NCCL tells the peers nothing; mpirun ends them when this process
        // exits, as with MPI. The caller prints its reason.
        if let Ok(mut c) = self.comm.try_borrow_mut() {
            drop(c.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_nccl_says_what_was_searched_and_what_to_do() {
        let absent = no_nccl(NcclMissing::Absent).to_string();
        assert!(absent.contains("libnccl.so, libnccl.so.12"), "{absent}");
        assert!(absent.contains("LD_LIBRARY_PATH"), "{absent}");
        let so2 = no_nccl(NcclMissing::OnlySoname);
        assert!(
            matches!(&so2, CommError::NoNccl { soname: Some(s), .. } if s == "libnccl.so.2"),
            "{so2:?}"
        );
        let so2 = so2.to_string();
        assert!(so2.contains("installed as libnccl.so.2"), "{so2}");
        assert!(so2.contains("symlink named libnccl.so"), "{so2}");
    }

    #[test]
    fn segments_cut_in_rank_order() {
        assert_eq!(segments(&[2, 0, 3]), vec![0..2, 2..2, 2..5]);
        assert!(segments(&[]).is_empty());
    }
}
