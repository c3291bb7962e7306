//! Greedy decode steps over a batch of sequences: the [`Decoder`] trait, and
//! [`EagerDecoder`], which runs each step as a forward pass. A backend may
//! decode its own way ([`ModelBackend::decoder`]: the CUDA backend replays one
//! CUDA graph per batch size); generation and the benchmark's decode go
//! through [`Model::decoder`] either way.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capmoe::backend::CpuBackend;
//! use capmoe::model::{ForwardOptions, InitOptions, LogitsMode, MixtralConfig, Model};
//! let model = Model::random(CpuBackend, MixtralConfig::builtin("tiny")?, &InitOptions::new(7))?;
//! let router = model.default_router();
//! let opts = ForwardOptions::new(router.clone()).with_logits(LogitsMode::Last);
//! let (seqs, first) = model.prefill(&[&[1, 2, 3], &[4, 5]], &opts)?;
//! let next = capmoe::model::greedy_rows(&first)?;
//! let mut dec = model.decoder(seqs, next, 4, &router)?;
//! for _ in 0..4 {
//!     dec.step()?; // every sequence is fed its pending token
//! }
//! assert_eq!(dec.pending().len(), 2);
//! # Ok(()) }
//! ```

use super::build::Model;
use super::forward::{ForwardOptions, ForwardOutput, LogitsMode, MoeRunner, Sequence};
use super::generate::argmax;
use super::{ModelBackend, ModelError};
use crate::backend::Backend;
use crate::routing::{PlanTotals, RouterConfig};

/// Greedy decode steps over a batch of sequences, each with one pending
/// token (the one it is fed next).
pub trait Decoder {
    /// How the steps run: `"forward"` (a forward pass each) or
    /// `"cuda-graph"` (one captured graph per batch size, replayed).
    fn name(&self) -> &'static str;
    /// Sequences in the batch.
    fn batch(&self) -> usize;
    /// Each sequence's pending token, in batch order.
    fn pending(&self) -> &[u32];
    /// One step: feeds every sequence its pending token, and makes each one's
    /// greedy next token (the first largest logit) its pending token. Returns
    /// each MoE layer's plan totals over the step's batch.
    fn step(&mut self) -> Result<Vec<PlanTotals>, ModelError>;
    /// Keeps only the sequences at `keep` (strictly increasing indices into
    /// the batch; not empty), in that order. Later steps route (and cap)
    /// over the smaller batch.
    fn retain(&mut self, keep: &[usize]) -> Result<(), ModelError>;
}

/// Checks `keep` against a batch of `batch` sequences (see [`Decoder::retain`]).
pub(crate) fn check_keep(keep: &[usize], batch: usize) -> Result<(), ModelError> {
    if keep.is_empty() {
        return Err(ModelError::EmptyInput("retain keeps no sequence"));
    }
    for (i, &k) in keep.iter().enumerate() {
        if k >= batch || (i > 0 && keep[i - 1] >= k) {
            return Err(ModelError::Mismatch {
                what: "retained sequence index (strictly increasing, below the batch)",
                got: k,
                expected: batch,
            });
        }
    }
    Ok(())
}

/// Checks that each of `seqs` sequences has one pending token.
pub(crate) fn check_pending(seqs: usize, pending: &[u32]) -> Result<(), ModelError> {
    if seqs != pending.len() {
        return Err(ModelError::Mismatch {
            what: "pending tokens vs sequences",
            got: pending.len(),
            expected: seqs,
        });
    }
    Ok(())
}

/// The greedy next token of each logit row of `out` (first largest; an
/// empty row is [`ModelError::EmptyInput`]).
pub fn greedy_rows<B: Backend>(out: &ForwardOutput<B>) -> Result<Vec<u32>, ModelError> {
    (0..out.rows)
        .map(|r| {
            out.row(r)
                .and_then(argmax)
                .map(|i| i as u32)
                .ok_or(ModelError::EmptyInput("no logits"))
        })
        .collect()
}

/// [`Decoder`] by forward passes ([`Model::forward`] with the last
/// position's logits, plans left to the backend): what every backend does
/// unless it has its own.
pub struct EagerDecoder<'m, B: Backend> {
    model: &'m Model<B>,
    seqs: Vec<Sequence<B>>,
    pending: Vec<u32>,
    opts: ForwardOptions,
    runner: Option<&'m dyn MoeRunner<B>>,
}

impl<'m, B: Backend> EagerDecoder<'m, B> {
    /// A decoder over `seqs`, `pending[s]` fed to sequence `s` next.
    pub fn new(
        model: &'m Model<B>,
        seqs: Vec<Sequence<B>>,
        pending: Vec<u32>,
        router: &RouterConfig,
    ) -> Result<Self, ModelError> {
        check_pending(seqs.len(), &pending)?;
        let opts = ForwardOptions::new(router.clone())
            .with_logits(LogitsMode::Last)
            .with_plans(false);
        Ok(Self {
            model,
            seqs,
            pending,
            opts,
            runner: None,
        })
    }

    /// Runs every step's MoE layers through `runner` ([`Model::forward_with`]).
    pub fn with_runner(mut self, runner: &'m dyn MoeRunner<B>) -> Self {
        self.runner = Some(runner);
        self
    }
}

impl<B: Backend> Decoder for EagerDecoder<'_, B> {
    fn name(&self) -> &'static str {
        "forward"
    }
    fn batch(&self) -> usize {
        self.seqs.len()
    }
    fn pending(&self) -> &[u32] {
        &self.pending
    }
    fn step(&mut self) -> Result<Vec<PlanTotals>, ModelError> {
        let toks: Vec<[u32; 1]> = self.pending.iter().map(|&t| [t]).collect();
        let tok_refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
        let mut refs: Vec<&mut Sequence<B>> = self.seqs.iter_mut().collect();
        let out = self
            .model
            .forward_with(&mut refs, &tok_refs, &self.opts, self.runner)?;
        self.pending = greedy_rows(&out)?;
        Ok(out.layers.into_iter().map(|l| l.totals).collect())
    }
    fn retain(&mut self, keep: &[usize]) -> Result<(), ModelError> {
        check_keep(keep, self.seqs.len())?;
        let mut k = keep.iter().peekable();
        let mut i = 0usize;
        self.seqs.retain(|_| {
            let kept = k.next_if_eq(&&i).is_some();
            i += 1;
            kept
        });
        self.pending = keep.iter().map(|&j| self.pending[j]).collect();
        Ok(())
    }
}

impl<B: ModelBackend> Model<B> {
    /// A [`Decoder`] over freshly prefilled `seqs` with their first pending
    /// tokens, for at most `steps` steps (a device backend sizes its static
    /// KV cache by it), routing every MoE layer under `router`. The
    /// backend chooses how ([`ModelBackend::decoder`]).
    pub fn decoder<'m>(
        &'m self,
        seqs: Vec<Sequence<B>>,
        pending: Vec<u32>,
        steps: usize,
        router: &RouterConfig,
    ) -> Result<Box<dyn Decoder + 'm>, ModelError>
    where
        B: 'm,
    {
        for s in &seqs {
            self.config.check_positions(s.len(), steps)?;
        }
        self.check_all_experts()?;
        B::decoder(self, seqs, pending, steps, router)
    }
}
