//! Capacity selection on the device: the second step of
//! [`super::GpuRouter::route`], after [`super::gate`] (twin:
//! `crate::routing::select`).

use super::buffers::{alloc, scratch};
use super::gate::Gated;
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Shape, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::{CapacityInfo, CapacityScope, DropRank, Policy, RouterConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// The capacity selection's outputs.
pub(super) struct Selected {
    /// Each slot's expert or -1 (`tokens * stride`); None under `none`,
    /// which serves the top-k itself.
    pub served: Option<CudaSlice<i32>>,
    /// next-best's device flags (`CAPMOE_NB_FLAGS` i32).
    pub flags: Option<CudaSlice<i32>>,
}

pub(super) fn raw(st: &Arc<CudaStream>) -> Stream {
    st.cu_stream() as Stream
}

/// (rank, seed, mode) of the capacity-selection launcher for `policy`.
fn selection(policy: Policy) -> Option<(sys::capmoe_rank, u64, sys::capmoe_select_mode)> {
    let drop = sys::CAPMOE_SELECT_DROP;
    match policy {
        Policy::Drop(DropRank::Score) => Some((sys::CAPMOE_RANK_SCORE, 0, drop)),
        Policy::Drop(DropRank::Order) => Some((sys::CAPMOE_RANK_ORDER, 0, drop)),
        Policy::Drop(DropRank::ReverseOrder) => Some((sys::CAPMOE_RANK_REVERSE, 0, drop)),
        Policy::Drop(DropRank::Random { seed }) => Some((sys::CAPMOE_RANK_RANDOM, seed, drop)),
        Policy::ExpandLocal => Some((sys::CAPMOE_RANK_SCORE, 0, sys::CAPMOE_SELECT_EXPAND_LOCAL)),
        _ => None,
    }
}

pub(super) fn select(
    st: &Arc<CudaStream>,
    cfg: &RouterConfig,
    shape: Shape,
    stride: usize,
    capacity: Option<CapacityInfo>,
    rounds: usize,
    g: &Gated,
) -> Result<Selected, GpuError> {
    let (tokens, experts, k) = (
        shape.tokens as usize,
        shape.experts as usize,
        shape.k as usize,
    );
    if cfg.policy == Policy::None {
        return Ok(Selected {
            served: None,
            flags: None,
        });
    }
    let experts_per_bin = match cfg.scope {
        CapacityScope::Expert => 1,
        CapacityScope::Rank => experts / cfg.ranks,
    };
    let cap = capacity.map_or(0, |c| {
        c.per_expert
            .saturating_mul(experts_per_bin as u64)
            .min(i32::MAX as u64) as i32
    });
    let mut served = scratch::<i32>(st, tokens * stride)?;
    let (pp, _gp) = g.probs.device_ptr(st);
    let (tk, _gt) = g.topk.device_ptr(st);
    if let Some((rank, seed, mode)) = selection(cfg.policy) {
        let bytes = launch::select_workspace((tokens * stride) as i64, shape.experts);
        let mut ws = scratch::<u8>(st, bytes)?;
        let (w, _gw) = ws.device_ptr_mut(st);
        let (sv, _gs) = served.device_ptr_mut(st);
        let a = sys::capmoe_select_args {
            probs: ptr(pp),
            topk: ptr(tk),
            shape,
            experts_per_bin: experts_per_bin as i32,
            ranks: cfg.ranks as i32,
            cap,
            rank,
            seed,
            mode,
            workspace: ptr_mut(w),
            workspace_bytes: bytes,
            served: ptr_mut(sv),
        };
        // SAFETY: served holds tokens * stride; workspace sized by the launcher's own query.
        unsafe { launch::select(&a, raw(st))? };
        drop((_gw, _gs));
        crate::cuda::workspace::give(ws);
        return Ok(Selected {
            served: Some(served),
            flags: None,
        });
    }
    if cfg.policy != Policy::RerouteNextBest {
        return Err(GpuError::Unsupported(cfg.policy.to_string()));
    }
    let bytes = launch::select_workspace((tokens * k) as i64, shape.experts);
    let mut ws = scratch::<u8>(st, bytes)?;
    let mut last = scratch::<i32>(st, tokens)?;
    let mut flags = alloc::<i32>(st, sys::CAPMOE_NB_FLAGS as usize)?;
    {
        let (w, _gw) = ws.device_ptr_mut(st);
        let (sv, _gs) = served.device_ptr_mut(st);
        let (ls, _gl) = last.device_ptr_mut(st);
        let (f, _gf) = flags.device_ptr_mut(st);
        let a = sys::capmoe_next_best_args {
            probs: ptr(pp),
            topk: ptr(tk),
            shape,
            experts_per_bin: experts_per_bin as i32,
            cap,
            max_rounds: to_i32("max rounds", rounds)?,
            workspace: ptr_mut(w),
            workspace_bytes: bytes,
            served: ptr_mut(sv),
            last: ptr_mut(ls),
            flags: ptr_mut(f),
        };
        // SAFETY: as for select, plus `last` (tokens) and `flags` (CAPMOE_NB_FLAGS).
        unsafe { launch::next_best(&a, raw(st))? };
    }
    crate::cuda::workspace::give(ws);
    crate::cuda::workspace::give(last);
    Ok(Selected {
        served: Some(served),
        flags: Some(flags),
    })
}
