//! The model's weights and its constructors (checkpoint or random).

use super::config::MixtralConfig;
use super::init::InitOptions;
use super::weights::{WeightError, WeightFiles};
use super::{names, ModelBackend, ModelError};
use crate::backend::{
    AttnGeom, Backend, CpuBackend, ExpertsShape, HostExpert, HostTensor, MoeWeights, RandomInit,
    Rope,
};
use crate::progress::Progress;
use crate::routing::{Policy, RouterConfig};
use std::ops::Range;
use std::path::Path;

/// One decoder layer's weights.
pub struct Layer<B: Backend> {
    /// Pre-attention RMSNorm weight `[hidden]`.
    pub input_norm: B::Vector,
    /// Query projection `[heads * head_dim, hidden]`.
    pub q_proj: B::Mat,
    /// Key projection `[kv_heads * head_dim, hidden]`.
    pub k_proj: B::Mat,
    /// Value projection `[kv_heads * head_dim, hidden]`.
    pub v_proj: B::Mat,
    /// Output projection `[hidden, heads * head_dim]`.
    pub o_proj: B::Mat,
    /// Pre-MoE (post-attention) RMSNorm weight `[hidden]`.
    pub post_norm: B::Vector,
    /// The sparse MoE block: router and experts.
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
    /// The experts this model holds: all, or one EP rank's group.
    pub(crate) expert_group: Range<usize>,
}

impl<B: Backend> Model<B> {
    /// Builds the model from a source of host tensors, asked for by Hugging
    /// Face name and expected shape.
    pub fn from_source(
        backend: B,
        config: MixtralConfig,
        source: impl FnMut(&str, &[usize]) -> Result<HostTensor, ModelError>,
    ) -> Result<Self, ModelError> {
        let all = 0..config.num_local_experts;
        Self::from_source_group(backend, config, all, source)
    }

    /// [`Model::from_source`] holding only experts `group` of every layer
    /// (an EP rank's group; see `ep::dist`): the others are never asked for.
    pub fn from_source_group(
        backend: B,
        config: MixtralConfig,
        group: Range<usize>,
        source: impl FnMut(&str, &[usize]) -> Result<HostTensor, ModelError>,
    ) -> Result<Self, ModelError> {
        Self::build(
            backend,
            config,
            group,
            &mut HostSource(source),
            &crate::progress::NoProgress,
        )
    }

