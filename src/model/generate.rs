//! Greedy generation.

use super::build::Model;
use super::forward::{ForwardOptions, LogitsMode};
use super::ModelError;
use crate::backend::Backend;
use crate::routing::RouterConfig;

/// Greedy decoding options.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Stop after emitting one of these ids (it is included in the output).
    /// Empty: never stop early.
    pub eos: Vec<u32>,
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
        let fo = ForwardOptions::new(opts.router.clone()).with_logits(LogitsMode::Last);
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
