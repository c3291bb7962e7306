//! The sparse MoE layer, written once against [`Backend`] primitives:
//! gate -> route (the routing contract) -> dispatch -> expert FFN -> combine.

use super::{Backend, BackendError};
use crate::routing::{
    route_gate, DispatchLayout, Gate, Logits, PlanTotals, RouterConfig, RoutingPlan,
};

/// One layer's MoE block: the router and the experts.
pub struct MoeWeights<B: Backend> {
    /// Router `[experts, hidden]`.
    pub gate: B::Mat,
    /// The experts, prepared by [`Backend::experts`].
    pub experts: B::Experts,
    /// Optional per-expert logit bias added to the router logits before
    /// routing (synthetic router skew, set by the model's `apply_skew`).
    pub router_bias: Option<Vec<f32>>,
}

/// What the MoE layer returns: its output `[tokens, hidden]` (zero for a
/// token that lost every expert: only the residual carries it), the plan it
/// routed by, and the dispatch layout.
pub struct MoeOutput<B: Backend> {
    /// The layer's output `[tokens, hidden]`.
    pub out: B::Act,
    /// The plan the batch was routed by.
    pub plan: RoutingPlan,
    /// The expert-major dispatch layout of that plan.
    pub layout: DispatchLayout,
}

/// How [`Backend::moe`] hands the layer's routing back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeMode {
    /// The plan and layout, on the host ([`MoeResult::Plan`]).
    Plan,
    /// Only the output now; the plan may stay on the device until
    /// [`Backend::settle`] ([`MoeResult::Deferred`], or `Plan`).
    Deferred,
}

/// What [`Backend::moe`] returns: the plan with the output, or (only when
/// [`MoeMode::Deferred`] was asked for) the output with a deferred route.
// Returned once per layer and taken apart at once: boxing the plan buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum MoeResult<B: Backend> {
    /// The output, the plan and the dispatch layout.
    Plan(MoeOutput<B>),
    /// The output and what [`Backend::settle`] reads back.
    Deferred(B::Act, DeferredRoute<B::DeviceRoute>),
}

impl<B: Backend> MoeResult<B> {
    /// The output with its plan; a deferred result is a broken contract
    /// (it is only given when asked for).
    pub fn into_plan(self) -> Result<MoeOutput<B>, BackendError> {
        match self {
            Self::Plan(m) => Ok(m),
            Self::Deferred(..) => Err(BackendError::Contract(
                "Backend::moe deferred a layer under MoeMode::Plan",
            )),
        }
    }
    /// The output and its route (a plan's totals are a host route).
    pub fn into_deferred(self) -> (B::Act, DeferredRoute<B::DeviceRoute>) {
        match self {
            Self::Plan(m) => (m.out, DeferredRoute::Host(m.plan.totals())),
            Self::Deferred(out, route) => (out, route),
        }
    }
}

/// One MoE layer's routing as [`MoeMode::Deferred`] leaves it: the
/// plan's totals on the host already, or the device's record of the plan,
/// read back with every other layer's by [`Backend::settle`].
pub enum DeferredRoute<D> {
    /// The plan's totals, known on the host.
    Host(PlanTotals),
    /// Still on the device (CUDA: the plan's non-finite check, its
    /// convergence flag, its totals and its per-expert loads).
    Device(D),
}

impl<B: Backend> MoeWeights<B> {
    /// Experts the layer holds (all, or an EP rank's group).
    pub fn num_experts(&self) -> usize {
        B::num_experts(&self.experts)
    }

    /// Experts the router scores: the rows of [`MoeWeights::gate`] (an EP
    /// rank holds fewer experts than its router scores).
    pub fn router_experts(&self, backend: &B) -> usize {
        backend.mat_shape(&self.gate).0
    }

    /// Router logits `[tokens, experts]` on the host, bias included.
    pub fn router_logits(&self, backend: &B, x: &B::Act) -> Result<Vec<f32>, BackendError> {
        let mut host = backend.linear_to_host(x, &self.gate)?;
        if let Some(bias) = &self.router_bias {
            let e = bias.len();
            if e != self.router_experts(backend) {
                return Err(BackendError::Shape {
                    what: "router bias",
                    got: vec![e],
                    expected: vec![self.router_experts(backend)],
                });
            }
            for (i, v) in host.iter_mut().enumerate() {
                *v += bias[i % e];
            }
        }
        Ok(host)
    }

