//! `safe` layer: [`GpuRouter`] runs the routing contract on the device, from
//! router logits to a plan, a dispatch layout and combine, with no host sync
//! in between. [`GpuPlan::to_host`] returns the same [`RoutingPlan`] shape as
//! the CPU oracle, so tests compare them directly.

use super::context::GpuContext;
use super::error::GpuError;
use super::launch::{self, DispatchOut, PlanOut, Shape};
use crate::routing::{
    plan_capacity, CapacityInfo, CapacityScope, DropRank, Gate, GemmProblem, GroupedGemmArgs,
    Overflow, PlanParts, Policy, RouterConfig, RoutingPlan, PAD,
};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;

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

/// A routed batch, resident on the device.
pub struct GpuPlan {
    stream: Arc<CudaStream>,
    cfg: RouterConfig,
    capacity: Option<CapacityInfo>,
    shape: Shape,
    stride: usize,
    rounds: usize,
    probs: CudaSlice<f32>,
    topk: CudaSlice<i32>,
    topk_sum: CudaSlice<f32>,
    offsets: CudaSlice<i32>,
    expert_ids: CudaSlice<i32>,
    token_ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    probs_out: CudaSlice<f32>,
    load: CudaSlice<u32>,
    overflow: CudaSlice<i32>,
    overflow_count: CudaSlice<i32>,
    flags: Option<CudaSlice<i32>>,
}

/// Expert-contiguous padded rows of a [`GpuPlan`], on the device.
pub struct GpuDispatch {
    tile: usize,
    max_rows: usize,
    padded: CudaSlice<i32>,
    row_token: CudaSlice<u32>,
    row_weight: CudaSlice<f32>,
    assignment_row: CudaSlice<i32>,
    total_rows: CudaSlice<i32>,
}

/// Host copy of a [`GpuDispatch`], in the CPU oracle's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDispatch {
    pub offsets: Vec<u32>,
    pub row_tokens: Vec<u32>,
    pub row_weights: Vec<f32>,
    pub assignment_rows: Vec<u32>,
}

/// A combine launcher from [`launch`] (f32 or bf16).
type CombineLauncher = unsafe fn(
    launch::DevPtr,
    launch::DevPtr,
    launch::DevPtr,
    launch::DevPtr,
    i32,
    i32,
    launch::DevPtr,
    super::ffi::Stream,
) -> Result<(), GpuError>;

fn to_i32(what: &'static str, v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::TooLarge { what, value: v })
}

