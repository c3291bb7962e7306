//! Greedy generation.

use super::build::Model;
use super::decode::greedy_rows;
use super::decode::EagerDecoder;
use super::forward::{ForwardOptions, LogitsMode, MoeRunner};
use super::ModelBackend;
use super::ModelError;
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

impl<B: ModelBackend> Model<B> {
    /// Greedy generation: prefills `prompt`, then decodes one token at a
    /// time with the KV cache. Returns the new ids only.
    pub fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>, ModelError> {
        // Bounded before anything runs or is allocated: no run past the
        // last position, no capacity overflow on a huge count.
        self.config()
            .check_generation(prompt.len(), opts.max_new_tokens)?;
        if opts.max_new_tokens == 0 {
            if prompt.is_empty() {
                return Err(ModelError::EmptyInput("the prompt has no tokens"));
            }
            return Ok(Vec::new());
        }
        let mut out = self.generate_batch(&[prompt], opts)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Greedy generation for several prompts at once: one batched prefill,
    /// then one batched decode step per new token over the sequences still
    /// running (a sequence stops at `max_new_tokens` or after an eos id).
    /// Capacity is computed over each step's batch. The steps run through
    /// the backend's [`Decoder`](super::Decoder) (on CUDA: one captured
    /// graph per batch size). Returns each prompt's new ids.
    pub fn generate_batch(
        &self,
        prompts: &[&[u32]],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        self.generate_batch_with(prompts, opts, None)
    }

    /// [`Model::generate_batch`], every MoE layer of the prefill and of each
    /// decode step run by `runner` when one is given (the steps are then
    /// forward passes: an [`EagerDecoder`](super::EagerDecoder)).
    pub fn generate_batch_with(
        &self,
        prompts: &[&[u32]],
        opts: &GenerateOptions,
        runner: Option<&dyn MoeRunner<B>>,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        for p in prompts {
            self.config()
                .check_generation(p.len(), opts.max_new_tokens)?;
        }
        let fo = ForwardOptions::new(opts.router.clone())
            .with_logits(LogitsMode::Last)
            .with_plans(false);
        let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(opts.max_new_tokens); prompts.len()];
        let (seqs, first) = self.prefill_with(prompts, &fo, runner)?;
        if opts.max_new_tokens == 0 {
            return Ok(out);
        }
        let first = greedy_rows(&first)?;
        let steps = opts.max_new_tokens - 1;
        let mut dec: Box<dyn super::Decoder + '_> = match runner {
            Some(r) => Box::new(EagerDecoder::new(self, seqs, first, &opts.router)?.with_runner(r)),
            None => self.decoder(seqs, first, steps, &opts.router)?,
        };
        // running[i]: the prompt of the decoder's sequence i.
        let mut running: Vec<usize> = (0..prompts.len()).collect();
        loop {
            let mut keep = Vec::with_capacity(running.len());
            for (i, (&s, &tok)) in running.iter().zip(dec.pending()).enumerate() {
                out[s].push(tok);
                if out[s].len() < opts.max_new_tokens && !opts.eos.contains(&tok) {
                    keep.push(i);
                }
            }
            if keep.is_empty() {
                return Ok(out);
            }
            if keep.len() < running.len() {
                dec.retain(&keep)?;
                running = keep.iter().map(|&i| running[i]).collect();
            }
            dec.step()?;
        }
    }
}
