//! The `capmoe` command line. One file per subcommand.

pub mod bench;
pub mod calibrate;
pub mod ep_args;
pub mod eval;
pub mod generate;
pub mod logits;
pub mod model_args;
pub mod progress;
pub mod record;
pub mod replay;
pub mod route;
pub mod router_args;
pub mod serve_bench;
pub mod table;
pub mod tokenizer;
pub mod trace;
pub mod tune;

use thiserror::Error;

/// Anything a subcommand can fail with; `main` prints it and exits with 2.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Routing(#[from] capmoe::RoutingError),
    #[error(transparent)]
    Trace(#[from] capmoe::trace::TraceError),
    #[error(transparent)]
    Npy(#[from] capmoe::io::npy::NpyError),
    #[error(transparent)]
    Model(#[from] capmoe::model::ModelError),
    #[error(transparent)]
    Config(#[from] capmoe::model::ConfigError),
    #[error(transparent)]
    Bench(#[from] capmoe::ep::EpError),
    #[error(transparent)]
    Dist(#[from] capmoe::ep::dist::DistError),
    #[error(transparent)]
    Comm(#[from] capmoe::ep::comm::CommError),
    #[error(transparent)]
    Sim(#[from] capmoe::ep::sim::SimError),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] capmoe::cuda::GpuError),
    #[error(transparent)]
    Expert(#[from] capmoe::expert::ExpertError),
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}
