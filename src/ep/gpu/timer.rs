//! Timing blocks of GPU work with CUDA events, behind the launch gate when they fit it.

use super::telemetry::Telemetry;
use super::WindowSummary;
use crate::cuda::timing::LaunchGate;
use crate::cuda::{GpuContext, GpuError};
use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
use cudarc::driver::CudaEvent;
use std::time::{Duration, Instant};

/// Stream operations queued behind one shut gate, at most: a shut stream must never hold more
/// than its launch queue takes (about a thousand), or the host blocks with the gate shut.
pub(super) const GATED_OPS: usize = 512;
/// Stream operations of one FFN forward (allocations, argument kernels, the GEMMs, frees,
/// cudarc's event tracking), an upper estimate.
pub(super) const FFN_OPS: usize = 96;

/// Upper bound on timed iterations per block, whatever `min_case_ms` asks.
pub(super) const MAX_ITERS: usize = 1000;

/// Per-iteration, per-part times of one timed block.
pub(super) struct Timed {
    /// `ms[i][p]`.
    pub(super) ms: Vec<Vec<f64>>,
    /// Mean host time to enqueue one part (measured in the warm-up), us.
    pub(super) host_us: f64,
    pub(super) telemetry: Option<WindowSummary>,
}

/// Times blocks of work with CUDA events on the context's stream.
pub(super) struct Timer<'a> {
    pub(super) gpu: &'a GpuContext,
    pub(super) gate: Option<LaunchGate>,
    /// Why the gate is off, when it is.
    pub(super) gate_note: Option<String>,
    /// Watchdog openings over the run (the gate is dropped after the first).
    pub(super) gate_timeouts: usize,
    pub(super) telemetry: &'a Telemetry,
}

/// What one timed block runs.
pub(super) struct Block {
    /// Work items per iteration, each timed between two events.
    pub(super) parts: usize,
    pub(super) warmup: usize,
    pub(super) iters: usize,
    /// Run more iterations until the timed ones cover this much GPU time.
    pub(super) min_ms: f64,
    /// Stream operations of one call (sizes the calls per gate: [`GATED_OPS`]).
    pub(super) ops_per_call: usize,
    /// Collect a telemetry window over the timed iterations.
    pub(super) telemetry: bool,
}

impl Timer<'_> {
    /// Watchdog openings so far.
    pub(super) fn timeouts(&self) -> usize {
        self.gate_timeouts + self.gate.as_ref().map_or(0, LaunchGate::timeouts)
    }

    pub(super) fn events(&self, n: usize) -> Result<Vec<CudaEvent>, GpuError> {
        let ctx = self.gpu.context();
        (0..n)
            .map(|_| Ok(ctx.new_event(Some(CU_EVENT_DEFAULT))?))
            .collect()
    }

    /// Enqueues `iters` iterations of `parts` calls of `work`, each between
    /// its own start and end events, at most [`GATED_OPS`] stream operations behind one shut
    /// gate (the gate opens as soon as its calls are queued; the stream is
    /// never synchronised in between), then waits for them all. A call bigger than a gate may
    /// hold runs without the gate.
    pub(super) fn enqueue(
        &mut self,
        iters: usize,
        parts: usize,
        ops_per_call: usize,
        work: &mut dyn FnMut(usize) -> Result<(), GpuError>,
    ) -> Result<(Vec<Vec<f64>>, f64), GpuError> {
        let per_gate = GATED_OPS / ops_per_call.max(1);
        if per_gate == 0 && self.gate.is_some() {
            let gate = self.gate.take();
            let r = self.enqueue(iters, parts, ops_per_call, work);
            self.gate = gate;
            return r;
        }
        let st = self.gpu.stream().clone();
        let calls = iters * parts;
        let ev = self.events(2 * calls)?;
        let per_gate = per_gate.max(1);
        let mut host = Duration::ZERO;
        for start in (0..calls).step_by(per_gate) {
            if let Some(g) = &mut self.gate {
                g.shut(&st)?;
            }
            for c in start..(start + per_gate).min(calls) {
                ev[2 * c].record(&st)?;
                let t0 = Instant::now();
                work(c % parts)?;
                host += t0.elapsed();
                ev[2 * c + 1].record(&st)?;
            }
            if let Some(g) = &mut self.gate {
                g.open()?;
            }
        }
        st.synchronize()?;
        // A watchdog that fired means something in the calls waits on the
        // host or the queue overflowed: time the rest without the gate.
        let fired = self.gate.as_ref().map_or(0, LaunchGate::timeouts);
        if fired > 0 {
            self.gate_note = Some(format!(
                "the gate's watchdog fired ({fired} times); the rest of the run was timed without the gate"
            ));
            self.gate_timeouts += fired;
            self.gate = None;
        }
        let mut ms = Vec::with_capacity(iters);
        for it in ev.chunks_exact(2 * parts.max(1)) {
            let row = it
                .chunks_exact(2)
                .map(|p| Ok(f64::from(p[0].elapsed_ms(&p[1])?)))
                .collect::<Result<Vec<f64>, GpuError>>()?;
            ms.push(row);
        }
        let host_us = host.as_secs_f64() * 1e6 / calls.max(1) as f64;
        Ok((ms, host_us))
    }

    pub(super) fn time(
        &mut self,
        b: &Block,
        work: &mut dyn FnMut(usize) -> Result<(), GpuError>,
    ) -> Result<Timed, GpuError> {
        // Warm-up without the gate: CUDA 13 loads a module on its first launch, and a first load
        // may wait on the shut stream, which would stall until the watchdog. `enqueue` ends
        // with a synchronize, so every kernel is loaded before the first shut.
        let gate = self.gate.take();
        let warm = self.enqueue(b.warmup.max(1), b.parts, b.ops_per_call, work);
        self.gate = gate;
        let (warm, host_us) = warm?;
        let per_iter =
            warm.iter().map(|r| r.iter().sum::<f64>()).sum::<f64>() / warm.len().max(1) as f64;
        let iters = if b.min_ms > 0.0 && per_iter > 0.0 {
            ((b.min_ms / per_iter).ceil() as usize).clamp(b.iters, MAX_ITERS.max(b.iters))
        } else {
            b.iters
        };
        let t0 = self.telemetry.now();
        let e0 = if b.telemetry {
            self.telemetry.energy_mj()
        } else {
            None
        };
        let (ms, _) = self.enqueue(iters, b.parts, b.ops_per_call, work)?;
        let e1 = if b.telemetry {
            self.telemetry.energy_mj()
        } else {
            None
        };
        let t1 = self.telemetry.now();
        let telemetry = if b.telemetry {
            self.telemetry.window(t0, t1, e0, e1)
        } else {
            None
        };
        Ok(Timed {
            ms,
            host_us,
            telemetry,
        })
    }
}
