//! `safe` layer: [`GpuRouter`] runs the routing contract on the device, from
//! router logits to a plan, a dispatch layout and combine, with no host sync
//! in between. [`GpuPlan::to_host`] returns the same [`RoutingPlan`] shape as
//! the CPU oracle, so tests compare them directly.
//!
//! One thing per file, named after the host twins in `crate::routing` and the
//! kernels in cuda/routing/: gating (`gate`), capacity selection (`select`), the plan
//! (`plan`), the dispatch layout and GEMM arguments (`dispatch`), gather and
//! combine (`combine`, on the typed row maps of `rows`), a plan's checks and loads kept for one later
//! read-back (`summary`), and the buffer helpers (`buffers`).

mod buffers;
mod combine;
mod dispatch;
mod gate;
mod plan;
pub(crate) mod rows;
mod select;
mod summary;

pub use dispatch::{GpuDispatch, GpuGemmArgs};
pub use plan::GpuPlan;
pub(crate) use summary::LedgerLayout;
pub use summary::{settle, PlanSummary};

use super::context::GpuContext;
use super::error::{to_i32, GpuError};
use super::launch::Shape;
use crate::routing::{plan_capacity, Policy, RouterConfig, RoutingPlan};
use cudarc::driver::CudaSlice;

/// Routes batches on one GPU under one configuration.
///
/// ```no_run
/// # fn main() -> Result<(), capmoe::cuda::GpuError> {
/// use capmoe::cuda::{GpuContext, GpuRouter};
/// use capmoe::routing::{Logits, RouterConfig};
/// let gpu = GpuContext::new(0)?;
/// let router = GpuRouter::new(&gpu, RouterConfig::new(2, "drop:score".parse()?).with_capacity_factor(1.5))?;
/// let logits = vec![0.0f32; 64 * 8];
/// let plan = router.route_host(&Logits::new(&logits, 64, 8)?)?; // same shape as capmoe::routing::route
/// # Ok(()) }
/// ```
pub struct GpuRouter {
    gpu: GpuContext,
    cfg: RouterConfig,
    max_rounds: Option<usize>,
}

impl GpuRouter {
    /// Checks that the policy runs on the GPU. `reroute:optimal` (the auction)
    /// is not there yet and is refused with [`GpuError::Unsupported`].
    pub fn new(gpu: &GpuContext, cfg: RouterConfig) -> Result<Self, GpuError> {
        if cfg.policy == Policy::RerouteOptimal {
            return Err(GpuError::Unsupported(cfg.policy.to_string()));
        }
        Ok(Self {
            gpu: gpu.clone(),
            cfg,
            max_rounds: None,
        })
    }

    /// Round limit for `reroute:next-best` (default `2E + 16`). Every round is
    /// enqueued (the host cannot see convergence without a sync), but rounds
    /// after convergence exit early on a device flag, so a generous limit costs
    /// launches, not work. Synchronous rounds follow displacement chains, which
    /// can be longer than E; when the limit is hit, [`GpuPlan::to_host`]
    /// reports [`GpuError::NotConverged`]. An unconverged plan still respects
    /// capacity: it may drop slots that the oracle reroutes.
    pub fn with_max_rounds(mut self, rounds: usize) -> Self {
        self.max_rounds = Some(rounds.max(1));
        self
    }

    /// The routing configuration this router runs.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Uploads `logits`, routes them and copies the plan back.
    pub fn route_host(&self, logits: &crate::routing::Logits<'_>) -> Result<RoutingPlan, GpuError> {
        // Never allocate 0 bytes (cuMemAlloc rejects it without memory pools).
        let d = if logits.data().is_empty() {
            self.gpu.stream().clone_htod(&[0.0f32])?
        } else {
            self.gpu.stream().clone_htod(logits.data())?
        };
        self.route(&d, logits.tokens(), logits.experts())?.to_host()
    }

    /// Routes `[tokens, experts]` device logits. Shapes and the configuration
    /// are checked here, before any launch. The values are checked on the
    /// device: a NaN or Inf logit is recorded by the gating kernel (its token
    /// gets in-range experts, so nothing reads out of bounds) and
    /// [`GpuPlan::to_host`] reports it as [`crate::RoutingError::NonFiniteLogit`].
    pub fn route(
        &self,
        logits: &CudaSlice<f32>,
        tokens: usize,
        experts: usize,
    ) -> Result<GpuPlan, GpuError> {
        self.route_biased(logits, None, tokens, experts)
    }

    /// [`GpuRouter::route`] with a per-expert logit bias `[experts]` added on
    /// the device inside the gating kernel (f32, round to nearest: the same
    /// sum the host oracle gates on), so a biased router needs no extra pass.
    pub fn route_biased(
        &self,
        logits: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        tokens: usize,
        experts: usize,
    ) -> Result<GpuPlan, GpuError> {
        if let Some(b) = bias {
            if b.len() != experts {
                return Err(GpuError::Shape {
                    what: "router bias (one f32 per expert)",
                    got: format!("[{}]", b.len()),
                    expected: format!("[{experts}]"),
                });
            }
        }
        let cfg = &self.cfg;
        let capacity = plan_capacity(tokens, experts, cfg)?;
        if experts == 0 {
            return Err(crate::RoutingError::NoExperts.into());
        }
        if experts > crate::MAX_EXPERTS {
            return Err(crate::RoutingError::TooManyExperts { experts }.into());
        }
        if logits.len() != tokens * experts && !(tokens == 0 && logits.len() <= 1) {
            return Err(crate::RoutingError::LogitsLength {
                len: logits.len(),
                tokens,
                experts,
            }
            .into());
        }
        let k = cfg.top_k;
        let stride = if cfg.policy == Policy::ExpandLocal {
            k + experts / cfg.ranks
        } else {
            k
        };
        // Strictly below i32::MAX: the kernels index `n + 1` entries.
        to_i32("tokens * experts", tokens * experts.max(stride) + 1)?;
        let shape = Shape {
            tokens: tokens as i32,
            experts: experts as i32,
            k: k as i32,
        };
        let st = self.gpu.stream().clone();
        let gated = gate::gate(&st, shape, logits, bias)?;
        let rounds = self.max_rounds.unwrap_or(2 * experts + 16);
        let selected = select::select(&st, cfg, shape, stride, capacity, rounds, &gated)?;
        GpuPlan::build(st, cfg, capacity, shape, stride, rounds, gated, selected)
    }
}
