//! How one EP layer's rows travel between ranks. Two paths, the same rows
//! in the same order, so the same results:
//!
//! - the host path, over any [`Communicator`]: rows are downloaded, moved by
//!   the host collectives and uploaded again (the CPU backend, and CUDA
//!   without NCCL);
//! - a backend's device path ([`EpBackend::device_rows`]): CUDA over NCCL
//!   moves rows GPU to GPU, and no row touches host memory (`device.rs`).

use super::error::DistError;
use super::exchange::Exchange;
use super::stats::LayerTimes;
use crate::ep::comm::{all_gather, all_to_all_v, Communicator};
use crate::ep::EpBackend;
use crate::routing::{DispatchLayout, Placement, RoutingPlan};
use std::any::Any;
use std::time::Instant;

/// What one EP layer's row movement needs, computed alike on every rank
/// before any row moves.
pub struct RowJob<'a, B: EpBackend> {
    /// The layer's input, every token (`[tokens, hidden]`).
    pub x: &'a B::Act,
    /// This rank's experts.
    pub experts: &'a B::Experts,
    /// The global plan.
    pub plan: &'a RoutingPlan,
    /// The whole layout's rows of this rank's expert group.
    pub local: &'a DispatchLayout,
    /// Who sends which rows where.
    pub ex: &'a Exchange,
    /// Ranks, expert groups and token blocks.
    pub placement: &'a Placement,
    /// Model width.
    pub hidden: usize,
    /// Rows the receive buffer holds (local experts x capacity).
    pub bound: usize,
}

/// A backend's buffers kept from layer to layer by its device path (the
/// receive buffer, allocated once at `bound` rows). Opaque: only the
/// backend that filled it reads it.
#[derive(Default)]
pub struct Scratch(
    // Only the CUDA backend's NCCL path keeps buffers today.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))] pub(crate) Option<Box<dyn Any + Send>>,
);

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The host path: dispatch, the local experts, combine and the all-gather
/// of the layer's output through `comm`'s host collectives, into `recv`
/// (`bound * hidden`, allocated once by the caller). Returns the layer's
/// output, every token.
pub(crate) fn host_rows<B: EpBackend, C: Communicator + ?Sized>(
    backend: &B,
    comm: &C,
    job: &RowJob<'_, B>,
    recv: &mut [f32],
    t: &mut LayerTimes,
) -> Result<B::Act, DistError> {
    let (ex, h, plan, local) = (job.ex, job.hidden, job.plan, job.local);
    let tokens = plan.tokens();
    let clock = Instant::now();
    let x_host = backend.download(job.x)?;
    let mut send = Vec::with_capacity(ex.send_tokens.len() * h);
    for &tok in &ex.send_tokens {
        let tok = tok as usize;
        send.extend_from_slice(&x_host[tok * h..(tok + 1) * h]);
    }
    t.route_ms += ms(clock);

    let rows_in = ex.recv_to_local.len();
    let times_h = |v: &[usize]| v.iter().map(|n| n * h).collect::<Vec<_>>();
    let (send_n, recv_n) = (times_h(&ex.send_rows), times_h(&ex.recv_rows));
    let clock = Instant::now();
    all_to_all_v(comm, &send, &send_n, &mut recv[..rows_in * h], &recv_n)?;
    t.dispatch_ms = ms(clock);

    let mut rows = vec![0.0f32; local.rows() * h];
    for (p, &r) in ex.recv_to_local.iter().enumerate() {
        let r = r as usize;
        rows[r * h..(r + 1) * h].copy_from_slice(&recv[p * h..(p + 1) * h]);
    }
    let rows = backend.upload(&rows, local.rows(), h)?;
    let group = local.counts().len();
    let (y, expert_ms) = backend.timed(|| {
        let y = backend.expert_ffn(&rows, local, job.experts, 0..group)?;
        backend.download(&y)
    })?;
    t.expert_ms = expert_ms;

    // Combine: each received row's output goes back in the order it came.
    let clock = Instant::now();
    for (p, &r) in ex.recv_to_local.iter().enumerate() {
        let r = r as usize;
        recv[p * h..(p + 1) * h].copy_from_slice(&y[r * h..(r + 1) * h]);
    }
    let mut back = vec![0.0f32; ex.send_tokens.len() * h];
    all_to_all_v(comm, &recv[..rows_in * h], &recv_n, &mut back, &send_n)?;
    t.combine_ms = ms(clock);

    // The block's output, summed in plan order, then every block to every rank.
    let clock = Instant::now();
    let ranks = job.placement.ranks();
    let block_max = tokens.div_ceil(ranks);
    let mut mine = vec![0.0f32; block_max * h];
    let first = plan.offsets()[ex.block.start] as usize;
    for (j, tok) in ex.block.clone().enumerate() {
        let acc = &mut mine[j * h..(j + 1) * h];
        for i in plan.offsets()[tok] as usize..plan.offsets()[tok + 1] as usize {
            let wgt = plan.weights()[i];
            let q = ex.assignment_slot[i - first] as usize;
            for (a, &v) in acc.iter_mut().zip(&back[q * h..(q + 1) * h]) {
                *a += wgt * v;
            }
        }
    }
    let all = all_gather(comm, &mine)?;
    let mut out = Vec::with_capacity(tokens * h);
    for r in 0..ranks {
        let n = job.placement.token_block(r).len();
        out.extend_from_slice(&all[r * block_max * h..(r * block_max + n) * h]);
    }
    let out = backend.upload(&out, tokens, h)?;
    t.gather_ms = ms(clock);
    t.count_bytes(ex, h, std::mem::size_of::<f32>());
    Ok(out)
}
