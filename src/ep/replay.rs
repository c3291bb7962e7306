//! Expert-parallel replay: one EP rank's expert FFN work for a recorded layer.

use super::backend::{EpBackend, RankKeep};
use crate::model::{ForwardOptions, ForwardOutput, LayerRecord, Model, ModelError, Sequence};
use crate::routing::{DispatchLayout, Placement, RoutingError};
use std::ops::Range;

/// One rank's expert work, prepared (dispatched) so that running it times
/// the expert FFN alone. It borrows the layer's record: the layout and rows
/// the backend kept there ([`LayerRecord::replay`]; on CUDA the device plan
/// and layout of the recorded pass itself).
pub struct RankWork<'r, B: EpBackend> {
    /// The recorded layer, in 0..layers.
    pub layer: usize,
    /// Experts this rank owns (`rank * E / R .. (rank + 1) * E / R`).
    pub experts: Range<usize>,
    /// Assignments (rows) these experts serve.
    pub rows_served: usize,
    kept: &'r B::RankLayer,
}

impl<B: EpBackend> RankWork<'_, B> {
    /// Dispatch layout of the recorded plan (every expert, not only this rank's).
    pub fn layout(&self) -> &DispatchLayout {
        B::rank_layout(self.kept)
    }
}

/// EP rank replay on a [`Model`]: a prefill that keeps what replay needs,
/// then one rank's expert work of a recorded layer.
pub trait RankReplay<B: EpBackend> {
    /// [`Model::prefill`] keeping each layer's [`EpBackend::RankLayer`] in
    /// its record when `opts` keeps plans and MoE inputs.
    #[allow(clippy::type_complexity)]
    fn prefill_ranks(
        &self,
        prompts: &[&[u32]],
        opts: &ForwardOptions,
    ) -> Result<(Vec<Sequence<B>>, ForwardOutput<B>), ModelError>;

    /// Prepares rank `rank` of `ranks`'s expert work for `layer` from a
    /// [`RankReplay::prefill_ranks`] record (run with `keep_moe_inputs`
    /// and `keep_plans`).
    fn rank_work<'r>(
        &self,
        layer: usize,
        record: &'r LayerRecord<B>,
        rank: usize,
        ranks: usize,
    ) -> Result<RankWork<'r, B>, ModelError>;

    /// Runs a prepared rank's expert FFNs ([`EpBackend::rank_ffn`]); returns
    /// their output rows (`[rows of the rank's experts, hidden]`).
    fn run_rank_work(&self, work: &RankWork<'_, B>) -> Result<B::Act, ModelError>;
}

impl<B: EpBackend> RankReplay<B> for Model<B> {
    fn prefill_ranks(
        &self,
        prompts: &[&[u32]],
        opts: &ForwardOptions,
    ) -> Result<(Vec<Sequence<B>>, ForwardOutput<B>), ModelError> {
        self.prefill_with(prompts, opts, Some(&RankKeep))
    }

    fn rank_work<'r>(
        &self,
        layer: usize,
        record: &'r LayerRecord<B>,
        rank: usize,
        ranks: usize,
    ) -> Result<RankWork<'r, B>, ModelError> {
        let layers = self.layers().len();
        if layer >= layers {
            return Err(ModelError::NoSuchLayer { layer, layers });
        }
        if record.moe_input.is_none() {
            return Err(ModelError::NoMoeInput { layer });
        }
        let place = Placement::new(ranks, self.config().num_local_experts, 0)?;
        if rank >= ranks {
            return Err(RoutingError::ShapeMismatch {
                what: "rank index (must be below ranks)",
                len: rank,
                expected: ranks,
            }
            .into());
        }
        let experts = place.expert_group(rank);
        let kept = record
            .replay
            .as_ref()
            .filter(|_| record.plan.is_some())
            .and_then(|k| k.downcast_ref::<B::RankLayer>())
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

    fn run_rank_work(&self, work: &RankWork<'_, B>) -> Result<B::Act, ModelError> {
        Ok(self.backend().rank_ffn(
            work.kept,
            &self.layers()[work.layer].moe.experts,
            work.experts.clone(),
        )?)
    }
}