    /// Routes `x` (`[tokens, hidden]`, the post-attention-normed hidden
    /// states) under `router`: the plan every backend must agree on.
    pub fn route(
        &self,
        backend: &B,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<RoutingPlan, BackendError> {
        let (tokens, _) = backend.act_shape(x);
        let logits = self.router_logits(backend, x)?;
        self.plan(backend, &logits, tokens, router)
    }

    /// The plan of router logits `logits` (`[tokens, experts]`, from
    /// [`MoeWeights::router_logits`]) under `router`.
    pub fn plan(
        &self,
        backend: &B,
        logits: &[f32],
        tokens: usize,
        router: &RouterConfig,
    ) -> Result<RoutingPlan, BackendError> {
        let gate = Gate::new(
            &Logits::new(logits, tokens, self.router_experts(backend))?,
            router.top_k,
        )?;
        Ok(route_gate(&gate, router)?)
    }

    /// The whole MoE layer as the backend runs it, with its plan
    /// ([`Backend::moe`] under [`MoeMode::Plan`]).
    pub fn forward(
        &self,
        backend: &B,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<MoeOutput<B>, BackendError> {
        backend.moe(self, x, router, MoeMode::Plan)?.into_plan()
    }

    /// The whole MoE layer without its plan coming back ([`Backend::moe`]
    /// under [`MoeMode::Deferred`]): the output and what
    /// [`Backend::settle`] reads back once per forward pass.
    pub fn forward_deferred(
        &self,
        backend: &B,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(B::Act, DeferredRoute<B::DeviceRoute>), BackendError> {
        Ok(backend
            .moe(self, x, router, MoeMode::Deferred)?
            .into_deferred())
    }

    /// The MoE layer routed on the host: [`MoeWeights::route`], then
    /// dispatch, every expert's FFN and combine through the backend's
    /// primitives (the default [`Backend::moe`]).
    pub fn forward_host(
        &self,
        backend: &B,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<MoeOutput<B>, BackendError> {
        let plan = self.route(backend, x, router)?;
        let out_and_layout = self.forward_plan(backend, x, &plan)?;
        Ok(MoeOutput {
            out: out_and_layout.0,
            plan,
            layout: out_and_layout.1,
        })
    }

    /// The MoE layer under a given plan (dispatch, FFN, combine).
    pub fn forward_plan(
        &self,
        backend: &B,
        x: &B::Act,
        plan: &RoutingPlan,
    ) -> Result<(B::Act, DispatchLayout), BackendError> {
        let (out, kept) = self.run_plan(backend, x, plan)?;
        Ok((out, kept.layout))
    }

    /// [`MoeWeights::forward_host`], also keeping the layout and the
    /// dispatched rows for EP rank replay (the CPU's `ep::EpBackend::moe_kept`).
    pub fn forward_host_kept(
        &self,
        backend: &B,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, HostRankLayer<B>), BackendError> {
        let plan = self.route(backend, x, router)?;
        let (out, kept) = self.run_plan(backend, x, &plan)?;
        let layout = kept.layout.clone();
        Ok((MoeOutput { out, plan, layout }, kept))
    }

    fn run_plan(
        &self,
        backend: &B,
        x: &B::Act,
        plan: &RoutingPlan,
    ) -> Result<(B::Act, HostRankLayer<B>), BackendError> {
        let layout = DispatchLayout::new(plan, backend.dispatch_tile())?;
        let rows = backend.dispatch(x, &layout)?;
        let y = backend.expert_ffn(&rows, &layout, &self.experts, 0..self.num_experts())?;
        let out = backend.combine(plan, &layout, &y)?;
        Ok((out, HostRankLayer { layout, rows }))
    }
}

/// What EP rank replay keeps of a MoE layer run through the backend's
/// primitives over a host plan: the dispatch layout and the dispatched rows
/// (every expert's).
pub struct HostRankLayer<B: Backend> {
    /// The layer's expert-major dispatch layout.
    pub layout: DispatchLayout,
    /// The rows dispatched by it, `[layout.rows(), hidden]`.
    pub rows: B::Act,
}

impl<B: Backend> HostRankLayer<B> {
    /// Experts `range` on the kept rows ([`Backend::expert_ffn`]).
    pub fn ffn(
        &self,
        backend: &B,
        experts: &B::Experts,
        range: std::ops::Range<usize>,
    ) -> Result<B::Act, BackendError> {
        backend.expert_ffn(&self.rows, &self.layout, experts, range)
    }
}
