//! The device path of an EP layer (feature `nccl`): CUDA ranks move rows GPU
//! to GPU through NCCL. The index math is the host's [`Exchange`](super::Exchange),
//! computed alike on every rank from the global plan; only index lists are
//! uploaded, and no row crosses host memory. Each step is the host path's
//! (`rows.rs`) with the same rows in the same order, and the block sum is
//! the combine kernel's (f32 accumulation in plan order, one bf16
//! rounding), so both paths give the same bits.

use super::error::DistError;
use super::exchange::gathered_rows;
use super::rows::{RowJob, Scratch};
use super::stats::LayerTimes;
use crate::backend::cuda::CudaAct;
use crate::backend::{Backend, BackendError, CudaBackend};
use crate::cuda::routing::rows::{combine_bf16, gather_bf16, HostCombine, HostRows};
use crate::cuda::{bytes_of, bytes_of_mut, uninit, GpuError};
use crate::ep::comm::NcclComm;
use crate::ep::EpBackend;
use cudarc::driver::CudaSlice;

fn gpu(e: GpuError) -> DistError {
    BackendError::from(e).into()
}

/// `n` elements of a buffer as bytes for NCCL; every buffer here is sized
/// from the same counts, so a miss is this rank's shape error (not a
/// collective's: the layer aborts the communicator for it).
fn shape(what: &'static str, n: usize) -> DistError {
    gpu(GpuError::Shape {
        what,
        got: "a smaller device buffer".into(),
        expected: format!("{n} elements"),
    })
}

/// One EP layer on rank `nccl.rank()` with rows on the device: gather the
/// block's rows to send, NCCL all-to-all-v into the receive buffer (kept in
/// `scratch`, `bound` rows, allocated once), the local experts on the whole
/// layout's rows, the outputs back by NCCL in the order they came, the
/// block's weighted sum, and an NCCL all-gather of every block.
pub(crate) fn nccl_rows(
    be: &CudaBackend,
    nccl: &NcclComm,
    job: &RowJob<'_, CudaBackend>,
    scratch: &mut Scratch,
    t: &mut LayerTimes,
) -> Result<CudaAct, DistError> {
    let st = be.gpu().stream().clone();
    if !std::sync::Arc::ptr_eq(&st, nccl.stream()) {
        // Events on the backend's stream time the collectives, and the rows
        // are ordered by that one stream.
        return Err(gpu(GpuError::Shape {
            what: "NCCL communicator's stream",
            got: format!("GPU {}, another stream", nccl.stream().context().ordinal()),
            expected: "the backend's stream: make it with NcclComm::from_host(host, backend.gpu())"
                .into(),
        }));
    }
    let (ex, h, plan, local) = (job.ex, job.hidden, job.plan, job.local);
    let tokens = plan.tokens();
    if tokens == 0 {
        // Every rank has the same (empty) batch: nothing moves.
        return Ok(be.upload(&[], 0, h)?);
    }
    let ranks = job.placement.ranks();
    let (n_send, rows_in) = (ex.send_tokens.len(), ex.recv_to_local.len());
    let counts = |rows: &[usize]| rows.iter().map(|r| r * h * 2).collect::<Vec<_>>();
    let (send_n, recv_n) = (counts(&ex.send_rows), counts(&ex.recv_rows));

    let (send, route_ms) = be.timed(|| {
        let map = HostRows::from_tokens(&st, &ex.send_tokens, tokens).map_err(gpu)?;
        gather_bf16(&st, &job.x.data, h, &map.map()).map_err(gpu)
    })?;
    t.route_ms += route_ms;

    let need = job.bound.saturating_mul(h);
    let fits = |b: &Box<dyn std::any::Any + Send>| {
        b.downcast_ref::<CudaSlice<u16>>()
            .is_some_and(|s| s.len() >= need.max(1))
    };
    if !scratch.0.as_ref().is_some_and(fits) {
        scratch.0 = Some(Box::new(uninit::<u16>(&st, need).map_err(gpu)?));
    }
    let recv = scratch
        .0
        .as_mut()
        .and_then(|b| b.downcast_mut::<CudaSlice<u16>>())
        .ok_or_else(|| shape("EP receive buffer", need))?;
    let ((), dispatch_ms) = be.timed(|| {
        let s = bytes_of(&send, n_send * h).ok_or_else(|| shape("EP send rows", n_send * h))?;
        let mut r =
            bytes_of_mut(recv, rows_in * h).ok_or_else(|| shape("EP receive rows", rows_in * h))?;
        Ok::<_, DistError>(nccl.device_all_to_all_v(&s, &send_n, &mut r, &recv_n)?)
    })?;
    t.dispatch_ms = dispatch_ms;

    // Each local row's source in the receive buffer (PAD: a padding row).
    let src = ex.local_sources(local.rows());
    let (y, expert_ms) = be.timed(|| {
        let map = HostRows::from_tokens(&st, &src, rows_in).map_err(gpu)?;
        let rows = gather_bf16(&st, &*recv, h, &map.map()).map_err(gpu)?;
        // The grouped GEMMs straight on the layout: the gather back below reads
        // real rows only, so the backend's pass that zeroes padding is not needed.
        let groups = local.counts().len();
        let ffn = job.experts.ffn();
        ffn.forward_layout(local, &rows, 0..groups).map_err(gpu)
    })?;
    t.expert_ms = expert_ms;

    let (back, combine_ms) = be.timed(|| {
        let map = HostRows::from_tokens(&st, &ex.recv_to_local, local.rows()).map_err(gpu)?;
        let out = gather_bf16(&st, &y, h, &map.map()).map_err(gpu)?;
        let mut back = uninit::<u16>(&st, n_send * h).map_err(gpu)?;
        let s = bytes_of(&out, rows_in * h).ok_or_else(|| shape("EP combine rows", rows_in * h))?;
        let mut r =
            bytes_of_mut(&mut back, n_send * h).ok_or_else(|| shape("EP back rows", n_send * h))?;
        nccl.device_all_to_all_v(&s, &recv_n, &mut r, &send_n)?;
        Ok::<_, DistError>(back)
    })?;
    t.combine_ms = combine_ms;

    let (out, gather_ms) = be.timed(|| {
        let block_max = tokens.div_ceil(ranks);
        let (rel, mine) = ex.block_offsets(plan, block_max);
        let w = &plan.weights()[mine];
        let map =
            HostCombine::from_parts(&st, &rel, w, &ex.assignment_slot, n_send).map_err(gpu)?;
        let mine = combine_bf16(&st, &map.map(), &back, h).map_err(gpu)?;
        let all_n = ranks * block_max * h;
        let mut all = uninit::<u16>(&st, all_n).map_err(gpu)?;
        let s = bytes_of(&mine, block_max * h).ok_or_else(|| shape("EP block", block_max * h))?;
        let mut r = bytes_of_mut(&mut all, all_n).ok_or_else(|| shape("EP all blocks", all_n))?;
        nccl.device_all_gather(&s, &mut r)?;
        if ranks * block_max == tokens {
            // Equal blocks: the all-gather is already in token order.
            return CudaAct::from_device(all, tokens, h).map_err(gpu);
        }
        // Every block's real rows, in token order.
        let idx = gathered_rows(job.placement, block_max);
        let map = HostRows::from_tokens(&st, &idx, ranks * block_max).map_err(gpu)?;
        let data = gather_bf16(&st, &all, h, &map.map()).map_err(gpu)?;
        CudaAct::from_device(data, tokens, h).map_err(gpu)
    })?;
    t.gather_ms = gather_ms;
    t.count_bytes(ex, h, 2);
    Ok(out)
}
