//! `capmoe serve-bench --ep local:R|mpi`: every run's forwards across real EP ranks
//! ([`capmoe::serve::serve_ep`]), each rank holding only its group of experts. Every rank
//! serves the same stream on the same schedule (the ranks agree on each step's time: the
//! slowest rank's); rank 0 alone draws the progress bar and gets the report.

use super::super::ep_args::{group_model, on_ranks, EpMode};
use super::super::eval::protocol;
use super::super::model_args::ModelArgs;
use super::super::progress::Bar;
use super::super::CliError;
use super::{outcome, run_specs, serve_all, stream, Outcome, ServeBenchArgs};
use capmoe::ep::comm::Communicator;
use capmoe::serve::{self, clock_description, StepClock};
use std::path::Path;

/// Where the ranks ran, in words, for the report's clock.
fn where_ranks(mode: EpMode, ranks: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    match mode {
        EpMode::Local(_) => format!(
            " Measured on {ranks} in-process ranks (threads of one process, exchanging rows through shared memory) on this machine ({cores} cores available to the process): the ranks compete for its cores with each other and with anything else running, so a rank's time includes waiting for a core."
        ),
        EpMode::Mpi => format!(
            " Measured on {ranks} MPI ranks (one process each, under mpirun; {cores} core(s) available to rank 0's process)."
        ),
    }
}

pub(super) fn bench_ep(
    args: &ServeBenchArgs,
    mode: EpMode,
    model_args: &ModelArgs,
    dir: &Path,
    examples: &[protocol::Example],
) -> Result<Option<Outcome>, CliError> {
    if args.a2a_gbps.is_some() {
        return Err(CliError::Usage(
            "--a2a-gbps models the all-to-all; with --ep the exchanges are measured: drop one of them"
                .into(),
        ));
    }
    let cfg = model_args.config()?;
    let stream = stream(args, dir, examples, cfg.vocab_size)?;
    let clock = StepClock::MeasuredEp;
    let out = on_ranks(&args.ep, mode, |comm: &dyn Communicator| {
        let ranks = comm.size();
        if args.ranks.is_some_and(|r| r != ranks) {
            return Err(CliError::Usage(format!(
                "--ranks {} disagrees with the {ranks} EP ranks running (--ep); drop --ranks",
                args.ranks.unwrap_or(0)
            )));
        }
        let model = group_model(model_args, comm)?;
        let bar = (comm.rank() == 0)
            .then(|| Bar::new((run_specs(args).len() * stream.requests.len()) as u64));
        let runs = serve_all(args, ranks, clock, bar.as_ref(), |o, p| {
            serve::serve_ep(comm, &model, &stream.requests, o, p)
        })?;
        let text = clock_description(&clock, ranks) + &where_ranks(mode, ranks);
        Ok(outcome(args, dir, &stream, ranks, clock, text, runs))
    })?;
    Ok(out)
}
