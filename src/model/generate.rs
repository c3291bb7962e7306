//! Greedy generation.

use super::build::Model;
use super::forward::{ForwardOptions, LogitsMode};
use super::ModelError;
use crate::backend::Backend;
use crate::routing::RouterConfig;

/// Greedy decoding options.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (0: none).
    pub max_new_tokens: usize,
    /// Stop after emitting one of these ids (it is included in the output).
    /// Empty: never stop early.
    pub eos: Vec<u32>,
    /// Routing of every MoE layer.
    pub router: RouterConfig,
}

/// Index of the largest value, the first on ties (as `torch.argmax`);
/// `None` for an empty slice. NaN never wins.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|b| x > v[b]) && !x.is_nan() {
            best = Some(i);
        }
    }
    best
}

impl<B: Backend> Model<B> {
    /// Greedy generation: prefills `prompt`, then decodes one token at a
    /// time with the KV cache. Returns the new ids only.
    pub fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>, ModelError> {
        // Bounded before anything runs or is allocated: no run past the
        // last position, no capacity overflow on a huge count.
        self.config()
            .check_generation(prompt.len(), opts.max_new_tokens)?;
        let fo = ForwardOptions::new(opts.router.clone())
            .with_logits(LogitsMode::Last)
            .with_plans(false);
        let mut out = Vec::with_capacity(opts.max_new_tokens);
        if opts.max_new_tokens == 0 {
            if prompt.is_empty() {
                return Err(ModelError::EmptyInput("the prompt has no tokens"));
            }
            return Ok(out);
        }
        let (mut seqs, first) = self.prefill(&[prompt], &fo)?;
        let mut next = first
            .row(0)
            .and_then(argmax)
            .ok_or(ModelError::EmptyInput("no logits"))? as u32;
        loop {
            out.push(next);
            if out.len() == opts.max_new_tokens || opts.eos.contains(&next) {
                return Ok(out);
            }
            let step = self.forward(&mut [&mut seqs[0]], &[&[next]], &fo)?;
            next = step
                .row(0)
                .and_then(argmax)
                .ok_or(ModelError::EmptyInput("no logits"))? as u32;
        }
    }
}

impl<B: Backend> Model<B> {
    /// Greedy generation for several prompts at once: one batched prefill,
    /// then one batched decode step per new token over the sequences still
    /// running (a sequence stops at `max_new_tokens` or after an eos id).
    /// Capacity is computed over each step's batch. Returns each prompt's
    /// new ids.
    pub fn generate_batch(
        &self,
        prompts: &[&[u32]],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        for p in prompts {
            self.config()
                .check_generation(p.len(), opts.max_new_tokens)?;
        }
        let fo = ForwardOptions::new(opts.router.clone())
            .with_logits(LogitsMode::Last)
            .with_plans(false);
        let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(opts.max_new_tokens); prompts.len()];
        let (mut seqs, first) = self.prefill(prompts, &fo)?;
        if opts.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut next: Vec<u32> = (0..prompts.len())
            .map(|s| {
                first
                    .row(s)
                    .and_then(argmax)
                    .map(|i| i as u32)
                    .ok_or(ModelError::EmptyInput("no logits"))
            })
            .collect::<Result<_, _>>()?;
        let mut running: Vec<usize> = (0..prompts.len()).collect();
        loop {
            running.retain(|&s| {
                out[s].push(next[s]);
                out[s].len() < opts.max_new_tokens && !opts.eos.contains(&next[s])
            });
            if running.is_empty() {
                return Ok(out);
            }
            let toks: Vec<[u32; 1]> = running.iter().map(|&s| [next[s]]).collect();
            let tok_refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
            let mut refs: Vec<&mut super::forward::Sequence<B>> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(s, _)| running.contains(s))
                .map(|(_, q)| q)
                .collect();
            let step = self.forward(&mut refs, &tok_refs, &fo)?;
            for (r, &s) in running.iter().enumerate() {
                next[s] = step
                    .row(r)
                    .and_then(argmax)
                    .ok_or(ModelError::EmptyInput("no logits"))? as u32;
            }
        }
    }
}
