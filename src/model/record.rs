//! Recording each forward's router logits (`capmoe logits|generate --record-router`), for
//! offline replay (`capmoe replay`).

use super::forward::{Kept, MoeRunner};
use crate::backend::{Backend, BackendError, MoeOutput, MoeWeights};
use crate::routing::RouterConfig;
use std::sync::Mutex;

/// One forward's layers so far: each layer's tokens and router logits.
type Layers = Vec<(usize, Vec<f32>)>;

/// A [`MoeRunner`] that runs each MoE layer on the host plan of its router logits
/// ([`MoeWeights::forward_plan`], the routing contract's plan) and keeps those logits (bias
/// included, `[tokens, experts]` row-major). Layer 0 starts a new forward;
/// [`RouterRecorder::take_forwards`] gives each forward as one `[layers, tokens, experts]` stack.
#[derive(Default)]
pub struct RouterRecorder {
    forwards: Mutex<Vec<Layers>>,
}

/// One forward's router logits, `[layers, tokens, experts]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedForward {
    /// The logits, layer-major.
    pub logits: Vec<f32>,
    /// MoE layers.
    pub layers: usize,
    /// Tokens of the forward.
    pub tokens: usize,
    /// Experts the router scores.
    pub experts: usize,
}

impl RouterRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The forwards recorded since the last call, in order.
    pub fn take_forwards(&self) -> Vec<RecordedForward> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .filter_map(|layers| {
                let (tokens, _) = *layers.first()?;
                let experts = layers[0].1.len().checked_div(tokens).unwrap_or(0);
                Some(RecordedForward {
                    layers: layers.len(),
                    tokens,
                    experts,
                    logits: layers.into_iter().flat_map(|(_, l)| l).collect(),
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Layers>> {
        // Poisoned only if a forward panicked; what it held is still a list of forwards.
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B: Backend> MoeRunner<B> for RouterRecorder {
    fn run_moe(
        &self,
        backend: &B,
        layer: usize,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, Option<Kept>), BackendError> {
        let (tokens, _) = backend.act_shape(x);
        let logits = w.router_logits(backend, x)?;
        let plan = w.plan(backend, &logits, tokens, router)?;
        let mut f = self.lock();
        if layer == 0 || f.is_empty() {
            f.push(Vec::new());
        }
        if let Some(cur) = f.last_mut() {
            cur.push((tokens, logits));
        }
        drop(f);
        let (out, layout) = w.forward_plan(backend, x, &plan)?;
        Ok((MoeOutput { out, plan, layout }, None))
    }
}

#[cfg(test)]
mod tests {
    use super::RouterRecorder;
    use crate::backend::CpuBackend;
    use crate::model::{ForwardOptions, InitOptions, MixtralConfig, Model};

    /// The recorded logits route to the plans the forward used.
    #[test]
    fn recorded_logits_route_to_the_forwards_plans() {
        let cfg = MixtralConfig::builtin("tiny").unwrap();
        let m = Model::random(CpuBackend, cfg, &InitOptions::new(3)).unwrap();
        let rec = RouterRecorder::new();
        let router = m.default_router();
        let ids = [1u32, 5, 9, 2, 7];
        let (_, out) = m
            .prefill_with(&[&ids], &ForwardOptions::new(router.clone()), Some(&rec))
            .unwrap();
        let mut all = rec.take_forwards();
        assert_eq!(all.len(), 1);
        let f = all.pop().unwrap();
        assert_eq!((f.layers, f.tokens, f.experts), (2, 5, 4));
        for (l, rec_layer) in out.layers.iter().enumerate() {
            let logits = &f.logits[l * 20..(l + 1) * 20];
            let plan =
                crate::routing::route(&crate::routing::Logits::new(logits, 5, 4).unwrap(), &router)
                    .unwrap();
            assert_eq!(Some(&plan), rec_layer.plan.as_ref());
        }
        assert!(rec.take_forwards().is_empty());
        // Generation: the prefill and each decode step are forwards of their own.
        let g = crate::model::GenerateOptions {
            router,
            max_new_tokens: 3,
            eos: Vec::new(),
        };
        m.generate_batch_with(&[&ids], &g, Some(&rec)).unwrap();
        let tokens: Vec<usize> = rec.take_forwards().iter().map(|f| f.tokens).collect();
        assert_eq!(tokens, vec![5, 1, 1]);
    }
}
