//! [`PlanSummary`]: what the host needs of a device plan after the fact (its
//! checks, totals and loads), kept on the device, and [`settle`], which
//! reads many of them back in one download.

use super::buffers::{alloc, scratch};
use super::plan::{nonfinite_error, GpuPlan};
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::PlanTotals;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// u32 words per summary before the loads: the gating kernel's non-finite
/// record (a u64), next-best's convergence flag, one word of padding, then
/// the `CAPMOE_STATS` u64 totals.
const HEAD: usize = 4 + 2 * STATS;
const STATS: usize = sys::CAPMOE_STATS as usize;

/// A device plan reduced to its checks, its totals (`capmoe_plan_stats`) and
/// its per-expert loads; everything else is freed (stream-ordered). Nothing
/// is read back until [`settle`].
pub struct PlanSummary {
    stream: Arc<CudaStream>,
    experts: usize,
    rounds: usize,
    nonfinite: CudaSlice<u64>,
    load: CudaSlice<u32>,
    stats: CudaSlice<u64>,
    flags: Option<CudaSlice<i32>>,
}

impl GpuPlan {
    /// Enqueues the plan's totals (`capmoe_plan_stats`), keeps what [`settle`]
    /// reads and frees the rest. No host sync.
    pub fn into_summary(self) -> Result<PlanSummary, GpuError> {
        let st = &self.stream;
        // capmoe_plan_stats zeroes it itself.
        let mut stats = scratch::<u64>(st, STATS)?;
        {
            let g = &self.gated;
            let (pp, _g1) = g.probs.device_ptr(st);
            let (tk, _g2) = g.topk.device_ptr(st);
            let (of, _g3) = self.offsets.device_ptr(st);
            let (ex, _g4) = self.expert_ids.device_ptr(st);
            let (po, _g5) = self.probs_out.device_ptr(st);
            let (sp, _g6) = stats.device_ptr_mut(st);
            let a = sys::capmoe_plan_stats_args {
                probs: ptr(pp),
                topk: ptr(tk),
                offsets: ptr(of),
                expert_ids: ptr(ex),
                probs_out: ptr(po),
                shape: self.shape,
                stats: ptr_mut(sp),
            };
            // SAFETY: the gate's probs and topk and the plan's offsets,
            // expert_ids and probs_out were sized by GpuPlan::build for this
            // shape; stats holds CAPMOE_STATS u64.
            unsafe { launch::plan_stats(&a, st.cu_stream() as Stream)? };
        }
        Ok(PlanSummary {
            experts: self.experts(),
            stream: self.stream,
            rounds: self.rounds,
            nonfinite: self.gated.nonfinite,
            load: self.load,
            stats,
            flags: self.flags,
        })
    }
}

impl PlanSummary {
    /// Experts `E` of the plan.
    pub fn experts(&self) -> usize {
        self.experts
    }
}

/// Each summary's totals and per-expert loads, after its checks: a NaN or Inf
/// logit is [`crate::RoutingError::NonFiniteLogit`] and an unconverged
/// next-best is [`GpuError::NotConverged`], as [`GpuPlan::to_host`] reports
/// them, one result per summary. The copies into one buffer are
/// stream-ordered; the one download synchronises `stream`. The outer error
/// is a failure of the read-back itself (a driver call, a summary of another
/// stream), which no one summary caused.
pub fn settle(
    stream: &Arc<CudaStream>,
    summaries: &[PlanSummary],
) -> Result<Vec<Result<PlanTotals, GpuError>>, GpuError> {
    let layout = LedgerLayout::of(summaries)?;
    let mut ledger = alloc::<u32>(stream, layout.words())?;
    layout.gather(stream, summaries, &mut ledger.slice_mut(..))?;
    let host = stream.clone_dtoh(&ledger)?;
    Ok(layout.read(&host))
}

/// Where each summary's words sit in a ledger (`HEAD` words, then its
/// loads), and what reading them back needs once the summaries are gone.
/// [`settle`] is [`gather`](Self::gather) then [`read`](Self::read); the
/// decode graph gathers inside the graph into a ledger it keeps, and reads
/// it after each replay.
pub(crate) struct LedgerLayout {
    entries: Vec<Entry>,
    words: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    start: usize,
    experts: usize,
    rounds: usize,
    flags: bool,
}

