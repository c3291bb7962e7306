//! Expert-parallel replay: one EP rank's expert FFN work for a recorded layer.

use super::build::Model;
use super::forward::LayerRecord;
use super::ModelError;
use crate::backend::{rank_experts, Backend};
use crate::routing::DispatchLayout;
use std::ops::Range;

/// One rank's expert work, prepared (dispatched) so that running it times
/// the expert FFN alone.
pub struct RankWork<B: Backend> {
    /// The recorded layer, in 0..layers.
    pub layer: usize,
    /// Experts this rank owns (`rank * E / R .. (rank + 1) * E / R`).
    pub experts: Range<usize>,
    /// Assignments (rows) these experts serve.
    pub rows_served: usize,
    /// Dispatch layout of the recorded plan (every expert, not only this rank's).
    pub layout: DispatchLayout,
    rows: B::Act,
}

impl<B: Backend> Model<B> {
    /// Prepares rank `rank` of `ranks`'s expert work for `layer` from a
    /// forward pass's record (run with `keep_moe_inputs`): the layout of the
    /// recorded plan and the dispatched rows of every expert.
    pub fn rank_work(
        &self,
        layer: usize,
        record: &LayerRecord<B>,
        rank: usize,
        ranks: usize,
    ) -> Result<RankWork<B>, ModelError> {
        if layer >= self.layers.len() {
            return Err(ModelError::NoSuchLayer {
                layer,
                layers: self.layers.len(),
            });
        }
        let x = record
            .moe_input
            .as_ref()
            .ok_or(ModelError::NoMoeInput { layer })?;
        let experts = rank_experts(rank, ranks, self.config.num_local_experts)?;
        let plan = record.plan.as_ref().ok_or(ModelError::NoPlan { layer })?;
        let layout = DispatchLayout::new(plan, self.backend.dispatch_tile())?;
        let rows = self.backend.dispatch(x, &layout)?;
        let rows_served = layout.counts()[experts.clone()]
            .iter()
            .map(|&c| c as usize)
            .sum();
        Ok(RankWork {
            layer,
            experts,
            rows_served,
            layout,
            rows,
        })
    }

    /// Runs a prepared rank's expert FFNs; returns their output rows
    /// (`[rows of the rank's experts, hidden]`).
    pub fn run_rank_work(&self, work: &RankWork<B>) -> Result<B::Act, ModelError> {
        Ok(self.backend.expert_ffn(
            &work.rows,
            &work.layout,
            &self.layers[work.layer].moe.experts,
            work.experts.clone(),
        )?)
    }
}
