//! A backend written outside capmoe: every one of `Backend`'s required methods, delegating to
//! the CPU backend (an engine would call its own kernels here). `ModelBackend` takes its
//! defaults (eager decode steps, host-drawn random weights).

use capmoe::backend::{AttnGeom, Backend, BackendError, CpuBackend, HostExpert, HostTensor, Rope};
use capmoe::model::ModelBackend;
use capmoe::routing::{DispatchLayout, RoutingPlan};
use std::ops::Range;

/// The CPU backend behind a type capmoe does not know.
pub struct Wrapped(pub CpuBackend);

type Cpu = CpuBackend;

impl Backend for Wrapped {
    type Mat = <Cpu as Backend>::Mat;
    type Vector = <Cpu as Backend>::Vector;
    type Act = <Cpu as Backend>::Act;
    type Kv = <Cpu as Backend>::Kv;
    type Experts = <Cpu as Backend>::Experts;
    type DeviceRoute = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "wrapped-cpu"
    }
    fn mat(&self, t: HostTensor) -> Result<Self::Mat, BackendError> {
        self.0.mat(t)
    }
    fn mat_shape(&self, m: &Self::Mat) -> (usize, usize) {
        self.0.mat_shape(m)
    }
    fn vector(&self, t: HostTensor) -> Result<Self::Vector, BackendError> {
        self.0.vector(t)
    }
    fn experts(&self, host: Vec<HostExpert>) -> Result<Self::Experts, BackendError> {
        self.0.experts(host)
    }
    fn num_experts(experts: &Self::Experts) -> usize {
        Cpu::num_experts(experts)
    }
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Act, BackendError> {
        self.0.upload(data, rows, cols)
    }
    fn download(&self, x: &Self::Act) -> Result<Vec<f32>, BackendError> {
        self.0.download(x)
    }
    fn act_shape(&self, x: &Self::Act) -> (usize, usize) {
        self.0.act_shape(x)
    }
    fn embed(&self, table: &Self::Mat, ids: &[u32]) -> Result<Self::Act, BackendError> {
        self.0.embed(table, ids)
    }
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Act, BackendError> {
        self.0.rms_norm(x, w, eps)
    }
    fn linear(&self, x: &Self::Act, w: &Self::Mat) -> Result<Self::Act, BackendError> {
        self.0.linear(x, w)
    }
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), BackendError> {
        self.0.add_assign(x, y)
    }
    fn select_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act, BackendError> {
        self.0.select_rows(x, rows)
    }
    fn rope(
        &self,
        x: &mut Self::Act,
        heads: usize,
        positions: &[usize],
        rope: &Rope,
    ) -> Result<(), BackendError> {
        self.0.rope(x, heads, positions, rope)
    }
    fn new_kv(&self, kv_heads: usize, head_dim: usize) -> Self::Kv {
        self.0.new_kv(kv_heads, head_dim)
    }
    fn kv_len(&self, kv: &Self::Kv) -> usize {
        self.0.kv_len(kv)
    }
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        caches: &mut [&mut Self::Kv],
        spans: &[Range<usize>],
        geom: &AttnGeom,
    ) -> Result<Self::Act, BackendError> {
        self.0.attention(q, k, v, caches, spans, geom)
    }
    fn dispatch(&self, x: &Self::Act, layout: &DispatchLayout) -> Result<Self::Act, BackendError> {
        self.0.dispatch(x, layout)
    }
    fn expert_ffn(
        &self,
        rows: &Self::Act,
        layout: &DispatchLayout,
        experts: &Self::Experts,
        range: Range<usize>,
    ) -> Result<Self::Act, BackendError> {
        self.0.expert_ffn(rows, layout, experts, range)
    }
    fn combine(
        &self,
        plan: &RoutingPlan,
        layout: &DispatchLayout,
        expert_out: &Self::Act,
    ) -> Result<Self::Act, BackendError> {
        self.0.combine(plan, layout, expert_out)
    }
}

impl ModelBackend for Wrapped {}
