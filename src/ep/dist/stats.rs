//! What each rank measured in each EP MoE layer, and its gather to rank 0.

use crate::ep::comm::{gather_to_root, CommError, Communicator};
use serde::Serialize;

/// One rank's measurements of one MoE layer in one forward pass. Times are
/// wall-clock milliseconds on that rank; a collective's time is its wait for
/// the slowest peer plus the transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LayerTimes {
    /// Router logits and the global plan (computed alike on every rank),
    /// with the plan-agreement check.
    pub route_ms: f64,
    /// Inside the dispatch all-to-all-v.
    pub dispatch_ms: f64,
    /// The local experts' FFN.
    pub expert_ms: f64,
    /// Inside the combine all-to-all-v.
    pub combine_ms: f64,
    /// Inside the all-gather of the layer's output (the dense part is
    /// replicated on every rank).
    pub gather_ms: f64,
    /// Rows the local experts served.
    pub rows: f64,
    /// Bytes sent in dispatch and combine.
    pub sent_bytes: f64,
    /// Bytes received in dispatch and combine.
    pub recv_bytes: f64,
}

const FIELDS: usize = 8;

impl LayerTimes {
    /// The wall time of the layer on this rank.
    pub fn total_ms(&self) -> f64 {
        self.route_ms + self.dispatch_ms + self.expert_ms + self.combine_ms + self.gather_ms
    }
    /// Time spent waiting inside the dispatch and combine collectives.
    pub fn wait_ms(&self) -> f64 {
        self.dispatch_ms + self.combine_ms
    }
    /// Sets the bytes of the dispatch and combine of `ex` (rows of `hidden`
    /// elements of `elem` bytes): what was sent, received back, and the reverse.
    pub(crate) fn count_bytes(&mut self, ex: &super::Exchange, hidden: usize, elem: usize) {
        let bytes = |rows: usize| (rows * hidden * elem) as f64;
        let (sent, got) = (ex.send_tokens.len(), ex.recv_to_local.len());
        self.sent_bytes = bytes(sent + got);
        self.recv_bytes = bytes(got + sent);
    }

    fn to_array(self) -> [f64; FIELDS] {
        [
            self.route_ms,
            self.dispatch_ms,
            self.expert_ms,
            self.combine_ms,
            self.gather_ms,
            self.rows,
            self.sent_bytes,
            self.recv_bytes,
        ]
    }
    fn from_array(a: &[f64]) -> Self {
        Self {
            route_ms: a[0],
            dispatch_ms: a[1],
            expert_ms: a[2],
            combine_ms: a[3],
            gather_ms: a[4],
            rows: a[5],
            sent_bytes: a[6],
            recv_bytes: a[7],
        }
    }
}

/// Every rank's layer times on rank 0 (`times[rank][layer]`), `None`
/// elsewhere. Every rank must pass the same number of layers.
pub fn gather_times<C: Communicator + ?Sized>(
    comm: &C,
    mine: &[LayerTimes],
) -> Result<Option<Vec<Vec<LayerTimes>>>, CommError> {
    // Agree on the count first: the gather needs equal lengths.
    crate::ep::comm::check_agreement(comm, "MoE layers timed", mine.len() as u64)?;
    let flat: Vec<f64> = mine.iter().flat_map(|t| t.to_array()).collect();
    Ok(gather_to_root(comm, &flat)?.map(|all| {
        if mine.is_empty() {
            return vec![Vec::new(); comm.size()];
        }
        all.chunks(FIELDS * mine.len().max(1))
            .take(comm.size())
            .map(|rank| rank.chunks(FIELDS).map(LayerTimes::from_array).collect())
            .collect()
    }))
}
