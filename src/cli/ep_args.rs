//! `--ep local:R|mpi`: run a model subcommand across EP ranks
//! (`capmoe::ep::dist`). Rank 0 prints and writes; the other ranks are quiet.

use super::model_args::{ModelArgs, ModelDevice};
use super::CliError;
use capmoe::backend::CpuBackend;
use capmoe::ep::comm::{check_agreement, run_local, Communicator};
use capmoe::ep::dist::{agreement_hash, expert_group, EpMoe};
use capmoe::ep::EpBackend;
use capmoe::model::Model;
use capmoe::routing::RouterConfig;
use clap::Args;
use std::str::FromStr;
use std::time::Duration;

/// How the ranks of an EP run talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpMode {
    /// `R` ranks as threads of this process.
    Local(usize),
    /// One process per rank under `mpirun -n R`.
    Mpi,
}

impl FromStr for EpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "mpi" {
            return Ok(Self::Mpi);
        }
        match s.strip_prefix("local:").map(str::parse::<usize>) {
            Some(Ok(r)) if r >= 1 => Ok(Self::Local(r)),
            _ => Err(format!(
                "`{s}` is not an EP mode; expected `local:R` (R >= 1 ranks as threads) or `mpi` (under mpirun)"
            )),
        }
    }
}

#[derive(Debug, Args)]
pub struct EpArgs {
    /// Expert parallelism across ranks, each holding only its group of
    /// experts and exchanging rows by all-to-all-v: `local:R` runs R ranks
    /// as threads; `mpi` runs one rank per process under
    /// `mpirun -n R capmoe ... --ep mpi` (needs a build with `--features mpi`).
    /// The output equals the single-process run's (on the CPU bit for bit;
    /// `logits` and `generate` also take `--device cuda`: rank r on GPU
    /// `r mod count`, rows moved as `--ep-rows` says). Example:
    /// `capmoe logits --model tiny --ids 1,2,3 --ep local:2`.
    #[arg(long, value_name = "local:R|mpi")]
    pub ep: Option<EpMode>,
    /// Seconds a rank waits inside one collective before it gives up
    /// (`local:R`; under MPI a dead rank is caught by mpirun).
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub ep_timeout: u64,
    /// How rows cross CUDA ranks (`--device cuda`): `nccl` moves them GPU to
    /// GPU through NCCL (a build with `--features nccl`, one GPU per rank,
    /// under `--ep mpi` or `--ep local:1`: NCCL waits have no deadline, and
    /// only mpirun ends the other ranks of a job whose rank fails);
    /// `host` stages them through host memory over the rank communicator
    /// (`--ep-timeout` holds); `auto` takes NCCL under `--ep mpi` (mpirun ends
    /// a job whose rank dies) when the build has it, every rank loads it and
    /// no rank sees fewer GPUs than there are ranks, else the host.
    #[arg(long, value_enum, default_value_t = EpRows::Auto)]
    pub ep_rows: EpRows,
}

/// `--ep-rows`: how rows cross CUDA EP ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EpRows {
    /// NCCL when it can, else the host.
    Auto,
    /// Staged through host memory.
    Host,
    /// GPU to GPU through NCCL.
    Nccl,
}

/// Runs `f` on every rank of `mode`: rank 0's output comes back as
/// `Some`, the other ranks' as `None` (they print nothing). A failed rank
/// makes every rank fail: in-process the error names the rank; under MPI the
/// failing rank prints its error and aborts the job.
pub fn on_ranks<R: Send>(
    args: &EpArgs,
    mode: EpMode,
    f: impl Fn(&dyn Communicator) -> Result<R, CliError> + Sync,
) -> Result<Option<R>, CliError> {
    match mode {
        EpMode::Local(ranks) => {
            let timeout = Duration::from_secs(args.ep_timeout.max(1));
            let mut out = run_local(ranks, timeout, |c| f(c)).into_iter();
            match out.next() {
                Some(Ok(v)) => match out
                    .enumerate()
                    .find_map(|(i, r)| r.err().map(|e| (i + 1, e)))
                {
                    None => Ok(Some(v)),
                    Some((rank, e)) => Err(CliError::Usage(format!("EP rank {rank}: {e}"))),
                },
                Some(Err(e)) => Err(CliError::Usage(format!("EP rank 0: {e}"))),
                None => Err(CliError::Usage("--ep local:0 has no ranks".into())),
            }
        }
        EpMode::Mpi => on_mpi(f),
    }
}

