//! Expert parallelism across ranks (design.md §9): each rank holds its
//! group of experts and its block of tokens, and every MoE layer exchanges
//! rows through a [`Communicator`]: threads
//! ([`crate::ep::comm::LocalComm`]) or processes (`MpiComm`, feature `mpi`;
//! `NcclComm`, feature `nccl`, over which CUDA ranks move rows GPU to GPU:
//! [`RowJob`]). Ranks really wait for each other inside the collectives;
//! [`LayerTimes`] says how long.
//!
//! The dense part of the model (embeddings, attention, norms, router, LM
//! head) is replicated on every rank, so each rank computes every token's
//! router logits and the global plan itself; a hash checks that every rank
//! routed alike. Only the experts are split. On the CPU the logits equal the
//! single-process forward's bit for bit, for every policy: each expert sees
//! the same rows in the same order, and combine sums in plan order.
//!
//! ```
//! use capmoe::backend::CpuBackend;
//! use capmoe::ep::comm::run_local;
//! use capmoe::ep::dist::{ep_logits, EpMoe};
//! use capmoe::model::{InitOptions, MixtralConfig, Model};
//! use capmoe::progress::NoProgress;
//! use std::time::Duration;
//!
//! let cfg = MixtralConfig::builtin("tiny").unwrap();
//! let opts = InitOptions::new(7);
//! let whole = Model::random(CpuBackend, cfg.clone(), &opts).unwrap();
//! let router = whole.default_router();
//! let ids = [1u32, 2, 3, 4];
//! let want = whole.logits(&ids, &router).unwrap();
//! let got = run_local(2, Duration::from_secs(60), |comm| {
//!     let ep = EpMoe::new(comm, cfg.num_local_experts, cfg.hidden_size, &router, 16)?;
//!     let mine = Model::random_group(CpuBackend, cfg.clone(), &opts, ep.group(), &NoProgress)?;
//!     ep_logits(&ep, &mine, &ids, &router)
//! });
//! for rank in got {
//!     assert_eq!(rank.unwrap(), want);
//! }
//! ```

mod bench;
#[cfg(feature = "nccl")]
mod device;
mod error;
mod exchange;
mod layer;
#[cfg(feature = "bench")]
mod plot;
mod rows;
mod stats;
#[cfg(test)]
mod tests;

pub use bench::{ep_bench, EpBenchReport, EpBenchSetup, EpCase, RankLayer};
#[cfg(feature = "nccl")]
pub(crate) use device::nccl_rows;
pub use error::DistError;
pub use exchange::{gathered_rows, Exchange};
pub use layer::{agreement_hash, expert_group, EpMoe};
#[cfg(feature = "bench")]
pub use plot::speedup_figure;
pub use rows::{RowJob, Scratch};
pub use stats::{gather_times, LayerTimes};

use crate::ep::comm::{check_agreement, Communicator};
use crate::ep::EpBackend;
use crate::model::{GenerateOptions, Model};
use crate::routing::RouterConfig;

impl<C: Communicator + ?Sized> EpMoe<'_, C> {
    /// Fails unless `model` holds this rank's expert group, and (one
    /// collective) unless every rank runs the same model config, router and
    /// rank count.
    pub fn check_model<B: EpBackend>(
        &self,
        model: &Model<B>,
        router: &RouterConfig,
    ) -> Result<(), DistError> {
        if model.expert_group() != self.group() {
            return Err(DistError::WrongGroup {
                rank: self.comm().rank(),
                held: model.expert_group(),
                expected: self.group(),
            });
        }
        let what = format!("{:?}|{router:?}|{}", model.config(), self.comm().size());
        check_agreement(
            self.comm(),
            "model config, router and ranks",
            agreement_hash(&what),
        )?;
        Ok(())
    }
}

impl<C: Communicator + ?Sized> EpMoe<'_, C> {
    /// Fails unless a prefill of `tokens` tokens gives every rank at least
    /// one ([`DistError::EmptyTokenBlock`]).
    pub fn check_prefill(&self, tokens: usize) -> Result<(), DistError> {
        let ranks = self.comm().size();
        match (0..ranks).find(|&r| r * tokens / ranks == (r + 1) * tokens / ranks) {
            None => Ok(()),
            Some(rank) => Err(DistError::EmptyTokenBlock {
                rank,
                tokens,
                ranks,
            }),
        }
    }
}

/// The logits of every position of `ids` (one row each), computed across
/// the ranks of `ep`: what [`Model::logits`] gives in one process.
pub fn ep_logits<B: EpBackend, C: Communicator + ?Sized>(
    ep: &EpMoe<'_, C>,
    model: &Model<B>,
    ids: &[u32],
    router: &RouterConfig,
) -> Result<Vec<Vec<f32>>, DistError> {
    ep.check_model(model, router)?;
    ep.check_prefill(ids.len())?;
    Ok(model.logits_with(ids, router, Some(ep))?)
}

/// Greedy generation across the ranks of `ep` (prefill and every decode
/// step): what [`Model::generate_batch`] gives in one process.
pub fn ep_generate<B: EpBackend, C: Communicator + ?Sized>(
    ep: &EpMoe<'_, C>,
    model: &Model<B>,
    prompts: &[&[u32]],
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>, DistError> {
    ep.check_model(model, &opts.router)?;
    ep.check_prefill(prompts.iter().map(|p| p.len()).sum())?;
    Ok(model.generate_batch_with(prompts, opts, Some(ep))?)
}
