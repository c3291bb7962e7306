//! The GPU benchmark's measurement loop (feature `cuda`). See the parent
//! module for the method.

use super::telemetry::Telemetry;
use super::timer::{Block, Timer, FFN_OPS};
use super::{
    assemble_group, bar_rows, method_lines, nvml_uuid, CaseMeasurement, DeviceInfo, GpuBenchReport,
    GpuBenchSetup, GpuSetupInfo, Skipped, FIDELITY_NOTE,
};
use crate::cuda::timing::LaunchGate;
use crate::cuda::{ExpertFfn, FfnShape, GpuContext, GpuError, GpuRouter};
use crate::ep::{a2a_traffic, EpError, LatencyModel};
use crate::progress::Progress;
use crate::routing::{Placement, Policy, RouterConfig};
use crate::trace::synthetic_logits;
use cudarc::driver::CudaSlice;
use std::time::Duration;

/// Stream operations of one route and dispatch, an upper estimate: `reroute:next-best`
/// launches every one of its `2 E + 16` rounds (about a dozen kernels and sort passes each),
/// about 800 operations at E = 8, more than a gate may hold.
fn route_ops(policy: Policy, experts: usize) -> usize {
    let base = 48;
    if matches!(policy, Policy::RerouteNextBest) {
        base + 24 * (2 * experts + 16)
    } else {
        base
    }
}
/// Activations are uniform in (-1, 1).
const X_SCALE: f32 = 1.0;

/// Why a case did not run: a reason to report, or an error that stops the
/// benchmark.
enum CaseError {
    Skip(String),
    Fatal(EpError),
}

impl From<GpuError> for CaseError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Unsupported(_) | GpuError::NotConverged { .. } => Self::Skip(e.to_string()),
            e => Self::Fatal(e.into()),
        }
    }
}

impl From<EpError> for CaseError {
    fn from(e: EpError) -> Self {
        Self::Fatal(e)
    }
}

impl From<crate::routing::RoutingError> for CaseError {
    fn from(e: crate::routing::RoutingError) -> Self {
        Self::Fatal(e.into())
    }
}

/// Everything a case needs that does not change across cases of a group.
struct Group<'a> {
    gpu: &'a GpuContext,
    ffn: &'a ExpertFfn,
    setup: &'a GpuBenchSetup,
    tokens: usize,
    ranks: usize,
    placement: &'a Placement,
    logits: &'a CudaSlice<f32>,
    x: &'a CudaSlice<u16>,
}

fn measure_case(
    g: &Group<'_>,
    timer: &mut Timer<'_>,
    policy: Policy,
    gamma: Option<f64>,
) -> Result<CaseMeasurement, CaseError> {
    let sh = g.setup.shape;
    let mut cfg = RouterConfig::new(sh.top_k, policy).with_ranks(g.ranks);
    cfg.capacity_factor = gamma;
    let router = GpuRouter::new(g.gpu, cfg)?;
    let plan = router.route(g.logits, g.tokens, sh.experts)?;
    let host = plan.to_host()?;
    let stats = host.stats();
    let traffic = a2a_traffic(&host, g.placement);
    let timeouts0 = timer.timeouts();

    // Routing of the whole batch.
    let routing = timer.time(
        &Block {
            parts: 1,
            warmup: g.setup.warmup,
            iters: g.setup.iters,
            min_ms: 0.0,
            ops_per_call: route_ops(policy, sh.experts),
            telemetry: false,
        },
        &mut |_| {
            let p = router.route(g.logits, g.tokens, sh.experts)?;
            let _d = p.dispatch(1)?;
            Ok(())
        },
    )?;

    // The whole layer on one GPU: the cross-check of the split.
    let d = plan.dispatch(1)?;
    let rows = plan.gather_bf16(&d, g.x, sh.hidden)?;
    let full = timer.time(
        &Block {
            parts: 1,
            warmup: g.setup.warmup,
            iters: g.setup.iters,
            min_ms: 0.0,
            ops_per_call: FFN_OPS,
            telemetry: false,
        },
        &mut |_| {
            let _y = g.ffn.forward(&plan, &d, &rows)?;
            Ok(())
        },
    )?;

    // Each rank alone: its experts over its span of the layout's rows, the
    // call the EP replay's device composition makes (`rank_ffn`).
    let layout = d.to_host(&plan)?;
    let offs = layout.offsets();
    let spans: Vec<_> = (0..g.ranks)
        .map(|r| {
            let experts = g.placement.expert_group(r);
            let span = offs[experts.start] as usize..offs[experts.end] as usize;
            (experts, span)
        })
        .collect();
    let ranks = timer.time(
        &Block {
            parts: g.ranks,
            warmup: g.setup.warmup,
            iters: g.setup.iters,
            min_ms: g.setup.min_case_ms,
            ops_per_call: FFN_OPS,
            telemetry: true,
        },
        &mut |r| {
            let (experts, span) = spans[r].clone();
            if !span.is_empty() {
                let _y = g.ffn.forward_experts(&plan, &d, &rows, experts, span)?;
            }
            Ok(())
        },
    )?;
    drop((rows, d));

    Ok(CaseMeasurement {
        policy: policy.to_string(),
        capacity_factor: gamma,
        capacity: host.capacity().map(|c| c.per_expert),
        load: stats.load.clone(),
        dropped: stats.dropped,
        rerouted: stats.rerouted,
        gate_mass_kept: stats.gate_mass_kept,
        traffic,
        rank_ms: ranks.ms,
        full_ms: full.ms.into_iter().map(|r| r[0]).collect(),
        routing_ms: routing.ms.into_iter().map(|r| r[0]).collect(),
        host_enqueue_us: ranks.host_us,
        telemetry: ranks.telemetry,
        gate_timeouts: timer.timeouts() - timeouts0,
    })
}

