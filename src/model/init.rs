//! Seeded random weights and the synthetic router skew.

use super::build::Model;
use super::ModelError;
use crate::backend::{random_host_tensor, Backend, HostTensor, RandomInit};
use crate::routing::numerics::splitmix64;
use crate::trace::{expert_bias, Rng, Skew};

/// How to initialise random weights.
#[derive(Debug, Clone, PartialEq)]
pub struct InitOptions {
    /// Seed of every weight and of the router skew's draw.
    pub seed: u64,
    /// Standard deviation of every matrix weight (transformers'
    /// `initializer_range`, 0.02). Values are uniform in
    /// `[-std*sqrt(3), std*sqrt(3)]`; norm weights are 1.
    pub std: f32,
    /// Router skew added as a per-layer logit bias (see [`Model::apply_skew`]).
    pub skew: Skew,
}

impl InitOptions {
    /// Seed `seed`, std 0.02, no router skew.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            std: 0.02,
            skew: Skew::Uniform,
        }
    }
    /// Sets the router skew.
    pub fn with_skew(mut self, skew: Skew) -> Self {
        self.skew = skew;
        self
    }
    /// The seed and standard deviation the backends draw with.
    pub fn random_init(&self) -> RandomInit {
        RandomInit {
            seed: self.seed,
            std: self.std,
        }
    }
}

/// A random tensor: norm weights (1-D) are ones, matrices uniform with the
/// options' standard deviation, generated in parallel chunks each with its
/// own seeded stream (the host draw, [`crate::backend::random_host_tensor`]).
pub fn random_tensor(name: &str, shape: &[usize], opts: &InitOptions) -> HostTensor {
    random_host_tensor(name, shape, &opts.random_init())
}

impl<B: Backend> Model<B> {
    /// Sets every layer's router bias for a synthetic skew (or clears it for
    /// [`Skew::Uniform`]).
    ///
    /// [`expert_bias`] is calibrated for unit-variance router logits, so each
    /// layer's bias is scaled by the standard deviation of that layer's gate
    /// logits measured on 256 unit-normal hidden states (what RMSNorm with
    /// unit weights produces on average). The busiest expert rotates with the
    /// layer (layer `l` favours expert `l mod E`), as real routers do not all
    /// favour the same expert. `seed` picks the probe states.
    pub fn apply_skew(&mut self, skew: Skew, seed: u64) -> Result<(), ModelError> {
        let (e, k, h) = (
            self.config.num_local_experts,
            self.config.num_experts_per_tok,
            self.config.hidden_size,
        );
        if skew == Skew::Uniform {
            for l in &mut self.layers {
                l.moe.router_bias = None;
            }
            return Ok(());
        }
        let unit = expert_bias(e, k, skew)?;
        const PROBES: usize = 256;
        let mut rng = Rng::new(splitmix64(seed ^ 0x005E_ED0F_5CE3));
        let probe: Vec<f32> = (0..PROBES * h).map(|_| rng.normal() as f32).collect();
        let x = self.backend.upload(&probe, PROBES, h)?;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            layer.moe.router_bias = None;
            let logits = layer.moe.router_logits(&self.backend, &x)?;
            let std = std_dev(&logits);
            let shift = li % e;
            layer.moe.router_bias = Some(
                (0..e)
                    .map(|j| unit[(j + e - shift) % e] * std as f32)
                    .collect(),
            );
        }
        Ok(())
    }
}

fn std_dev(v: &[f32]) -> f64 {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}
