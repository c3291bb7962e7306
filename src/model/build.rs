//! The model's weights and its constructors (checkpoint or random).

use super::config::MixtralConfig;
use super::init::{self, InitOptions};
use super::weights::{WeightError, WeightFiles};
use super::{names, ModelError};
use crate::backend::{AttnGeom, Backend, CpuBackend, ExpertWeights, HostTensor, MoeWeights, Rope};
use crate::routing::{Policy, RouterConfig};
use std::path::Path;

/// One decoder layer's weights.
pub struct Layer<B: Backend> {
    pub input_norm: B::Vector,
    pub q_proj: B::Mat,
    pub k_proj: B::Mat,
    pub v_proj: B::Mat,
    pub o_proj: B::Mat,
    pub post_norm: B::Vector,
    pub moe: MoeWeights<B>,
}

/// A Mixtral model on backend `B`.
pub struct Model<B: Backend> {
    pub(crate) backend: B,
    pub(crate) config: MixtralConfig,
    pub(crate) embed: B::Mat,
    /// `None` when tied to the embeddings.
    pub(crate) lm_head: Option<B::Mat>,
    pub(crate) norm: B::Vector,
    pub(crate) layers: Vec<Layer<B>>,
    pub(crate) rope: Rope,
}

impl<B: Backend> Model<B> {
    /// Builds the model from a source of host tensors, asked for by Hugging
    /// Face name and expected shape.
    pub fn from_source(
        backend: B,
        config: MixtralConfig,
        mut source: impl FnMut(&str, &[usize]) -> Result<HostTensor, ModelError>,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let c = &config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let e = c.num_local_experts;
        let mut take = |name: &str, shape: &[usize]| -> Result<HostTensor, ModelError> {
            let t = source(name, shape)?;
            if t.shape() != shape || t.len() != shape.iter().product::<usize>() {
                return Err(WeightError::Shape {
                    name: name.to_string(),
                    found: if t.shape() != shape {
                        t.shape().to_vec()
                    } else {
                        vec![t.len()]
                    },
                    expected: shape.to_vec(),
                }
                .into());
            }
            Ok(t)
        };
        let mat = |t: HostTensor| -> Result<B::Mat, ModelError> { Ok(backend.mat(t)?) };
        let embed = mat(take(names::EMBED, &[v, h])?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let q_proj = mat(take(&names::attn(l, "q_proj"), &[q, h])?)?;
            let k_proj = mat(take(&names::attn(l, "k_proj"), &[kv, h])?)?;
            let v_proj = mat(take(&names::attn(l, "v_proj"), &[kv, h])?)?;
            let o_proj = mat(take(&names::attn(l, "o_proj"), &[h, q])?)?;
            let gate = mat(take(&names::gate(l), &[e, h])?)?;
            let mut host = Vec::with_capacity(e);
            for j in 0..e {
                host.push(ExpertWeights::<CpuBackend> {
                    w1: CpuBackend.mat(take(&names::expert(l, j, "w1"), &[i, h])?)?,
                    w2: CpuBackend.mat(take(&names::expert(l, j, "w2"), &[h, i])?)?,
                    w3: CpuBackend.mat(take(&names::expert(l, j, "w3"), &[i, h])?)?,
                });
            }
            let experts = backend.experts(host)?;
            layers.push((q_proj, k_proj, v_proj, o_proj, gate, experts));
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(mat(take(names::LM_HEAD, &[v, h])?)?)
        };
        let mut vector = |name: &str| -> Result<B::Vector, ModelError> {
            Ok(backend.vector(take(name, &[h])?)?)
        };
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(l, (q_proj, k_proj, v_proj, o_proj, gate, experts))| {
                Ok(Layer {
                    input_norm: vector(&names::input_norm(l))?,
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    post_norm: vector(&names::post_norm(l))?,
                    moe: MoeWeights {
                        gate,
                        experts,
                        router_bias: None,
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let norm = vector(names::NORM)?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        Ok(Self {
            backend,
            config,
            embed,
            lm_head,
            norm,
            layers,
            rope,
        })
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` plus
    /// `model.safetensors` or sharded `model.safetensors.index.json`.
    /// Every expected tensor must be present with its shape, and no other.
    pub fn load(backend: B, dir: &Path) -> Result<Self, ModelError> {
        let config = MixtralConfig::from_path(dir)?;
        let mut files = WeightFiles::open(dir)?;
        let model = Self::from_source(backend, config, |name, shape| Ok(files.take(name, shape)?))?;
        files.finish()?;
        Ok(model)
    }

    /// Seeded random weights for any config (see [`InitOptions`]), with the
    /// optional router skew applied.
    pub fn random(
        backend: B,
        config: MixtralConfig,
        opts: &InitOptions,
    ) -> Result<Self, ModelError> {
        let mut model = Self::from_source(backend, config, |name, shape| {
            Ok(init::random_tensor(name, shape, opts))
        })?;
        model.apply_skew(opts.skew, opts.seed)?;
        Ok(model)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn config(&self) -> &MixtralConfig {
        &self.config
    }
    pub fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }
    /// Mutable layers (e.g. to set a router bias).
    pub fn layers_mut(&mut self) -> &mut [Layer<B>] {
        &mut self.layers
    }
    /// Plain top-k routing with the config's k (the model as trained).
    pub fn default_router(&self) -> RouterConfig {
        RouterConfig::new(self.config.num_experts_per_tok, Policy::None)
    }
    pub(crate) fn geom(&self) -> AttnGeom {
        let c = &self.config;
        AttnGeom {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            window: c.sliding_window,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }
}
