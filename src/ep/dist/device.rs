//! The device path of an EP layer (feature `nccl`): CUDA ranks move rows GPU
//! to GPU through NCCL. The index math is the host's [`Exchange`](super::Exchange),
//! computed alike on every rank from the global plan; only index lists are
//! uploaded, and no row crosses host memory. Each step is the host path's
//! (`rows.rs`) with the same rows in the same order, and the block sum is
//! the combine kernel's (f32 accumulation in plan order, one bf16
//! rounding), so both paths give the same bits.

use super::error::DistError;
use super::rows::{RowJob, Scratch};
use super::stats::LayerTimes;
use crate::backend::cuda::CudaAct;
use crate::backend::{Backend, BackendError, CudaBackend};
use crate::cuda::routing::rows::{combine_bf16, gather_bf16, HostCombine, HostRows};
use crate::cuda::{bytes_of, bytes_of_mut, uninit, GpuError};
use crate::ep::comm::{CommError, NcclComm};
use crate::ep::EpBackend;
use crate::routing::PAD;
use cudarc::driver::CudaSlice;

fn gpu(e: GpuError) -> DistError {
    BackendError::from(e).into()
}

/// `n` elements of `s` as bytes for NCCL; `s` always holds them (every
/// buffer here is sized from the same counts), so a miss is a shape error.
fn shape(what: &'static str, n: usize) -> DistError {
    DistError::Comm(CommError::Shape {
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
    let (ours, theirs) = (st.context().ordinal(), nccl.stream().context().ordinal());
    if ours != theirs {
        return Err(DistError::Comm(CommError::Shape {
            what: "NCCL communicator's GPU",
            got: format!("GPU {theirs}"),
            expected: format!("the backend's GPU {ours}"),
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
    let mut src = vec![PAD; local.rows()];
    for (p, &r) in ex.recv_to_local.iter().enumerate() {
        src[r as usize] = p as u32;
    }
    let (y, expert_ms) = be.timed(|| {
        let map = HostRows::from_tokens(&st, &src, rows_in).map_err(gpu)?;
        let data = gather_bf16(&st, &*recv, h, &map.map()).map_err(gpu)?;
        let rows = CudaAct::from_device(data, local.rows(), h).map_err(gpu)?;
        let groups = local.counts().len();
        Ok::<_, DistError>(be.expert_ffn(&rows, local, job.experts, 0..groups)?)
    })?;
    t.expert_ms = expert_ms;

    let (back, combine_ms) = be.timed(|| {
        let map = HostRows::from_tokens(&st, &ex.recv_to_local, local.rows()).map_err(gpu)?;
        let out = gather_bf16(&st, &y.data, h, &map.map()).map_err(gpu)?;
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
        let offs = plan.offsets();
        let first = offs[ex.block.start];
        let last = offs[ex.block.end];
        // The block's offsets from 0, padded with empty tokens to block_max.
        let mut rel: Vec<u32> = offs[ex.block.start..=ex.block.end]
            .iter()
            .map(|&o| o - first)
            .collect();
        rel.resize(block_max + 1, last - first);
        let w = &plan.weights()[first as usize..last as usize];
        let map =
            HostCombine::from_parts(&st, &rel, w, &ex.assignment_slot, n_send).map_err(gpu)?;
        let mine = combine_bf16(&st, &map.map(), &back, h).map_err(gpu)?;
        let all_n = ranks * block_max * h;
        let mut all = uninit::<u16>(&st, all_n).map_err(gpu)?;
        let s = bytes_of(&mine, block_max * h).ok_or_else(|| shape("EP block", block_max * h))?;
        let mut r = bytes_of_mut(&mut all, all_n).ok_or_else(|| shape("EP all blocks", all_n))?;
        nccl.device_all_gather(&s, &mut r)?;
        // Every block's real rows, in token order.
        let idx: Vec<u32> = (0..ranks)
            .flat_map(|r| {
                (0..job.placement.token_block(r).len()).map(move |j| (r * block_max + j) as u32)
            })
            .collect();
        let map = HostRows::from_tokens(&st, &idx, ranks * block_max).map_err(gpu)?;
        let data = gather_bf16(&st, &all, h, &map.map()).map_err(gpu)?;
        CudaAct::from_device(data, tokens, h).map_err(gpu)
    })?;
    t.gather_ms = gather_ms;
    t.count_bytes(ex, h, 2);
    Ok(out)
}