/// A zeroed device buffer of `n` elements (at least 1: no zero-byte allocs).
fn alloc<T: DeviceRepr + ValidAsZeroBits>(
    s: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>, GpuError> {
    Ok(s.alloc_zeros::<T>(n.max(1))?)
}

/// An uninitialised device buffer of `n` elements (at least 1), for outputs
/// and scratch the kernels overwrite: zeroing them would be one more launch
/// and pass over memory per buffer on the routing hot path.
fn scratch<T: DeviceRepr>(s: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>, GpuError> {
    // SAFETY: callers only use this for buffers whose every read element is
    // first written by a kernel on the same stream: gate writes probs/topk/
    // topk_sum in full, select and next-best write every served slot, cub and
    // the launchers write their workspace before reading it, the plan, dispatch
    // and combine outputs are read only up to the counts the kernels wrote
    // (offsets[T], total_rows, T * hidden), clear_rows fills every row, and
    // gemm_args writes all 3E problem sizes and E pointers of each array.
    Ok(unsafe { s.alloc::<T>(n.max(1)) }?)
}

fn as_u32(v: Vec<i32>) -> Vec<u32> {
    v.into_iter().map(|x| x as u32).collect()
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

    /// Round limit for `reroute:next-best` (default `2E + 16`; every round is
    /// launched, converged or not, so the limit is also the cost). Synchronous
    /// rounds follow displacement chains, which can be longer than E; when the
    /// limit is hit, [`GpuPlan::to_host`] reports [`GpuError::NotConverged`].
    /// An unconverged plan still respects capacity: it may drop slots that the
    /// oracle reroutes.
    pub fn with_max_rounds(mut self, rounds: usize) -> Self {
        self.max_rounds = Some(rounds.max(1));
        self
    }

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
    /// are checked here, before any launch; the values are trusted to be
    /// finite ([`GpuRouter::route_host`] checks them through `Logits`).
    pub fn route(
        &self,
        logits: &CudaSlice<f32>,
        tokens: usize,
        experts: usize,
    ) -> Result<GpuPlan, GpuError> {
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
        let raw = st.cu_stream() as super::ffi::Stream;

        let mut probs = scratch::<f32>(&st, tokens * experts)?;
        let mut topk = scratch::<i32>(&st, tokens * k)?;
        let mut topk_sum = scratch::<f32>(&st, tokens)?;
        {
            let (l, _gl) = logits.device_ptr(&st);
            let (pp, _gp) = probs.device_ptr_mut(&st);
            let (tk, _gt) = topk.device_ptr_mut(&st);
            let (ts, _gs) = topk_sum.device_ptr_mut(&st);
            // SAFETY: buffers sized for `shape` just above; guards live across the launch.
            unsafe { launch::gate(shape, l, pp, tk, ts, raw)? };
        }

        let experts_per_bin = match cfg.scope {
            CapacityScope::Expert => 1,
            CapacityScope::Rank => experts / cfg.ranks,
        };
        let cap_bin = capacity.map_or(0, |c| {
            c.per_expert
                .saturating_mul(experts_per_bin as u64)
                .min(i32::MAX as u64) as i32
        });
        let rounds = self.max_rounds.unwrap_or(2 * experts + 16);
        // `none` serves the top-k itself and needs no slots.
        let slots = if cfg.policy == Policy::None {
            0
        } else {
            tokens * stride
        };
        let mut served = scratch::<i32>(&st, slots)?;
        let mut flags = None;
        // (rank code, seed, expand) of the capacity-selection launcher.
        let selection = match cfg.policy {
            Policy::Drop(DropRank::Score) => Some((0, 0, false)),
            Policy::Drop(DropRank::Order) => Some((1, 0, false)),
            Policy::Drop(DropRank::ReverseOrder) => Some((2, 0, false)),
            Policy::Drop(DropRank::Random { seed }) => Some((3, seed, false)),
            Policy::ExpandLocal => Some((0, 0, true)),
            _ => None,
        };
        if let Some((rank, seed, expand)) = selection {
            let bytes = launch::select_workspace((tokens * stride) as i64, shape.experts);
            let mut ws = scratch::<u8>(&st, bytes)?;
            let (pp, _gp) = probs.device_ptr(&st);
            let (tk, _gt) = topk.device_ptr(&st);
            let (w, _gw) = ws.device_ptr_mut(&st);
            let (sv, _gs) = served.device_ptr_mut(&st);
            // SAFETY: served holds tokens * stride; workspace sized by the launcher's own query.
            unsafe {
                launch::select(
                    shape,
                    pp,
                    tk,
                    experts_per_bin as i32,
                    cfg.ranks as i32,
                    cap_bin,
                    rank,
                    seed,
                    expand,
                    w,
                    bytes,
                    sv,
                    raw,
                )?
            };
        } else if cfg.policy == Policy::RerouteNextBest {
            let bytes = launch::select_workspace((tokens * k) as i64, shape.experts);
            let mut ws = scratch::<u8>(&st, bytes)?;
            let mut last = scratch::<i32>(&st, tokens)?;
            let mut fl = alloc::<i32>(&st, 2)?;
            {
                let (pp, _gp) = probs.device_ptr(&st);
                let (tk, _gt) = topk.device_ptr(&st);
                let (w, _gw) = ws.device_ptr_mut(&st);
                let (sv, _gs) = served.device_ptr_mut(&st);
                let (ls, _gl) = last.device_ptr_mut(&st);
                let (f, _gf) = fl.device_ptr_mut(&st);
                // SAFETY: as for select, plus `last` (tokens) and `flags` (2).
                unsafe {
                    launch::next_best(
                        shape,
                        pp,
                        tk,
                        experts_per_bin as i32,
                        cap_bin,
                        to_i32("max rounds", rounds)?,
                        w,
                        bytes,
                        sv,
                        ls,
                        f,
                        raw,
                    )?
                };
            }
            flags = Some(fl);
        } else if cfg.policy != Policy::None {
            return Err(GpuError::Unsupported(cfg.policy.to_string()));
        }

        let n = tokens * stride;
        let mut offsets = scratch::<i32>(&st, tokens + 1)?;
        let mut expert_ids = scratch::<i32>(&st, n)?;
        let mut token_ids = scratch::<i32>(&st, n)?;
        let mut weights = scratch::<f32>(&st, n)?;
        let mut probs_out = scratch::<f32>(&st, n)?;
        let mut load = alloc::<u32>(&st, experts)?;
        let mut overflow = scratch::<i32>(&st, tokens * k)?;
        let mut overflow_count = alloc::<i32>(&st, 1)?;
        let bytes = launch::plan_workspace(shape.tokens, shape.k);
        let mut ws = scratch::<u8>(&st, bytes)?;
        {
            let (pp, _g1) = probs.device_ptr(&st);
            let (tk, _g2) = topk.device_ptr(&st);
            let (ts, _g3) = topk_sum.device_ptr(&st);
            // `none` serves the top-k itself (stride k).
            let (sv, _g4) = if cfg.policy == Policy::None {
                topk.device_ptr(&st)
            } else {
                served.device_ptr(&st)
            };
            let (w, _g5) = ws.device_ptr_mut(&st);
            let (o, _o1) = offsets.device_ptr_mut(&st);
            let (x, _o2) = expert_ids.device_ptr_mut(&st);
            let (ti, _o3) = token_ids.device_ptr_mut(&st);
            let (wt, _o4) = weights.device_ptr_mut(&st);
            let (po, _o5) = probs_out.device_ptr_mut(&st);
            let (ld, _o6) = load.device_ptr_mut(&st);
            let (of, _o7) = overflow.device_ptr_mut(&st);
            let (oc, _o8) = overflow_count.device_ptr_mut(&st);
            let out = PlanOut {
                offsets: o,
                expert_ids: x,
                token_ids: ti,
                weights: wt,
                probs: po,
                load: ld,
                overflow: of,
                overflow_count: oc,
            };
            // SAFETY: every output sized from tokens, stride, k and experts above.
            unsafe {
                launch::plan(
                    shape,
                    pp,
                    tk,
                    ts,
                    sv,
                    stride as i32,
                    cfg.renormalize,
                    w,
                    bytes,
                    &out,
                    raw,
                )?
            };
        }
        Ok(GpuPlan {
            stream: st.clone(),
            cfg: cfg.clone(),
            capacity,
            shape,
            stride,
            rounds,
            probs,
            topk,
            topk_sum,
            offsets,
            expert_ids,
            token_ids,
            weights,
            probs_out,
            load,
            overflow,
            overflow_count,
            flags,
        })
    }
}

impl GpuPlan {
    pub fn tokens(&self) -> usize {
        self.shape.tokens as usize
    }

    pub fn experts(&self) -> usize {
        self.shape.experts as usize
    }

    /// The stream the plan's buffers are ordered on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The configuration this plan was routed under.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Upper bound on served assignments (`tokens * stride`); buffers hold this many.
    pub fn max_assignments(&self) -> usize {
        self.tokens() * self.stride
    }

    /// Copies the plan back (this synchronises) and checks it.
    pub fn to_host(&self) -> Result<RoutingPlan, GpuError> {
        let st = &self.stream;
        if let Some(flags) = &self.flags {
            let f = st.clone_dtoh(flags)?;
            if f[1] != 1 {
                return Err(GpuError::NotConverged {
                    rounds: self.rounds,
                });
            }
        }
        let (t, e, k) = (
            self.tokens(),
            self.shape.experts as usize,
            self.shape.k as usize,
        );
        let mut probs = st.clone_dtoh(&self.probs)?;
        probs.truncate(t * e);
        let mut topk = as_u32(st.clone_dtoh(&self.topk)?);
        topk.truncate(t * k);
        let mut topk_sum = st.clone_dtoh(&self.topk_sum)?;
        topk_sum.truncate(t);
        let gate = Gate::from_parts(e, k, probs, topk, topk_sum)?;
        let offsets = as_u32(st.clone_dtoh(&self.offsets)?);
        let n = offsets.get(t).copied().unwrap_or(0) as usize;
        let take = |v: Vec<i32>| {
            let mut v = as_u32(v);
            v.truncate(n);
            v
        };
        let expert = take(st.clone_dtoh(&self.expert_ids)?);
        let mut weight = st.clone_dtoh(&self.weights)?;
        weight.truncate(n);
        let mut prob = st.clone_dtoh(&self.probs_out)?;
        prob.truncate(n);
        let mut offsets = offsets;
        offsets.truncate(t + 1);
        let parts = PlanParts {
            offsets,
            expert,
            weight,
            prob,
        };
        Ok(RoutingPlan::from_parts(
            &gate,
            parts,
            self.cfg.policy,
            self.capacity,
            self.cfg.renormalize,
        )?)
    }

    /// Per-expert served counts on the device (at least E u32).
    pub(crate) fn load(&self) -> &CudaSlice<u32> {
        &self.load
    }

    /// Per-expert served counts (synchronises).
    pub fn load_host(&self) -> Result<Vec<u32>, GpuError> {
        let mut v = self.stream.clone_dtoh(&self.load)?;
        v.truncate(self.shape.experts as usize);
        Ok(v)
    }

    /// The compacted overflow list (synchronises).
    pub fn overflow_host(&self) -> Result<Vec<Overflow>, GpuError> {
        let n = self.stream.clone_dtoh(&self.overflow_count)?[0] as usize;
        let idx = self.stream.clone_dtoh(&self.overflow)?;
        let topk = self.stream.clone_dtoh(&self.topk)?;
        let k = self.shape.k as usize;
        let Some(idx) = idx.get(..n) else {
            let what = "overflow count (beyond its buffer)";
            return Err(crate::RoutingError::ShapeMismatch {
                what,
                len: n,
                expected: idx.len(),
            }
            .into());
        };
        idx.iter()
            .map(|&i| {
                let expert = topk.get(i as usize).ok_or(GpuError::Launch {
                    launcher: "capmoe_plan",
                    code: -1,
                    message: format!("overflow index {i} is outside the top-k"),
                })?;
                Ok(Overflow {
                    token: (i as usize / k) as u32,
                    expert: *expert as u32,
                })
            })
            .collect()
    }

    /// Lays the plan out in expert-contiguous rows padded to `tile`.
    pub fn dispatch(&self, tile: usize) -> Result<GpuDispatch, GpuError> {
        if tile == 0 {
            return Err(crate::RoutingError::ZeroTile.into());
        }
        let st = &self.stream;
        let experts = self.shape.experts as usize;
        let max_assign = self.max_assignments();
        let max_rows = max_assign + experts * (tile - 1);
        to_i32("dispatch rows", max_rows)?;
        let mut d = GpuDispatch {
            tile,
            max_rows,
            padded: alloc(st, experts + 1)?,
            row_token: scratch(st, max_rows)?,
            row_weight: scratch(st, max_rows)?,
            assignment_row: scratch(st, max_assign)?,
            total_rows: alloc(st, 1)?,
        };
        let bytes = launch::dispatch_workspace(max_assign as i64, self.shape.experts);
        let mut ws = scratch::<u8>(st, bytes)?;
        let (o, _g1) = self.offsets.device_ptr(st);
        let (x, _g2) = self.expert_ids.device_ptr(st);
        let (ti, _g3) = self.token_ids.device_ptr(st);
        let (w, _g4) = self.weights.device_ptr(st);
        let (l, _g5) = self.load.device_ptr(st);
        let plan = PlanOut {
            offsets: o,
            expert_ids: x,
            token_ids: ti,
            weights: w,
            probs: 0,
            load: l,
            overflow: 0,
            overflow_count: 0,
        };
        let (wsp, _g6) = ws.device_ptr_mut(st);
        let (pd, _g7) = d.padded.device_ptr_mut(st);
        let (rt, _g8) = d.row_token.device_ptr_mut(st);
        let (rw, _g9) = d.row_weight.device_ptr_mut(st);
        let (ar, _g10) = d.assignment_row.device_ptr_mut(st);
        let (tr, _g11) = d.total_rows.device_ptr_mut(st);
        let out = DispatchOut {
            padded: pd,
            row_token: rt,
            row_weight: rw,
            assignment_row: ar,
            total_rows: tr,
        };
        // SAFETY: row buffers hold max_rows, assignment_row max_assign, workspace from the launcher's query.
        unsafe {
            launch::dispatch(
                self.shape,
                &plan,
                max_assign as i64,
                tile as i32,
                wsp,
                bytes,
                &out,
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7, _g8, _g9, _g10, _g11));
        Ok(d)
    }

    /// `out[t] = sum_i w_i y[row_i]` for f32 expert outputs `y` laid out by `d`.
    pub fn combine_f32(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<f32>,
        hidden: usize,
    ) -> Result<CudaSlice<f32>, GpuError> {
        self.combine_with(d, y, hidden, launch::combine_f32)
    }

    /// Combine for bf16 expert outputs (raw u16 bits), f32 accumulation,
    /// bf16 result `[T, hidden]`.
    pub fn combine_bf16(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        self.combine_with(d, y, hidden, launch::combine_bf16)
    }

    /// Shape checks and launch shared by the combine variants.
    fn combine_with<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        d: &GpuDispatch,
        y: &CudaSlice<T>,
        hidden: usize,
        launcher: CombineLauncher,
    ) -> Result<CudaSlice<T>, GpuError> {
        if hidden == 0 || y.len() < d.max_rows * hidden {
            let what = "expert outputs (rows x hidden, hidden >= 1)";
            return Err(crate::RoutingError::ShapeMismatch {
                what,
                len: y.len(),
                expected: d.max_rows * hidden.max(1),
            }
            .into());
        }
        let st = &self.stream;
        let t = self.tokens();
        let mut out = scratch::<T>(st, t * hidden)?;
        let (o, _g1) = self.offsets.device_ptr(st);
        let (w, _g2) = self.weights.device_ptr(st);
        let (a, _g3) = d.assignment_row.device_ptr(st);
        let (yp, _g4) = y.device_ptr(st);
        let (op, _g5) = out.device_ptr_mut(st);
        // SAFETY: y checked above (the element type matches the launcher at
        // both call sites); out holds tokens * hidden.
        unsafe {
            launcher(
                o,
                w,
                a,
                yp,
                t as i32,
                to_i32("hidden", hidden)?,
                op,
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4, _g5));
        Ok(out)
    }

    /// Gathers bf16 token activations `[T, hidden]` (as raw u16 bits) into dispatch rows.
    pub fn gather_bf16(
        &self,
        d: &GpuDispatch,
        x: &CudaSlice<u16>,
        hidden: usize,
    ) -> Result<CudaSlice<u16>, GpuError> {
        if hidden == 0 || hidden % 8 != 0 {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "hidden size (a multiple of 8 for 16-byte rows)",
                len: hidden,
                expected: hidden.div_ceil(8).max(1) * 8,
            }
            .into());
        }
        // T = 0 may pass a one-element buffer (cudarc cannot allocate zero
        // bytes), as `route` allows for its logits.
        if x.len() != self.tokens() * hidden && !(self.tokens() == 0 && x.len() <= 1) {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "token activations",
                len: x.len(),
                expected: self.tokens() * hidden,
            }
            .into());
        }
        let st = &self.stream;
        let mut out = scratch::<u16>(st, d.max_rows * hidden)?;
        let (xp, _g1) = x.device_ptr(st);
        let (rt, _g2) = d.row_token.device_ptr(st);
        let (tr, _g3) = d.total_rows.device_ptr(st);
        let (op, _g4) = out.device_ptr_mut(st);
        // SAFETY: shapes checked above; out holds max_rows * hidden.
        unsafe {
            launch::gather_bf16(
                xp,
                rt,
                tr,
                d.max_rows as i64,
                to_i32("hidden", hidden)?,
                op,
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4));
        Ok(out)
    }
}

