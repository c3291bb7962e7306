//! Expert-parallel replay: one EP rank's expert FFN work for a recorded layer.

use super::build::Model;
use super::forward::LayerRecord;
use super::ModelError;
use crate::backend::{rank_experts, Backend};
use crate::routing::DispatchLayout;
use std::ops::Range;

/// One rank's expert work, prepared (dispatched) so that running it times
/// the expert FFN alone. It borrows the layer's record: the layout and rows
/// the backend kept there ([`LayerRecord::replay`]; on CUDA the device plan
/// and layout of the recorded pass itself).
pub struct RankWork<'r, B: Backend> {
    /// The recorded layer, in 0..layers.
    pub layer: usize,
    /// Experts this rank owns (`rank * E / R .. (rank + 1) * E / R`).
    pub experts: Range<usize>,
    /// Assignments (rows) these experts serve.
    pub rows_served: usize,
    kept: &'r B::RankLayer,
}

impl<B: Backend> RankWork<'_, B> {
    /// Dispatch layout of the recorded plan (every expert, not only this rank's).
    pub fn layout(&self) -> &DispatchLayout {
        B::rank_layout(self.kept)
    }
}

impl<B: Backend> Model<B> {
    /// Prepares rank `rank` of `ranks`'s expert work for `layer` from a
    /// forward pass's record (run with `keep_moe_inputs` and `keep_plans`).
    pub fn rank_work<'r>(
        &self,
        layer: usize,
        record: &'r LayerRecord<B>,
        rank: usize,
        ranks: usize,
    ) -> Result<RankWork<'r, B>, ModelError> {
        if layer >= self.layers.len() {
            return Err(ModelError::NoSuchLayer {
                layer,
                layers: self.layers.len(),
            });
        }
        if record.moe_input.is_none() {
            return Err(ModelError::NoMoeInput { layer });
        }
        let experts = rank_experts(rank, ranks, self.config.num_local_experts)?;
        let kept = record
            .replay
            .as_ref()
            .filter(|_| record.plan.is_some())
            .ok_or(ModelError::NoPlan { layer })?;
        let rows_served = B::rank_layout(kept).counts()[experts.clone()]
            .iter()
            .map(|&c| c as usize)
            .sum();
        Ok(RankWork {
            layer,
            experts,
            rows_served,
            kept,
        })
    }

    /// Runs a prepared rank's expert FFNs ([`Backend::rank_ffn`]); returns
    /// their output rows (`[rows of the rank's experts, hidden]`).
    pub fn run_rank_work(&self, work: &RankWork<'_, B>) -> Result<B::Act, ModelError> {
        Ok(self.backend.rank_ffn(
            work.kept,
            &self.layers[work.layer].moe.experts,
            work.experts.clone(),
        )?)
    }
}