#[cfg(feature = "mpi")]
fn on_mpi<R>(f: impl Fn(&dyn Communicator) -> Result<R, CliError>) -> Result<Option<R>, CliError> {
    let comm = capmoe::ep::comm::MpiComm::init()?;
    match f(&comm) {
        Ok(v) => Ok((comm.rank() == 0).then_some(v)),
        Err(e) => {
            // Every rank's error is printed by the rank that has it; then the
            // job ends, so no peer waits on this one.
            eprintln!("capmoe: EP rank {} of {}: {e}", comm.rank(), comm.size());
            comm.abort(&e.to_string());
            Err(e)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn on_mpi<R>(_f: impl Fn(&dyn Communicator) -> Result<R, CliError>) -> Result<Option<R>, CliError> {
    Err(CliError::Usage(
        "--ep mpi needs a capmoe built with `--features mpi` (Open MPI: apt-get install libopenmpi-dev openmpi-bin libclang-dev), run under `mpirun -n R`; or use --ep local:R".into(),
    ))
}

/// A subcommand's work on one EP rank, on the rank's model of any backend.
pub trait RankTask {
    type Output;
    fn run<B: EpBackend>(
        &self,
        ep: &EpMoe<'_, dyn Communicator + '_>,
        model: &Model<B>,
    ) -> Result<Self::Output, CliError>;
}

/// Builds this rank's EP layer and model (the rank loads only its group of
/// experts) on `--device`, then runs `task`. With `--device cuda`, rank `r`
/// uses GPU `r mod count` (one node: several ranks share a GPU when there are
/// more ranks than GPUs); rows cross ranks as `--ep-rows` says.
pub fn on_rank_model<T: RankTask>(
    args: &EpArgs,
    model: &ModelArgs,
    comm: &dyn Communicator,
    router: &RouterConfig,
    max_tokens: usize,
    task: &T,
) -> Result<T::Output, CliError> {
    if let (EpRows::Nccl, Some(EpMode::Local(ranks @ 2..))) = (args.ep_rows, args.ep) {
        return Err(CliError::Usage(format!(
            "--ep-rows nccl with --ep local:{ranks}: NCCL waits have no deadline, so a failed thread rank would leave the others waiting; run the ranks as processes (`mpirun -n {ranks} capmoe ... --ep mpi --ep-rows nccl`, where mpirun ends the job), or keep --ep local:{ranks} with --ep-rows host (its waits end after --ep-timeout)"
        )));
    }
    match model.device {
        ModelDevice::Cpu => {
            if args.ep_rows == EpRows::Nccl {
                return Err(CliError::Usage(
                    "--ep-rows nccl moves rows between GPUs: add --device cuda (or drop --ep-rows)"
                        .into(),
                ));
            }
            let ep = rank_layer(model, comm, router, max_tokens)?;
            task.run(&ep, &model.load_group_on(CpuBackend, ep.group())?)
        }
        #[cfg(feature = "cuda")]
        ModelDevice::Cuda => {
            use capmoe::cuda::GpuContext;
            let count = GpuContext::device_count()?;
            if count == 0 {
                return Err(CliError::Usage(
                    "--device cuda: the driver sees no GPU".into(),
                ));
            }
            let be = capmoe::backend::CudaBackend::new(&GpuContext::new(comm.rank() % count)?)?;
            #[cfg(feature = "nccl")]
            if let Some(nccl) = nccl_ranks(args, comm, &be, count)? {
                let ep = rank_layer(model, &nccl, router, max_tokens)?;
                return task.run(&ep, &model.load_group_on(be, ep.group())?);
            }
            #[cfg(not(feature = "nccl"))]
            if args.ep_rows == EpRows::Nccl {
                return Err(CliError::Usage(
                    "--ep-rows nccl needs a capmoe built with `--features nccl` (NCCL is loaded at run time); or use --ep-rows host".into(),
                ));
            }
            let ep = rank_layer(model, comm, router, max_tokens)?;
            task.run(&ep, &model.load_group_on(be, ep.group())?)
        }
        #[cfg(not(feature = "cuda"))]
        ModelDevice::Cuda => Err(CliError::Usage(
            "--device cuda needs a capmoe built with `--features cuda`; this build has the CPU backend only".into(),
        )),
    }
}

/// The NCCL communicator of this rank on the backend's GPU and stream when
/// `--ep-rows` asks for one, else `None`. Under `auto` every rank decides
/// alike: NCCL only under `--ep mpi`, and only when every rank (one
/// all-gather of a flag) loads NCCL and sees at least as many GPUs as there
/// are ranks.
#[cfg(feature = "nccl")]
fn nccl_ranks(
    args: &EpArgs,
    comm: &dyn Communicator,
    be: &capmoe::backend::CudaBackend,
    gpus: usize,
) -> Result<Option<capmoe::ep::comm::NcclComm>, CliError> {
    use capmoe::ep::comm::{all_gather, NcclComm};
    match args.ep_rows {
        EpRows::Host => Ok(None),
        EpRows::Auto if args.ep != Some(EpMode::Mpi) => Ok(None),
        EpRows::Auto => {
            let here = u8::from(comm.size() <= gpus && NcclComm::probe().is_ok());
            if all_gather(comm, &[here])?.contains(&0) {
                return Ok(None);
            }
            Ok(Some(NcclComm::from_host(comm, be.gpu())?))
        }
        EpRows::Nccl => Ok(Some(NcclComm::from_host(comm, be.gpu())?)),
    }
}

/// This rank's EP layer, once every rank has checked it loads the same model.
fn rank_layer<'c>(
    model: &ModelArgs,
    comm: &'c (dyn Communicator + 'c),
    router: &RouterConfig,
    max_tokens: usize,
) -> Result<EpMoe<'c, dyn Communicator + 'c>, CliError> {
    check_same_model(model, comm)?;
    let cfg = model.config()?;
    Ok(EpMoe::new(
        comm,
        cfg.num_local_experts,
        cfg.hidden_size,
        router,
        max_tokens,
    )?)
}

/// This rank's model, holding only its group of experts, on the CPU
/// (refuses `--device cuda`, and ranks that do not divide the experts).
pub fn group_model(
    model: &ModelArgs,
    comm: &dyn Communicator,
) -> Result<Model<CpuBackend>, CliError> {
    if model.device != ModelDevice::Cpu {
        return Err(CliError::Usage(
            "this command runs --ep on the CPU backend only (logits and generate take --device cuda); drop --device cuda".into(),
        ));
    }
    check_same_model(model, comm)?;
    let cfg = model.config()?;
    let group = expert_group(comm.size(), comm.rank(), cfg.num_local_experts)?;
    model.load_group_on(CpuBackend, group)
}

/// Every rank must load the same model: the same path or built-in, seed and skew.
fn check_same_model(model: &ModelArgs, comm: &dyn Communicator) -> Result<(), CliError> {
    let what = format!("{}|{}|{:?}", model.model, model.seed, model.skew);
    check_agreement(comm, "--model, --seed and --skew", agreement_hash(&what))?;
    Ok(())
}
