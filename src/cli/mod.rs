//! The `capmoe` command line. One file per subcommand.

pub mod bench;
pub mod generate;
pub mod logits;
pub mod model_args;
pub mod route;
pub mod router_args;
pub mod table;
pub mod trace;
pub mod tune;

use thiserror::Error;

/// Anything a subcommand can fail with; `main` prints it and exits with 2.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Routing(#[from] crate::RoutingError),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Npy(#[from] crate::io::npy::NpyError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    #[error(transparent)]
    Bench(#[from] crate::ep::EpError),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] crate::cuda::GpuError),
    #[error(transparent)]
    Expert(#[from] crate::expert::ExpertError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}
