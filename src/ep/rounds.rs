//! One timing round of a case: the warm-up, each case's prefill and decode steps, and every
//! layer's rank work, one rank at a time.

use super::backend::EpBackend;
use super::replay::RankReplay;
use super::run::Measured;
use super::*;
use crate::model::{argmax, ForwardOptions, LogitsMode, Model};

/// One case's timings over the rounds.
pub(super) struct CaseTimes {
    /// `[layer][rank]`: the rank's expert work, ms.
    pub(super) rank: Vec<Vec<Vec<f64>>>,
    /// The case's prefill (the baseline's always; others with throughput), ms.
    pub(super) prefill: Vec<f64>,
    /// One decode step each, ms.
    pub(super) decode: Vec<f64>,
}

impl CaseTimes {
    pub(super) fn new(layers: usize, ranks: usize) -> Self {
        Self {
            rank: vec![vec![Vec::new(); ranks]; layers],
            prefill: Vec::new(),
            decode: Vec::new(),
        }
    }

    pub(super) fn throughput(
        &self,
        setup: &BenchSetup,
        tokens: usize,
        ep_prefill_ms: f64,
    ) -> Throughput {
        let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 / ms * 1e3 } else { 0.0 };
        let prefill_ms = median(&self.prefill);
        let step = (!self.decode.is_empty()).then(|| median(&self.decode));
        Throughput {
            prefill_ms,
            prefill_tok_s: per_s(tokens, prefill_ms),
            decode_steps: setup.decode_steps,
            decode_step_ms: step,
            decode_tok_s: step.map(|ms| per_s(setup.batch, ms)),
            ep_prefill_tok_s: per_s(tokens, ep_prefill_ms),
        }
    }
}

/// One untimed run of the baseline prefill and of the first rank's work.
pub(super) fn warm_up<B: EpBackend>(
    model: &Model<B>,
    m: &Measured<B>,
    prompts: &[&[u32]],
    ranks: usize,
) -> Result<(), EpError> {
    let opts = ForwardOptions::new(model.default_router())
        .with_logits(LogitsMode::Last)
        .with_plans(false);
    let _ = model.prefill(prompts, &opts)?;
    if let Some(rec) = m.records.first() {
        let _ = model.run_rank_work(&model.rank_work(0, rec, 0, ranks)?)?;
    }
    Ok(())
}

/// One timing round of one case: its prefill (when `baseline` or with
/// throughput) and decode steps, then every layer's rank work, one rank at a
/// time, each timed alone by the backend ([`EpBackend::timed`]).
pub(super) fn time_round<B: EpBackend>(
    model: &Model<B>,
    m: &Measured<B>,
    prompts: &[&[u32]],
    setup: &BenchSetup,
    baseline: bool,
    t: &mut CaseTimes,
) -> Result<(), EpError> {
    let be = model.backend();
    if baseline || setup.throughput {
        // Timed without plans: a device backend keeps them on the device, so
        // its layers have no host sync (one read-back per pass).
        let opts = ForwardOptions::new(m.router.clone())
            .with_layer_routers(m.layer_routers.clone())
            .with_logits(LogitsMode::Last)
            .with_plans(false);
        let ((seqs, out), ms) = be.timed(|| model.prefill(prompts, &opts))?;
        t.prefill.push(ms);
        if setup.throughput && setup.decode_steps > 0 {
            let next = next_tokens(&out.logits, out.vocab);
            drop(out);
            // The backend's decoder (CUDA: the step captured once as a graph,
            // outside the timing, then replayed).
            let mut dec = model.decoder(seqs, next, setup.decode_steps, &opts.router)?;
            for _ in 0..setup.decode_steps {
                let (_, ms) = be.timed(|| dec.step())?;
                t.decode.push(ms);
            }
        }
    }
    for (l, rec) in m.records.iter().enumerate() {
        for (r, times) in t.rank[l].iter_mut().enumerate() {
            let work = model.rank_work(l, rec, r, setup.ranks)?;
            let (y, ms) = be.timed(|| model.run_rank_work(&work))?;
            times.push(ms);
            drop(y);
        }
    }
    Ok(())
}

/// The greedy next token of every logits row.
pub(super) fn next_tokens(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab.max(1))
        .map(|row| argmax(row).unwrap_or(0) as u32)
        .collect()
}
