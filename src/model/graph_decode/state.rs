//! The decode graph's device state of one batch size.

use super::too_large;
use crate::backend::cuda::{i32_of, CudaBackend};
use crate::cuda::LedgerLayout;
use crate::model::{Model, ModelError};
use cudarc::driver::CudaSlice;

/// The device state of one batch size: what the captured graph reads and
/// writes in place.
pub(super) struct DecodeState {
    pub(super) batch: usize,
    /// Token fed to each sequence next `[batch]`.
    pub(super) ids: CudaSlice<u32>,
    /// Each sequence's position of that token `[batch]`.
    pub(super) positions: CudaSlice<i32>,
    /// Per layer: keys and values `[batch * max_positions, kv_heads * head_dim]`.
    pub(super) k: Vec<CudaSlice<u16>>,
    pub(super) v: Vec<CudaSlice<u16>>,
    /// `[2 batch]` words of per-row non-finite records (u64), `[batch]`
    /// picked tokens, then the plan ledger.
    pub(super) record: CudaSlice<u32>,
}

impl DecodeState {
    pub(super) fn alloc(
        model: &Model<CudaBackend>,
        batch: usize,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let c = &model.config;
        let width = c.num_key_value_heads * c.head_dim;
        let cache = batch
            .checked_mul(max_positions)
            .and_then(|n| n.checked_mul(width))
            .ok_or_else(|| too_large("static KV cache elements", max_positions))?;
        let ledger = LedgerLayout::words_for(c.num_hidden_layers, c.num_local_experts)
            .and_then(|w| w.checked_add(3 * batch))
            .ok_or_else(|| too_large("decode record words", batch))?;
        let st = model.backend().gpu.stream();
        // Not zeroed (a pass over every layer's cache, at each retain too):
        // attention reads rows 0..=positions[b] of a sequence only, and each
        // of those is copied in (copy_in) or appended by a step first.
        let uninit = |n: usize| crate::cuda::uninit::<u16>(st, n);
        let mut k = Vec::with_capacity(c.num_hidden_layers);
        let mut v = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            k.push(uninit(cache)?);
            v.push(uninit(cache)?);
        }
        Ok(Self {
            batch,
            ids: st.alloc_zeros::<u32>(batch)?,
            positions: st.alloc_zeros::<i32>(batch)?,
            k,
            v,
            record: st.alloc_zeros::<u32>(ledger)?,
        })
    }

    /// Copies `n` elements of layer `li`'s keys and values, from element
    /// `from` of `src`, to this state's caches at element `at`.
    pub(super) fn copy_in(
        &mut self,
        model: &Model<CudaBackend>,
        li: usize,
        at: usize,
        src: (&CudaSlice<u16>, &CudaSlice<u16>),
        from: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        if n == 0 {
            return Ok(());
        }
        let fits = |len: usize, start: usize| start.checked_add(n).is_some_and(|e| e <= len);
        if !fits(src.0.len().min(src.1.len()), from) || !fits(self.k[li].len(), at) {
            return Err(ModelError::Mismatch {
                what: "cache rows copied (past a buffer's end)",
                got: n,
                expected: self.k[li].len().saturating_sub(at),
            });
        }
        let st = model.backend().gpu.stream();
        st.memcpy_dtod(
            &src.0.slice(from..from + n),
            &mut self.k[li].slice_mut(at..at + n),
        )?;
        st.memcpy_dtod(
            &src.1.slice(from..from + n),
            &mut self.v[li].slice_mut(at..at + n),
        )?;
        Ok(())
    }

    pub(super) fn upload(
        &mut self,
        model: &Model<CudaBackend>,
        pending: &[u32],
        lens: &[usize],
    ) -> Result<(), ModelError> {
        let st = model.backend().gpu.stream();
        let pos = lens
            .iter()
            .map(|&l| i32_of("position", l))
            .collect::<Result<Vec<i32>, _>>()?;
        st.memcpy_htod(pending, &mut self.ids)?;
        st.memcpy_htod(&pos, &mut self.positions)?;
        Ok(())
    }
}