impl LedgerLayout {
    pub(crate) fn of(summaries: &[PlanSummary]) -> Result<Self, GpuError> {
        let mut entries = Vec::with_capacity(summaries.len());
        let mut words = 0usize;
        for s in summaries {
            entries.push(Entry {
                start: words,
                experts: s.experts,
                rounds: s.rounds,
                flags: s.flags.is_some(),
            });
            words = words
                .checked_add(HEAD + s.experts)
                .ok_or(GpuError::TooLarge {
                    what: "plan summary words",
                    value: s.experts,
                })?;
        }
        Ok(Self { entries, words })
    }

    /// u32 words of the whole ledger.
    pub(crate) fn words(&self) -> usize {
        self.words
    }

    /// Words a ledger of `layers` summaries of `experts` experts each needs.
    pub(crate) fn words_for(layers: usize, experts: usize) -> Option<usize> {
        layers.checked_mul(HEAD.checked_add(experts)?)
    }

    /// Enqueues the device copies of every summary into `ledger` (no host
    /// sync: capturable in a graph). `summaries` must be the ones the layout
    /// was made of.
    pub(crate) fn gather(
        &self,
        stream: &Arc<CudaStream>,
        summaries: &[PlanSummary],
        ledger: &mut CudaViewMut<'_, u32>,
    ) -> Result<(), GpuError> {
        if summaries.len() != self.entries.len() || ledger.len() < self.words {
            return Err(too_small("ledger"));
        }
        for (s, e) in summaries.iter().zip(&self.entries) {
            if s.stream.cu_stream() != stream.cu_stream() {
                return Err(GpuError::Shape {
                    what: "plan summary's stream",
                    got: "a stream of another GpuContext".into(),
                    expected: "the stream the plans were routed on".into(),
                });
            }
            if s.load.len() < s.experts {
                return Err(too_small("load"));
            }
            let w = e.start;
            let mut put = |src: &CudaView<'_, u32>, at: usize| {
                stream.memcpy_dtod(src, &mut ledger.slice_mut(at..at + src.len()))
            };
            // SAFETY: a u64 is two plain u32 words, and the view is the buffer's
            // one u64.
            let nf = unsafe { s.nonfinite.transmute::<u32>(2) }.ok_or(too_small("nonfinite"))?;
            put(&nf, w)?;
            if let Some(flags) = &s.flags {
                let c = sys::CAPMOE_NB_CONVERGED as usize;
                if flags.len() <= c {
                    return Err(too_small("next-best flags"));
                }
                let f = flags.slice(c..c + 1);
                // SAFETY: an i32 flag (0 or 1) read as a u32 word, inside the buffer.
                let f = unsafe { f.transmute::<u32>(1) }.ok_or(too_small("next-best flags"))?;
                put(&f, w + 2)?;
            }
            // SAFETY: CAPMOE_STATS u64 as twice as many plain u32 words.
            let t = unsafe { s.stats.transmute::<u32>(2 * STATS) }.ok_or(too_small("stats"))?;
            put(&t, w + 4)?;
            put(&s.load.slice(..s.experts), w + HEAD)?;
        }
        Ok(())
    }

    /// Each summary's checks and totals from the downloaded ledger (at least
    /// [`words`](Self::words) long).
    pub(crate) fn read(&self, host: &[u32]) -> Vec<Result<PlanTotals, GpuError>> {
        if host.len() < self.words {
            return self
                .entries
                .iter()
                .map(|_| Err(too_small("downloaded ledger")))
                .collect();
        }
        self.entries
            .iter()
            .map(|e| {
                let w = e.start;
                let nf = u64::from(host[w]) | (u64::from(host[w + 1]) << 32);
                nonfinite_error(nf, e.experts)?;
                if e.flags && host[w + 2] != 1 {
                    return Err(GpuError::NotConverged { rounds: e.rounds });
                }
                let word = |j: usize| {
                    let at = w + 4 + 2 * j;
                    u64::from(host[at]) | (u64::from(host[at + 1]) << 32)
                };
                Ok(PlanTotals {
                    load: host[w + HEAD..w + HEAD + e.experts]
                        .iter()
                        .map(|&l| u64::from(l))
                        .collect(),
                    dropped: word(sys::CAPMOE_STAT_DROPPED as usize),
                    rerouted: word(sys::CAPMOE_STAT_REROUTED as usize),
                    served_mass_fx: word(sys::CAPMOE_STAT_SERVED_MASS as usize),
                    topk_mass_fx: word(sys::CAPMOE_STAT_TOPK_MASS as usize),
                })
            })
            .collect()
    }
}

fn too_small(what: &'static str) -> GpuError {
    GpuError::Shape {
        what,
        got: "a buffer shorter than the plan's".into(),
        expected: "the buffers GpuPlan::build made".into(),
    }
}
