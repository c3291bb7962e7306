//! [`PlanSummary`]: what the host needs of a device plan after the fact (its
//! checks, totals and loads), kept on the device, and [`settle`], which
//! reads many of them back in one download.

use super::buffers::{alloc, scratch};
use super::plan::{nonfinite_error, GpuPlan};
use crate::cuda::error::to_i32;
use crate::cuda::launch::{self, ptr, ptr_mut, Stream};
use crate::cuda::{sys, GpuError};
use crate::routing::PlanTotals;
use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// u32 words of a record before the loads: the gating kernel's non-finite
/// record (a u64), next-best's convergence flag, one word of padding, then
/// the `CAPMOE_STATS` u64 totals (cuda/include/capmoe_abi.h).
const HEAD: usize = sys::CAPMOE_REC_HEAD as usize;

/// Words of one plan record of `experts` experts (the launcher's own count:
/// the loads rounded up to even words).
fn record_words(experts: usize) -> Result<usize, GpuError> {
    let e = to_i32("experts of a plan record", experts)?;
    let w = launch::plan_record_words(e);
    usize::try_from(w)
        .ok()
        .filter(|&w| w >= HEAD + experts)
        .ok_or(GpuError::TooLarge {
            what: "experts of a plan record",
            value: experts,
        })
}

/// A device plan reduced to its record (`capmoe_plan_stats`: its checks,
/// totals and per-expert loads, in one buffer); everything else is freed
/// (stream-ordered). Nothing is read back until [`settle`].
pub struct PlanSummary {
    stream: Arc<CudaStream>,
    experts: usize,
    rounds: usize,
    /// Whether the plan came from next-best rounds (its convergence counts).
    next_best: bool,
    record: CudaSlice<u32>,
}

impl GpuPlan {
    /// Enqueues the plan's record (`capmoe_plan_stats`) and frees the rest.
    /// No host sync.
    pub fn into_summary(self) -> Result<PlanSummary, GpuError> {
        let st = &self.stream;
        let experts = self.experts();
        // capmoe_plan_stats writes every word of it.
        let mut record = scratch::<u32>(st, record_words(experts)?)?;
        {
            let g = &self.gated;
            let (pp, _g1) = g.probs.device_ptr(st);
            let (tk, _g2) = g.topk.device_ptr(st);
            let (of, _g3) = self.offsets.device_ptr(st);
            let (ex, _g4) = self.expert_ids.device_ptr(st);
            let (po, _g5) = self.probs_out.device_ptr(st);
            let (nf, _g6) = g.nonfinite.device_ptr(st);
            let (ld, _g7) = self.load.device_ptr(st);
            let flags = self.flags.as_ref().map(|f| f.device_ptr(st));
            let (rp, _g8) = record.device_ptr_mut(st);
            let a = sys::capmoe_plan_stats_args {
                probs: ptr(pp),
                topk: ptr(tk),
                offsets: ptr(of),
                expert_ids: ptr(ex),
                probs_out: ptr(po),
                nonfinite: ptr(nf),
                load: ptr(ld),
                next_best_flags: flags.as_ref().map_or(std::ptr::null(), |(f, _)| ptr(*f)),
                shape: self.shape,
                record: ptr_mut(rp),
            };
            // SAFETY: the gate's probs, topk and nonfinite and the plan's
            // offsets, expert_ids, probs_out and load (E) were sized by
            // GpuPlan::build for this shape; the flags hold CAPMOE_NB_FLAGS;
            // the record holds capmoe_plan_record_words(E) words and is a
            // fresh (256-byte aligned) allocation.
            unsafe { launch::plan_stats(&a, st.cu_stream() as Stream)? };
            drop(flags);
        }
        let summary = PlanSummary {
            experts,
            rounds: self.rounds,
            next_best: self.flags.is_some(),
            stream: self.stream.clone(),
            record,
        };
        // The plan's buffers go to the active layer workspace, if any (the
        // stats kernel reads them first: reuse is stream-ordered).
        self.recycle();
        Ok(summary)
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
                flags: s.next_best,
            });
            words = words
                .checked_add(record_words(s.experts)?)
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
        layers.checked_mul(record_words(experts).ok()?)
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
            let n = record_words(s.experts)?;
            if s.record.len() < n {
                return Err(too_small("plan record"));
            }
            // Records are laid end to end: one copy per summary.
            stream.memcpy_dtod(
                &s.record.slice(..n),
                &mut ledger.slice_mut(e.start..e.start + n),
            )?;
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
                let (nf, conv, stats) = (
                    w + sys::CAPMOE_REC_NONFINITE as usize,
                    w + sys::CAPMOE_REC_CONVERGED as usize,
                    w + sys::CAPMOE_REC_STATS as usize,
                );
                let nf = u64::from(host[nf]) | (u64::from(host[nf + 1]) << 32);
                nonfinite_error(nf, e.experts)?;
                if e.flags && host[conv] != 1 {
                    return Err(GpuError::NotConverged { rounds: e.rounds });
                }
                let word = |j: usize| {
                    let at = stats + 2 * j;
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