/// Grouped-GEMM arguments on the device: `problems` is `3 * E` i32
/// (`GemmCoord` layout), `ptrs` the A, B and C address arrays.
pub struct GpuGemmArgs {
    pub problems: CudaSlice<i32>,
    pub ptrs: [CudaSlice<u64>; 3],
}

impl GpuGemmArgs {
    /// Copies the arguments back (synchronises).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<GroupedGemmArgs, GpuError> {
        let p = stream.clone_dtoh(&self.problems)?;
        let problems = p
            .chunks_exact(3)
            .map(|c| GemmProblem {
                m: c[0],
                n: c[1],
                k: c[2],
            })
            .collect();
        let [a, b, c] = [0, 1, 2].map(|i| stream.clone_dtoh(&self.ptrs[i]));
        Ok(GroupedGemmArgs {
            problems,
            a: a?,
            b: b?,
            c: c?,
        })
    }
}

impl GpuDispatch {
    /// Problem sizes and A/B/C addresses for the experts' grouped GEMM, made
    /// on the device (see `DispatchLayout::gemm_args` for the layout).
    pub fn gemm_args(
        &self,
        plan: &GpuPlan,
        n: usize,
        k: usize,
        elem_bytes: u64,
        abc: [u64; 3],
    ) -> Result<GpuGemmArgs, GpuError> {
        if elem_bytes == 0 {
            return Err(crate::RoutingError::ShapeMismatch {
                what: "element size",
                len: 0,
                expected: 2,
            }
            .into());
        }
        let st = &plan.stream;
        let experts = plan.shape.experts as usize;
        // Not zeroed: the kernel writes every entry (a thread per expert), and
        // four memsets per GEMM would be fixed cost in every timed forward.
        let mut args = GpuGemmArgs {
            problems: scratch(st, 3 * experts)?,
            ptrs: [
                scratch(st, experts)?,
                scratch(st, experts)?,
                scratch(st, experts)?,
            ],
        };
        let (pd, _g1) = self.padded.device_ptr(st);
        let (ld, _g2) = plan.load.device_ptr(st);
        let (pr, _g3) = args.problems.device_ptr_mut(st);
        let [pa, pb, pc] = &mut args.ptrs;
        let (a, _g4) = pa.device_ptr_mut(st);
        let (b, _g5) = pb.device_ptr_mut(st);
        let (c, _g6) = pc.device_ptr_mut(st);
        // SAFETY: problems holds 3E, each pointer array E; padded/load come from this plan.
        unsafe {
            launch::gemm_args(
                pd,
                ld,
                plan.shape.experts,
                to_i32("GEMM n", n)?,
                to_i32("GEMM k", k)?,
                elem_bytes,
                abc,
                pr,
                [a, b, c],
                st.cu_stream() as _,
            )?
        };
        drop((_g1, _g2, _g3, _g4, _g5, _g6));
        Ok(args)
    }

    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Row capacity of the buffers (`max_assign + E (tile - 1)`).
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The token of each row (`PAD` for padding), for kernels that skip padding.
    pub(crate) fn row_token(&self) -> &CudaSlice<u32> {
        &self.row_token
    }

