//! The MPI communicator (feature `mpi`): rsmpi over the system's Open MPI, one process per rank
//! (`mpirun -n R capmoe ... --ep mpi`).
//!
//! MPI collectives have no deadline. A rank that fails calls [`Communicator::abort`]
//! (`MPI_Abort`), and a rank that dies is noticed by `mpirun`, which then ends every other rank:
//! so nothing waits forever, but a rank that hangs without dying holds the others until mpirun's
//! own limits.

use super::{CommError, Communicator};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};
use mpi::{Count, Threading};

/// MPI's world communicator. Holds the MPI environment: there is one per process, and MPI is
/// finalised when it is dropped.
pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl MpiComm {
    /// Initialises MPI with funneled threading (rayon's worker threads may exist; only this
    /// thread calls MPI). Fails if MPI was initialised already in this process or the library
    /// cannot give funneled threading.
    pub fn init() -> Result<Self, CommError> {
        let (universe, provided) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or(CommError::Transport {
                transport: "mpi",
                message: "MPI is initialised already in this process (one MpiComm per process)"
                    .into(),
            })?;
        if provided == Threading::Single {
            return Err(CommError::Transport {
                transport: "mpi",
                message: "the MPI library gives only single-threaded support; capmoe's ranks need funneled (rayon threads beside the MPI thread)".into(),
            });
        }
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        Ok(Self {
            world,
            rank: usize::try_from(rank).unwrap_or(0),
            size: usize::try_from(size).unwrap_or(1),
            _universe: universe,
        })
    }
}

fn count(what: &'static str, n: usize) -> Result<Count, CommError> {
    Count::try_from(n).map_err(|_| CommError::TooLarge {
        what,
        count: n,
        size: 1,
    })
}

/// MPI's counts and displacements (bytes), each within `i32` as MPI's interface needs.
fn partition(what: &'static str, counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>), CommError> {
    let c = counts
        .iter()
        .map(|&n| count(what, n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut d = Vec::with_capacity(c.len());
    let mut at = 0usize;
    for &n in counts {
        d.push(count(what, at)?);
        at += n;
    }
    count(what, at)?;
    Ok((c, d))
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_bytes(&self, mine: &[u8], out: &mut [u8]) -> Result<(), CommError> {
        super::check_gather_out(self.size, mine.len(), out.len())?;
        count("all_gather", out.len())?;
        self.world.all_gather_into(mine, out);
        Ok(())
    }

    fn all_to_all_v_bytes(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        super::check_all_to_all(
            self.size,
            (send.len(), send_counts),
            (recv.len(), recv_counts),
        )?;
        let (sc, sd) = partition("all_to_all_v send", send_counts)?;
        let (rc, rd) = partition("all_to_all_v recv", recv_counts)?;
        let s = Partition::new(send, sc, sd);
        let mut r = PartitionMut::new(recv, rc, rd);
        self.world.all_to_all_varcount_into(&s, &mut r);
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }

    fn gather_bytes(&self, mine: &[u8]) -> Result<Option<Vec<u8>>, CommError> {
        let root = self.world.process_at_rank(0);
        if self.rank != 0 {
            count("gather", mine.len())?;
            root.gather_into(mine);
            return Ok(None);
        }
        let total = mine
            .len()
            .checked_mul(self.size)
            .ok_or(CommError::TooLarge {
                what: "gather",
                count: mine.len(),
                size: self.size,
            })?;
        count("gather", total)?;
        let mut out = vec![0u8; total];
        root.gather_into_root(mine, &mut out[..]);
        Ok(Some(out))
    }

    fn abort(&self, _reason: &str) {
        // MPI_Abort carries no message to the peers: the caller prints its own before this.
        self.world.abort(1)
    }
}
