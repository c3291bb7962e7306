//! Serving on real EP ranks ([`serve_ep`], clock [`StepClock::MeasuredEp`]): every rank runs
//! the same scheduler over the same requests with its own model (its group of experts), every
//! forward's MoE layers exchange rows across the ranks ([`EpMoe`]), and after each forward the
//! ranks all-gather what each measured, so that every rank advances the virtual clock by the
//! same step time: the slowest rank's. The schedule, the plans and the served tokens are
//! therefore the same on every rank, and the same as one process's for the same batches.

use super::engine::{check_options, serve_with, ServeOptions, ServeRun};
use super::error::ServeError;
use super::request::Request;
use super::timing::{RankForward, StepClock};
use crate::backend::Backend;
use crate::ep::comm::{all_gather, check_agreement, Communicator};
use crate::ep::dist::{agreement_hash, expert_group, DistError, EpMoe};
use crate::ep::EpBackend;
use crate::model::{Model, MoeRunner};
use crate::progress::Progress;
use crate::routing::{Policy, RouterConfig};

/// A forward's MoE runner across EP ranks, and every rank's measurements after it.
pub(crate) trait EpForward<B: Backend> {
    /// What runs the forward's MoE layers.
    fn runner(&self) -> &dyn MoeRunner<B>;
    /// Ranks.
    fn ranks(&self) -> usize;
    /// Every rank's measurements of the forward just run (this rank's took `wall_s`), in rank
    /// order, the same on every rank (one all-gather).
    fn measure(&self, wall_s: f64) -> Result<Vec<RankForward>, ServeError>;
}

struct EpTimer<'e, 'c, C: Communicator + ?Sized> {
    ep: &'e EpMoe<'c, C>,
}

impl<B: EpBackend, C: Communicator + ?Sized> EpForward<B> for EpTimer<'_, '_, C> {
    fn runner(&self) -> &dyn MoeRunner<B> {
        self.ep
    }

    fn ranks(&self) -> usize {
        self.ep.comm().size()
    }

    fn measure(&self, wall_s: f64) -> Result<Vec<RankForward>, ServeError> {
        let mut mine = RankForward {
            wall_s,
            ..RankForward::default()
        };
        for t in self.ep.take_times() {
            mine.moe_s += t.total_ms() / 1e3;
            mine.expert_s += t.expert_ms / 1e3;
            mine.wait_s += t.wait_ms() / 1e3;
        }
        let all = all_gather(self.ep.comm(), &mine.to_array()).map_err(DistError::from)?;
        Ok(all
            .chunks(RankForward::FIELDS)
            .map(RankForward::from_slice)
            .collect())
    }
}

/// Rows per token one rank may receive under `policy` with `per` local experts of `experts`
/// and top-`k`: a token is served by at most `k` experts (rerouting moves an assignment, never
/// adds one), except under `expand:local`, which may add every expert of its own rank.
fn rows_per_token(policy: Policy, k: usize, per: usize) -> usize {
    match policy {
        Policy::ExpandLocal => per,
        _ => k.min(per),
    }
}

/// Serves `requests` like [`serve`](super::serve), on rank `comm.rank()` of `comm.size()`
/// real EP ranks: `model` holds this rank's expert group
/// ([`Model::load_expert_group`] or [`Model::random_group`]); every rank calls this with the
/// same requests and options (checked by hash, one collective) and gets the same run back.
/// `opts.clock` must be [`StepClock::MeasuredEp`] and `opts.ranks` the communicator's size.
/// A rank that fails makes every rank fail (the communicator's contract); tick `progress` on
/// one rank only.
pub fn serve_ep<B: EpBackend, C: Communicator + ?Sized>(
    comm: &C,
    model: &Model<B>,
    requests: &[Request],
    opts: &ServeOptions,
    progress: &dyn Progress,
) -> Result<ServeRun, ServeError> {
    if opts.clock != StepClock::MeasuredEp {
        return Err(ServeError::OutOfRange {
            what: "clock",
            value: format!("{:?}", opts.clock),
            expected: "StepClock::MeasuredEp (serve_ep measures on the ranks)".into(),
        });
    }
    if opts.ranks != comm.size() {
        return Err(ServeError::OutOfRange {
            what: "ranks",
            value: opts.ranks.to_string(),
            expected: format!("the communicator's {} ranks", comm.size()),
        });
    }
    let cfg = model.config();
    let per = expert_group(comm.size(), comm.rank(), cfg.num_local_experts)
        .map_err(ServeError::from)?
        .len();
    check_options(model, opts)?;
    // The receive buffer holds the most rows any capacity (or none) can send one rank.
    let k = rows_per_token(opts.policy, cfg.num_experts_per_tok, per);
    let bound = RouterConfig::new(k, Policy::None);
    let ep = EpMoe::new(
        comm,
        cfg.num_local_experts,
        cfg.hidden_size,
        &bound,
        opts.max_batch_tokens,
    )?;
    let router = RouterConfig::new(cfg.num_experts_per_tok, opts.policy).with_ranks(comm.size());
    ep.check_model(model, &router)?;
    let what = format!("{requests:?}|{opts:?}");
    check_agreement(comm, "requests and serve options", agreement_hash(&what))
        .map_err(DistError::from)?;
    serve_with(model, requests, opts, progress, Some(&EpTimer { ep: &ep }))
}