/// Hashed uniform bf16 activations `[tokens, hidden]` on the device.
fn activations(
    gpu: &GpuContext,
    tokens: usize,
    hidden: usize,
    seed: u32,
) -> Result<CudaSlice<u16>, GpuError> {
    let n = tokens * hidden;
    if n as u64 >= u64::from(u32::MAX) {
        return Err(GpuError::TooLarge {
            what: "activations (tokens * hidden)",
            value: n,
        });
    }
    crate::cuda::hashed_bf16(gpu.stream(), n, seed, X_SCALE)
}

/// Runs the benchmark on `gpu`. `progress` ticks once per case.
pub fn run(
    setup: &GpuBenchSetup,
    gpu: &GpuContext,
    progress: &dyn Progress,
) -> Result<GpuBenchReport, EpError> {
    setup.validate()?;
    let sh = setup.shape;
    let (major, minor) = gpu.compute_capability()?;
    let shape = FfnShape::new(sh.experts, sh.hidden, sh.intermediate).map_err(GpuError::from)?;
    let mut ffn = ExpertFfn::random(gpu, shape, setup.seed as u32)?;
    if let Some(cache) = &setup.tune_cache {
        ffn = ffn.with_tune_cache(cache.clone());
    }
    let device = DeviceInfo {
        name: gpu.name()?,
        compute_capability: format!("{major}{minor}"),
        sm_count: gpu.sm_count()?,
        variants: ffn.variants().iter().map(|s| s.to_string()).collect(),
    };

    let uuid = gpu
        .context()
        .uuid()
        .ok()
        .map(|u| nvml_uuid(&u.bytes.map(|b| b as u8)));
    let mut telemetry = Telemetry::start(uuid, Duration::from_secs_f64(setup.telemetry_ms / 1e3));
    gpu.synchronize()?;
    telemetry.measure_idle(Duration::from_millis(300));

    // The GEMM variants of every batch size, decided before any is fixed.
    let mut picks = Vec::with_capacity(setup.tokens.len());
    for &t in &setup.tokens {
        if let Some((a, b)) = &setup.variants {
            picks.push((a.clone(), b.clone()));
            continue;
        }
        if setup.tune {
            progress.set_message(&format!("autotuning the FFN at T = {t}"));
            ffn.tune(t, sh.top_k, false, &mut |_| progress.tick())?;
        }
        let p = ffn.variants_for(t, sh.top_k);
        picks.push((
            p.gemm1.variant.name.to_string(),
            p.gemm2.variant.name.to_string(),
        ));
    }

    let (gate, gate_note) = if !setup.launch_gate {
        (
            None,
            Some("turned off by the caller (launch_gate = false)".to_string()),
        )
    } else {
        match LaunchGate::new(gpu) {
            Ok(g) => (Some(g), None),
            Err(e) => (
                None,
                Some(format!("stream memory operations unavailable: {e}")),
            ),
        }
    };
    let mut timer = Timer {
        gpu,
        gate,
        gate_note,
        gate_timeouts: 0,
        telemetry: &telemetry,
    };
    let lat = LatencyModel {
        a2a_gbps: setup.a2a_gbps,
        elem_bytes: setup.elem_bytes,
        hidden: sh.hidden,
    };
    let cases = setup.cases();
    progress.set_length(
        (setup.tokens.len() * setup.skews.len() * setup.ranks.len() * cases.len()) as u64,
    );
    let mut groups = Vec::new();
    let mut skipped = Vec::new();
    for (&t, (g1, g2)) in setup.tokens.iter().zip(&picks) {
        ffn = ffn.with_variants(g1, g2)?;
        let x = activations(gpu, t, sh.hidden, (setup.seed as u32) ^ 0xA11C_E5ED)?;
        for skew in &setup.skews {
            let host_logits = match synthetic_logits(
                t,
                sh.experts,
                sh.top_k,
                *skew,
                setup.seed.wrapping_add(t as u64),
            ) {
                Ok(l) => l,
                Err(e) => {
                    skipped.push(Skipped {
                        tokens: Some(t),
                        skew: Some(skew.to_string()),
                        ranks: None,
                        policy: None,
                        capacity_factor: None,
                        reason: e.to_string(),
                    });
                    progress.inc((setup.ranks.len() * cases.len()) as u64);
                    continue;
                }
            };
            let logits = gpu
                .stream()
                .clone_htod(&host_logits)
                .map_err(GpuError::from)?;
            for &ranks in &setup.ranks {
                let placement = Placement::new(ranks, sh.experts, t)?;
                let group = Group {
                    gpu,
                    ffn: &ffn,
                    setup,
                    tokens: t,
                    ranks,
                    placement: &placement,
                    logits: &logits,
                    x: &x,
                };
                let mut measured = Vec::with_capacity(cases.len());
                for &(policy, gamma) in &cases {
                    progress.set_message(&format!(
                        "T {t} skew {skew} EP {ranks}: {policy}{}",
                        gamma.map_or(String::new(), |g| format!(" gamma {g}"))
                    ));
                    match measure_case(&group, &mut timer, policy, gamma) {
                        Ok(m) => measured.push(m),
                        Err(CaseError::Skip(reason)) => skipped.push(Skipped {
                            tokens: Some(t),
                            skew: Some(skew.to_string()),
                            ranks: Some(ranks),
                            policy: Some(policy.to_string()),
                            capacity_factor: gamma,
                            reason,
                        }),
                        Err(CaseError::Fatal(e)) => return Err(e),
                    }
                    progress.inc(1);
                }
                groups.push(assemble_group(
                    t,
                    skew.to_string(),
                    ranks,
                    &sh,
                    &lat,
                    (g1.clone(), g2.clone()),
                    &measured,
                ));
            }
        }
    }
    let gated = timer.gate.is_some();
    let gate_note = timer.gate_note.take();
    drop(timer);

    let mut policies: Vec<String> = vec!["none".into()];
    for p in &setup.policies {
        let s = p.to_string();
        if !policies.contains(&s) {
            policies.push(s);
        }
    }
    Ok(GpuBenchReport {
        label: setup.label.clone(),
        shape: sh,
        device,
        setup: GpuSetupInfo {
            tokens: setup.tokens.clone(),
            ranks: setup.ranks.clone(),
            skews: setup.skews.iter().map(|s| s.to_string()).collect(),
            policies,
            capacity_factors: setup.capacity_factors.clone(),
            iters: setup.iters,
            warmup: setup.warmup,
            min_case_ms: setup.min_case_ms,
            a2a_gbps: setup.a2a_gbps,
            elem_bytes: setup.elem_bytes,
            seed: setup.seed,
            tuned: setup.tune,
            gated,
            gate_note,
        },
        latency_model: lat,
        method: method_lines(),
        fidelity_note: FIDELITY_NOTE.into(),
        telemetry: telemetry.info(),
        bar: bar_rows(&groups, &setup.capacity_factors),
        groups,
        skipped,
        figures: Vec::new(),
    })
}
