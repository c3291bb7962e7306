//! The in-process communicator: one thread per rank, a channel per ordered pair of ranks.

use super::{CommError, Communicator};
use std::cell::Cell;
use std::fmt;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

enum Msg {
    Data {
        seq: u64,
        op: &'static str,
        bytes: Vec<u8>,
    },
    Abort(String),
}

/// One rank of an in-process group ([`LocalComm::group`], or [`run_local`], which also runs
/// the ranks). Channels are FIFO per pair and every collective is numbered, so a rank that calls
/// a different collective than its peers gets [`CommError::Mismatch`], not wrong data.
pub struct LocalComm {
    rank: usize,
    size: usize,
    timeout: Duration,
    to: Vec<Sender<Msg>>,
    from: Vec<Receiver<Msg>>,
    seq: Cell<u64>,
}

impl LocalComm {
    /// `size` connected ranks; a rank that waits longer than `timeout` for a peer returns
    /// [`CommError::Timeout`]. `size == 0` gives an empty group.
    pub fn group(size: usize, timeout: Duration) -> Vec<LocalComm> {
        // chans[from][to]
        let mut senders: Vec<Vec<Sender<Msg>>> = (0..size).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<Receiver<Msg>>> = (0..size).map(|_| Vec::new()).collect();
        for from in senders.iter_mut() {
            for to in receivers.iter_mut() {
                let (s, r) = channel();
                from.push(s);
                to.push(r);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| LocalComm {
                rank,
                size,
                timeout,
                to,
                from,
                seq: Cell::new(0),
            })
            .collect()
    }

    fn next_seq(&self) -> u64 {
        let s = self.seq.get();
        self.seq.set(s + 1);
        s
    }

    fn send(&self, to: usize, seq: u64, op: &'static str, bytes: Vec<u8>) -> Result<(), CommError> {
        self.to[to].send(Msg::Data { seq, op, bytes }).map_err(|_| {
            self.fail(self.root_cause(CommError::PeerGone {
                rank: self.rank,
                peer: to,
                op,
            }))
        })
    }

    /// A peer that is gone may have said why before it went (it aborts before it drops), and
    /// another may have failed first: the first abort waiting in any channel is the better error.
    fn root_cause(&self, fallback: CommError) -> CommError {
        for (from, rx) in self.from.iter().enumerate() {
            if from == self.rank {
                continue;
            }
            while let Ok(m) = rx.try_recv() {
                if let Msg::Abort(reason) = m {
                    return CommError::PeerFailed { peer: from, reason };
                }
            }
        }
        fallback
    }

    fn recv(&self, from: usize, seq: u64, op: &'static str) -> Result<Vec<u8>, CommError> {
        let err = match self.from[from].recv_timeout(self.timeout) {
            Ok(Msg::Data {
                seq: s,
                op: o,
                bytes,
            }) if s == seq && o == op => return Ok(bytes),
            Ok(Msg::Data { seq: s, op: o, .. }) => CommError::Mismatch {
                rank: self.rank,
                peer: from,
                op,
                detail: format!(
                    "this rank is in collective #{seq} ({op}), the peer sent #{s} ({o})"
                ),
            },
            Ok(Msg::Abort(reason)) => CommError::PeerFailed { peer: from, reason },
            Err(RecvTimeoutError::Timeout) => CommError::Timeout {
                rank: self.rank,
                peer: from,
                op,
                waited: self.timeout,
            },
            Err(RecvTimeoutError::Disconnected) => self.root_cause(CommError::PeerGone {
                rank: self.rank,
                peer: from,
                op,
            }),
        };
        Err(self.fail(err))
    }

    /// Passes a failure on to every peer (so that ranks waiting on this one stop too, and learn
    /// the first cause), then returns it.
    fn fail(&self, e: CommError) -> CommError {
        self.abort(&e.to_string());
        e
    }

    fn exchange(
        &self,
        op: &'static str,
        out: impl Fn(usize) -> Vec<u8>,
        mut land: impl FnMut(usize, Vec<u8>) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let seq = self.next_seq();
        for to in (0..self.size).filter(|&r| r != self.rank) {
            self.send(to, seq, op, out(to))?;
        }
        land(self.rank, out(self.rank))?;
        for from in (0..self.size).filter(|&r| r != self.rank) {
            let bytes = self.recv(from, seq, op)?;
            land(from, bytes)?;
        }
        Ok(())
    }

    fn wrong_size(&self, op: &'static str, from: usize, got: usize, want: usize) -> CommError {
        self.fail(CommError::Mismatch {
            rank: self.rank,
            peer: from,
            op,
            detail: format!("received {got} bytes, expected {want}"),
        })
    }
}

fn offsets(counts: &[usize]) -> Vec<usize> {
    let mut o = Vec::with_capacity(counts.len() + 1);
    o.push(0);
    for &c in counts {
        o.push(o.last().copied().unwrap_or(0) + c);
    }
    o
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_bytes(&self, mine: &[u8], out: &mut [u8]) -> Result<(), CommError> {
        let n = mine.len();
        super::check_gather_out(self.size, mine.len(), out.len())?;
        self.exchange(
            "all_gather",
            |_| mine.to_vec(),
            |from, bytes| {
                if bytes.len() != n {
                    return Err(self.wrong_size("all_gather", from, bytes.len(), n));
                }
                out[from * n..(from + 1) * n].copy_from_slice(&bytes);
                Ok(())
            },
        )
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
        let (so, ro) = (offsets(send_counts), offsets(recv_counts));
        self.exchange(
            "all_to_all_v",
            |to| send[so[to]..so[to + 1]].to_vec(),
            |from, bytes| {
                let want = recv_counts[from];
                if bytes.len() != want {
                    return Err(self.wrong_size("all_to_all_v", from, bytes.len(), want));
                }
                recv[ro[from]..ro[from + 1]].copy_from_slice(&bytes);
                Ok(())
            },
        )
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.exchange("barrier", |_| Vec::new(), |_, _| Ok(()))
    }

    fn gather_bytes(&self, mine: &[u8]) -> Result<Option<Vec<u8>>, CommError> {
        let seq = self.next_seq();
        if self.rank != 0 {
            self.send(0, seq, "gather", mine.to_vec())?;
            return Ok(None);
        }
        let n = mine.len();
        let mut out = Vec::with_capacity(n.saturating_mul(self.size));
        out.extend_from_slice(mine);
        for from in 1..self.size {
            let bytes = self.recv(from, seq, "gather")?;
            if bytes.len() != n {
                return Err(self.wrong_size("gather", from, bytes.len(), n));
            }
            out.extend_from_slice(&bytes);
        }
        Ok(Some(out))
    }

    fn abort(&self, reason: &str) {
        for to in (0..self.size).filter(|&r| r != self.rank) {
            // A peer that is gone already needs no word.
            let _ = self.to[to].send(Msg::Abort(format!("rank {}: {reason}", self.rank)));
        }
    }
}

/// Why a rank of [`run_local`] did not return a value.
#[derive(Debug)]
pub enum RankFailure<E> {
    /// The rank's closure returned this error.
    Failed(E),
    /// The rank's closure panicked, with this message.
    Panicked(String),
}

impl<E: fmt::Display> fmt::Display for RankFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankFailure::Failed(e) => write!(f, "{e}"),
            RankFailure::Panicked(m) => write!(f, "panicked: {m}"),
        }
    }
}

/// Runs `f` on `size` ranks, one thread each, and returns every rank's outcome in rank order.
/// A rank whose `f` fails or panics tells the others (their collectives then fail naming it),
/// so the call always returns.
pub fn run_local<R, E, F>(size: usize, timeout: Duration, f: F) -> Vec<Result<R, RankFailure<E>>>
where
    R: Send,
    E: Send + fmt::Display,
    F: Fn(&LocalComm) -> Result<R, E> + Sync,
{
    let comms = LocalComm::group(size, timeout);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let out = f(&c);
                    if let Err(e) = &out {
                        c.abort(&e.to_string());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(RankFailure::Failed(e)),
                Err(p) => Err(RankFailure::Panicked(
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into()),
                )),
            })
            .collect()
    })
}