    /// Rows in use (`padded[E]`), one i32 on the device.
    pub(crate) fn total_rows(&self) -> &CudaSlice<i32> {
        &self.total_rows
    }

    /// Copies the layout back (synchronises), trimmed to the rows in use.
    pub fn to_host(&self, plan: &GpuPlan) -> Result<HostDispatch, GpuError> {
        let st = &plan.stream;
        let total = st.clone_dtoh(&self.total_rows)?[0] as usize;
        let experts = plan.shape.experts as usize;
        let mut offsets = as_u32(st.clone_dtoh(&self.padded)?);
        offsets.truncate(experts + 1);
        let mut row_tokens = st.clone_dtoh(&self.row_token)?;
        row_tokens.truncate(total);
        let mut row_weights = st.clone_dtoh(&self.row_weight)?;
        row_weights.truncate(total);
        let n = st.clone_dtoh(&plan.offsets)?[plan.tokens()] as usize;
        let mut assignment_rows = as_u32(st.clone_dtoh(&self.assignment_row)?);
        assignment_rows.truncate(n);
        debug_assert!(row_tokens
            .iter()
            .all(|&r| r == PAD || (r as usize) < plan.tokens()));
        Ok(HostDispatch {
            offsets,
            row_tokens,
            row_weights,
            assignment_rows,
        })
    }
}