    /// Builds the model from `source` (every weight by name and shape, in
    /// the same order for every source), holding experts `group`;
    /// `progress` ticks once per layer.
    fn build(
        backend: B,
        config: MixtralConfig,
        group: Range<usize>,
        source: &mut dyn WeightSource<B>,
        progress: &dyn Progress,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        check_group(&group, config.num_local_experts)?;
        let c = &config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let e = c.num_local_experts;
        let be = &backend;
        progress.set_length(c.num_hidden_layers as u64);
        let embed = source.mat(be, names::EMBED, [v, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            progress.set_message(&format!(
                "weights of layer {}/{}",
                l + 1,
                c.num_hidden_layers
            ));
            let q_proj = source.mat(be, &names::attn(l, "q_proj"), [q, h])?;
            let k_proj = source.mat(be, &names::attn(l, "k_proj"), [kv, h])?;
            let v_proj = source.mat(be, &names::attn(l, "v_proj"), [kv, h])?;
            let o_proj = source.mat(be, &names::attn(l, "o_proj"), [h, q])?;
            let gate = source.mat(be, &names::gate(l), [e, h])?;
            let shape = ExpertsShape {
                experts: group.len(),
                hidden: h,
                intermediate: i,
            };
            let experts = source.experts(be, l, group.start, shape)?;
            layers.push((q_proj, k_proj, v_proj, o_proj, gate, experts));
            progress.inc(1);
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(source.mat(be, names::LM_HEAD, [v, h])?)
        };
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(l, (q_proj, k_proj, v_proj, o_proj, gate, experts))| {
                Ok(Layer {
                    input_norm: source.vector(be, &names::input_norm(l), h)?,
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    post_norm: source.vector(be, &names::post_norm(l), h)?,
                    moe: MoeWeights {
                        gate,
                        experts,
                        router_bias: None,
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let norm = source.vector(be, names::NORM, h)?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        Ok(Self {
            backend,
            config,
            embed,
            lm_head,
            norm,
            layers,
            rope,
            expert_group: group,
        })
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` plus
    /// `model.safetensors` or sharded `model.safetensors.index.json`.
    /// Every expected tensor must be present with its shape and a supported
    /// dtype, and no other (checked before any weight is converted); every
    /// weight must be finite.
    pub fn load(backend: B, dir: &Path) -> Result<Self, ModelError> {
        let config = MixtralConfig::from_path(dir)?;
        let mut files = WeightFiles::open(dir)?;
        files.check(&config)?;
        let model = Self::from_source(backend, config, |name, shape| Ok(files.take(name, shape)?))?;
        files.finish()?;
        Ok(model)
    }

    /// [`Model::load`] holding only experts `group` of every layer (an EP
    /// rank's group): the checkpoint is checked whole, but the other
    /// experts' tensors are never read or converted.
    pub fn load_expert_group(
        backend: B,
        dir: &Path,
        group: Range<usize>,
    ) -> Result<Self, ModelError> {
        let config = MixtralConfig::from_path(dir)?;
        check_group(&group, config.num_local_experts)?;
        let mut files = WeightFiles::open(dir)?;
        files.check(&config)?;
        for l in 0..config.num_hidden_layers {
            for j in (0..config.num_local_experts).filter(|j| !group.contains(j)) {
                for m in ["w1", "w2", "w3"] {
                    files.discard(&names::expert(l, j, m));
                }
            }
        }
        let model = Self::from_source_group(backend, config, group, |name, shape| {
            Ok(files.take(name, shape)?)
        })?;
        files.finish()?;
        Ok(model)
    }

    /// Seeded random weights drawn on the host for every backend (then
    /// taken as a checkpoint's would be), skew applied: the same model on
    /// every backend up to the backend's weight precision, for parity tests
    /// on random models. On the CPU it is [`Model::random`], bit for bit.
    pub fn random_host(
        backend: B,
        config: MixtralConfig,
        opts: &InitOptions,
    ) -> Result<Self, ModelError> {
        let mut model = Self::from_source(backend, config, |name, shape| {
            Ok(super::init::random_tensor(name, shape, opts))
        })?;
        model.apply_skew(opts.skew, opts.seed)?;
        Ok(model)
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The experts every layer holds: `0..num_local_experts`, or one EP
    /// rank's group ([`Model::load_expert_group`]).
    pub fn expert_group(&self) -> Range<usize> {
        self.expert_group.clone()
    }
    /// Expert weights held, in parameters (every layer's `w1`, `w2`, `w3`
    /// of the experts in [`Model::expert_group`]).
    pub fn expert_params_held(&self) -> u64 {
        let c = &self.config;
        (self.expert_group.len() as u64)
            .saturating_mul(c.num_hidden_layers as u64)
            .saturating_mul(3 * c.hidden_size as u64 * c.intermediate_size as u64)
    }
    /// Fails unless the model holds every expert (a forward pass without a
    /// [`super::MoeRunner`] needs them all).
    pub(crate) fn check_all_experts(&self) -> Result<(), ModelError> {
        let e = self.config.num_local_experts;
        if self.expert_group != (0..e) {
            return Err(ModelError::PartialExperts {
                start: self.expert_group.start,
                end: self.expert_group.end,
                experts: e,
            });
        }
        Ok(())
    }
    /// The model's config.
    pub fn config(&self) -> &MixtralConfig {
        &self.config
    }
    /// The decoder layers, in order.
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

impl<B: ModelBackend> Model<B> {
    /// Seeded random weights for any config (see [`InitOptions`]), with the
    /// optional router skew applied. Matrices are drawn by the backend
    /// ([`ModelBackend::random_mat`], [`ModelBackend::random_experts`]): on the host by
    /// default (the CPU), on the device for CUDA, whose values differ from
    /// the CPU's. The skew is applied the same way on every backend.
    pub fn random(
        backend: B,
        config: MixtralConfig,
        opts: &InitOptions,
    ) -> Result<Self, ModelError> {
        Self::random_with_progress(backend, config, opts, &crate::progress::NoProgress)
    }

    /// [`Model::random`], ticking `progress` once per decoder layer drawn.
    pub fn random_with_progress(
        backend: B,
        config: MixtralConfig,
        opts: &InitOptions,
        progress: &dyn Progress,
    ) -> Result<Self, ModelError> {
        let all = 0..config.num_local_experts;
        Self::random_group(backend, config, opts, all, progress)
    }

    /// [`Model::random`] holding only experts `group` of every layer (an EP
    /// rank's group): each expert's weights are those of the whole model
    /// (drawn by name).
    pub fn random_group(
        backend: B,
        config: MixtralConfig,
        opts: &InitOptions,
        group: Range<usize>,
        progress: &dyn Progress,
    ) -> Result<Self, ModelError> {
        let mut source = RandomSource(opts.random_init());
        let mut model = Self::build(backend, config, group, &mut source, progress)?;
        model.apply_skew(opts.skew, opts.seed)?;
        Ok(model)
    }
}

/// An expert group must be a non-empty range inside `0..experts`.
fn check_group(group: &Range<usize>, experts: usize) -> Result<(), ModelError> {
    if group.is_empty() || group.end > experts {
        return Err(ModelError::ExpertGroup {
            start: group.start,
            end: group.end,
            experts,
        });
    }
    Ok(())
}

/// Where [`Model::build`] takes the weights from.
trait WeightSource<B: Backend> {
    fn mat(&mut self, be: &B, name: &str, shape: [usize; 2]) -> Result<B::Mat, ModelError>;
    fn vector(&mut self, be: &B, name: &str, len: usize) -> Result<B::Vector, ModelError>;
    /// Experts `first..first + shape.experts` of `layer`.
    fn experts(
        &mut self,
        be: &B,
        layer: usize,
        first: usize,
        shape: ExpertsShape,
    ) -> Result<B::Experts, ModelError>;
}

/// Host tensors by name and shape (a checkpoint, or a test's source); each
/// is checked against the shape it was asked for.
struct HostSource<F>(F);

impl<F: FnMut(&str, &[usize]) -> Result<HostTensor, ModelError>> HostSource<F> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = (self.0)(name, shape)?;
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
    }
}

impl<B: Backend, F: FnMut(&str, &[usize]) -> Result<HostTensor, ModelError>> WeightSource<B>
    for HostSource<F>
{
    fn mat(&mut self, be: &B, name: &str, shape: [usize; 2]) -> Result<B::Mat, ModelError> {
        Ok(be.mat(self.take(name, &shape)?)?)
    }
    fn vector(&mut self, be: &B, name: &str, len: usize) -> Result<B::Vector, ModelError> {
        Ok(be.vector(self.take(name, &[len])?)?)
    }
    fn experts(
        &mut self,
        be: &B,
        l: usize,
        first: usize,
        s: ExpertsShape,
    ) -> Result<B::Experts, ModelError> {
        let (h, i) = (s.hidden, s.intermediate);
        let mut host = Vec::with_capacity(s.experts);
        for j in first..first + s.experts {
            host.push(HostExpert {
                w1: CpuBackend.mat(self.take(&names::expert(l, j, "w1"), &[i, h])?)?,
                w2: CpuBackend.mat(self.take(&names::expert(l, j, "w2"), &[h, i])?)?,
                w3: CpuBackend.mat(self.take(&names::expert(l, j, "w3"), &[i, h])?)?,
            });
        }
        Ok(be.experts(host)?)
    }
}

/// Seeded random weights, drawn by the backend.
struct RandomSource(RandomInit);

impl<B: ModelBackend> WeightSource<B> for RandomSource {
    fn mat(&mut self, be: &B, name: &str, shape: [usize; 2]) -> Result<B::Mat, ModelError> {
        Ok(be.random_mat(name, shape, &self.0)?)
    }
    fn vector(&mut self, be: &B, name: &str, len: usize) -> Result<B::Vector, ModelError> {
        Ok(be.vector(crate::backend::random_host_tensor(name, &[len], &self.0))?)
    }
    fn experts(
        &mut self,
        be: &B,
        l: usize,
        first: usize,
        s: ExpertsShape,
    ) -> Result<B::Experts, ModelError> {
        Ok(be.random_experts(l, s, &|j, m| names::expert(l, first + j, m), &self.0)?)
    }
}
