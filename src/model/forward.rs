//! The forward pass: batched prefill and decode over per-sequence KV caches.

use super::build::Model;
use super::ModelError;
use crate::backend::{Backend, BackendError, DeferredRoute, MoeOutput, MoeWeights};
use crate::routing::{PlanTotals, RouterConfig, RoutingPlan};
use std::any::Any;
use std::ops::Range;

/// What a [`MoeRunner`] keeps of one layer (EP rank replay: the layout and
/// the dispatched rows, or their device twins), opaque to the model.
pub type Kept = Box<dyn Any + Send + Sync>;

/// Runs the MoE layers of a forward pass in place of [`Backend::moe`]: EP
/// rank replay (`ep::EpBackend::moe_kept`, which keeps each layer's rows)
/// and the EP forward across ranks (`ep::dist::EpMoe`, which exchanges
/// them). The model stores what a runner keeps in [`LayerRecord::replay`]
/// without knowing its type.
pub trait MoeRunner<B: Backend> {
    /// MoE layer `layer` on its input `x` (post-attention-normed, every
    /// token of the batch): the layer's output and plan (those of
    /// [`Backend::moe`]), and what to keep, if anything.
    fn run_moe(
        &self,
        backend: &B,
        layer: usize,
        w: &MoeWeights<B>,
        x: &B::Act,
        router: &RouterConfig,
    ) -> Result<(MoeOutput<B>, Option<Kept>), BackendError>;
}

/// One sequence's state: its KV cache per layer and the ids it has seen.
pub struct Sequence<B: Backend> {
    pub(crate) caches: Vec<B::Kv>,
    pub(crate) ids: Vec<u32>,
}

impl<B: Backend> Sequence<B> {
    /// Positions seen so far (the next token's position).
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether the sequence has seen no token yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Every id the sequence has seen, prompt and generated.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every new position of every sequence.
    All,
    /// The last new position of each sequence (what generation needs).
    Last,
    /// None (e.g. to time the decoder layers alone).
    Skip,
}

/// How to run a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOptions {
    /// Routing of every MoE layer (policy, gamma, k, ranks).
    pub router: RouterConfig,
    /// Which positions get logits.
    pub logits: LogitsMode,
    /// Keep each layer's MoE input (the post-attention-normed hidden states)
    /// in the [`LayerRecord`], and (with [`ForwardOptions::keep_plans`]) what
    /// replaying one EP rank's expert work later needs
    /// ([`LayerRecord::replay`]).
    pub keep_moe_inputs: bool,
    /// Keep each layer's routing plan in its [`LayerRecord`] (the default).
    /// Without it a device backend keeps the plans on the device
    /// ([`crate::backend::MoeMode::Deferred`]): no host sync inside a layer, and one
    /// read-back per forward pass for the checks and the totals.
    pub keep_plans: bool,
    /// One router per MoE layer, overriding [`ForwardOptions::router`] (capacity planned per
    /// layer, e.g. by `online::CapacityController`); empty: `router` for every layer.
    pub layer_routers: Vec<RouterConfig>,
}

impl ForwardOptions {
    /// Logits at every position, no MoE inputs kept.
    pub fn new(router: RouterConfig) -> Self {
        Self {
            router,
            logits: LogitsMode::All,
            keep_moe_inputs: false,
            keep_plans: true,
            layer_routers: Vec::new(),
        }
    }
    /// Routes layer `l` under `routers[l]` (one per layer; see
    /// [`ForwardOptions::layer_routers`]).
    pub fn with_layer_routers(mut self, routers: Vec<RouterConfig>) -> Self {
        self.layer_routers = routers;
        self
    }
    /// The router of MoE layer `layer`.
    pub fn router_of(&self, layer: usize) -> &RouterConfig {
        self.layer_routers.get(layer).unwrap_or(&self.router)
    }
    /// Sets which positions get logits.
    pub fn with_logits(mut self, mode: LogitsMode) -> Self {
        self.logits = mode;
        self
    }
    /// Sets whether each layer's MoE input is kept in its [`LayerRecord`].
    pub fn with_moe_inputs(mut self, keep: bool) -> Self {
        self.keep_moe_inputs = keep;
        self
    }
    /// Sets whether each layer's routing plan is kept in its [`LayerRecord`]
    /// (see [`ForwardOptions::keep_plans`]).
    pub fn with_plans(mut self, keep: bool) -> Self {
        self.keep_plans = keep;
        self
    }
}

/// What one MoE layer did in a forward pass.
pub struct LayerRecord<B: Backend> {
    /// The routing plan (assignments, loads, drops, gate mass kept) over all
    /// tokens of the batch; `None` when the pass ran without
    /// [`ForwardOptions::keep_plans`].
    pub plan: Option<RoutingPlan>,
    /// The plan's loads, drops, reroutes and gate mass ([`PlanTotals`];
    /// always kept, also when the plan stays on the device).
    pub totals: PlanTotals,
    /// The layer's MoE input `[tokens, hidden]`, when asked for.
    pub moe_input: Option<B::Act>,
    /// What the pass's [`MoeRunner`] kept of the layer (EP rank replay; see
    /// [`Model::forward_with`]).
    pub replay: Option<Kept>,
}

/// The result of a forward pass.
pub struct ForwardOutput<B: Backend> {
    /// Row-major `[rows, vocab]`, f32.
    pub logits: Vec<f32>,
    /// Logit rows: every new token ([`LogitsMode::All`]), one per sequence (`Last`) or 0 (`Skip`).
    pub rows: usize,
    /// Vocabulary size (columns of `logits`).
    pub vocab: usize,
    /// Rows of the batch (all new tokens, concatenated) owned by each sequence.
    pub spans: Vec<Range<usize>>,
    /// One record per layer, in order.
    pub layers: Vec<LayerRecord<B>>,
}

impl<B: Backend> ForwardOutput<B> {
    /// Logit row `r` (`None` past the last row).
    pub fn row(&self, r: usize) -> Option<&[f32]> {
        self.logits.get(r * self.vocab..(r + 1) * self.vocab)
    }
}

/// What a decoder layer takes from the pass it is part of: RoPE at the new
/// rows' positions, attention over the caches, and the MoE layer. The eager
/// forward pass keeps positions and caches on the host side of the
/// [`Backend`] API; the CUDA decode graph keeps them on the device. Both run
/// the same layer body ([`Model::run_layer`]).
pub(crate) trait LayerIo<B: Backend> {
    /// RoPE in place on `x = [rows, heads * head_dim]`.
    fn rope(&mut self, model: &Model<B>, x: &mut B::Act, heads: usize) -> Result<(), ModelError>;
    /// Attention of layer `layer` (appending `k`, `v` to its caches).
    fn attend(
        &mut self,
        model: &Model<B>,
        layer: usize,
        q: &B::Act,
        k: &B::Act,
        v: &B::Act,
    ) -> Result<B::Act, ModelError>;
    /// The MoE layer `layer` on its input `h` (post-attention-normed).
    fn moe(&mut self, model: &Model<B>, layer: usize, h: B::Act) -> Result<B::Act, ModelError>;
}

impl<B: Backend> Model<B> {
    /// One decoder layer on the residual stream `x`: pre-norm attention,
    /// then pre-norm MoE, each added back.
    pub(crate) fn run_layer(
        &self,
        li: usize,
        x: &mut B::Act,
        io: &mut impl LayerIo<B>,
    ) -> Result<(), ModelError> {
        let (be, layer) = (&self.backend, &self.layers[li]);
        let eps = self.config.rms_norm_eps as f32;
        let geom = self.geom();
        let h = be.rms_norm(x, &layer.input_norm, eps)?;
        let mut q = be.linear(&h, &layer.q_proj)?;
        let mut k = be.linear(&h, &layer.k_proj)?;
        let v = be.linear(&h, &layer.v_proj)?;
        io.rope(self, &mut q, geom.heads)?;
        io.rope(self, &mut k, geom.kv_heads)?;
        let a = io.attend(self, li, &q, &k, &v)?;
        let o = be.linear(&a, &layer.o_proj)?;
        be.add_assign(x, &o)?;
        let h = be.rms_norm(x, &layer.post_norm, eps)?;
        let out = io.moe(self, li, h)?;
        be.add_assign(x, &out)?;
        Ok(())
    }
}

/// The forward pass's [`LayerIo`]: host positions and per-sequence caches
/// through the [`Backend`] API; each layer's plan, totals and input kept as
/// the options say.
struct EagerIo<'a, 's, B: Backend> {
    seqs: &'a mut [&'s mut Sequence<B>],
    positions: &'a [usize],
    spans: &'a [Range<usize>],
    opts: &'a ForwardOptions,
    runner: Option<&'a dyn MoeRunner<B>>,
    plans: Vec<Option<RoutingPlan>>,
    routes: Vec<DeferredRoute<B::DeviceRoute>>,
    inputs: Vec<Option<B::Act>>,
    replays: Vec<Option<Kept>>,
}

impl<B: Backend> LayerIo<B> for EagerIo<'_, '_, B> {
    fn rope(&mut self, model: &Model<B>, x: &mut B::Act, heads: usize) -> Result<(), ModelError> {
        Ok(model.backend.rope(x, heads, self.positions, &model.rope)?)
    }

    fn attend(
        &mut self,
        model: &Model<B>,
        layer: usize,
        q: &B::Act,
        k: &B::Act,
        v: &B::Act,
    ) -> Result<B::Act, ModelError> {
        let mut caches: Vec<&mut B::Kv> =
            self.seqs.iter_mut().map(|s| &mut s.caches[layer]).collect();
        Ok(model
            .backend
            .attention(q, k, v, &mut caches, self.spans, &model.geom())?)
    }

    fn moe(&mut self, model: &Model<B>, layer: usize, h: B::Act) -> Result<B::Act, ModelError> {
        let (be, router) = (&model.backend, self.opts.router_of(layer));
        let moe = &model.layers[layer].moe;
        let out = match self.runner {
            Some(runner) => {
                let (m, replay) = runner.run_moe(be, layer, moe, &h, router)?;
                self.routes.push(DeferredRoute::Host(m.plan.totals()));
                self.plans.push(self.opts.keep_plans.then_some(m.plan));
                self.replays.push(replay);
                m.out
            }
            None if self.opts.keep_plans => {
                let m = moe.forward(be, &h, router)?;
                self.routes.push(DeferredRoute::Host(m.plan.totals()));
                self.plans.push(Some(m.plan));
                self.replays.push(None);
                m.out
            }
            None => {
                let (out, route) = moe.forward_deferred(be, &h, router)?;
                self.routes.push(route);
                self.plans.push(None);
                self.replays.push(None);
                out
            }
        };
        self.inputs.push(self.opts.keep_moe_inputs.then_some(h));
        Ok(out)
    }
}

impl<B: Backend> Model<B> {
    /// A new, empty sequence.
    pub fn new_sequence(&self) -> Sequence<B> {
        let c = &self.config;
        Sequence {
            caches: (0..c.num_hidden_layers)
                .map(|_| self.backend.new_kv(c.num_key_value_heads, c.head_dim))
                .collect(),
            ids: Vec::new(),
        }
    }

    /// Runs `tokens[s]` through sequence `seqs[s]` for every `s` at once:
    /// attention per sequence over its cache, every other op (and the MoE
    /// routing, hence capacity) over all new tokens together.
    pub fn forward(
        &self,
        seqs: &mut [&mut Sequence<B>],
        tokens: &[&[u32]],
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput<B>, ModelError> {
        self.forward_with(seqs, tokens, opts, None)
    }

    /// [`Model::forward`], the MoE layers run by `runner` when one is given
    /// (what it keeps lands in [`LayerRecord::replay`]). A model that holds
    /// only an EP rank's experts needs a runner that brings in the others.
    pub fn forward_with(
        &self,
        seqs: &mut [&mut Sequence<B>],
        tokens: &[&[u32]],
        opts: &ForwardOptions,
        runner: Option<&dyn MoeRunner<B>>,
    ) -> Result<ForwardOutput<B>, ModelError> {
        let c = &self.config;
        let be = &self.backend;
        if runner.is_none() {
            self.check_all_experts()?;
        }
        if !opts.layer_routers.is_empty() && opts.layer_routers.len() != self.layers.len() {
            return Err(ModelError::Mismatch {
                what: "per-layer routers vs MoE layers",
                got: opts.layer_routers.len(),
                expected: self.layers.len(),
            });
        }
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput("no sequences"));
        }
        if seqs.len() != tokens.len() {
            return Err(ModelError::Mismatch {
                what: "sequences vs token lists",
                got: tokens.len(),
                expected: seqs.len(),
            });
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(tokens.len());
        for (s, (seq, toks)) in seqs.iter().zip(tokens).enumerate() {
            if toks.is_empty() {
                return Err(ModelError::EmptyInput("a sequence has no tokens"));
            }
            if seq.caches.len() != c.num_hidden_layers {
                return Err(ModelError::Mismatch {
                    what: "sequence cache layers",
                    got: seq.caches.len(),
                    expected: c.num_hidden_layers,
                });
            }
            for (p, &id) in toks.iter().enumerate() {
                if id as usize >= c.vocab_size {
                    return Err(ModelError::TokenOutOfRange {
                        sequence: s,
                        position: seq.len() + p,
                        id,
                        vocab: c.vocab_size,
                    });
                }
            }
            let start = ids.len();
            ids.extend_from_slice(toks);
            positions.extend(seq.len()..seq.len() + toks.len());
            spans.push(start..ids.len());
        }
        let eps = c.rms_norm_eps as f32;
        let mut x = be.embed(&self.embed, &ids)?;
        let n_layers = self.layers.len();
        let mut io = EagerIo {
            seqs,
            positions: &positions,
            spans: &spans,
            opts,
            runner,
            plans: Vec::with_capacity(n_layers),
            routes: Vec::with_capacity(n_layers),
            inputs: Vec::with_capacity(n_layers),
            replays: Vec::with_capacity(n_layers),
        };
        for li in 0..n_layers {
            self.run_layer(li, &mut x, &mut io)?;
        }
        let EagerIo {
            seqs,
            plans,
            routes,
            inputs,
            replays,
            ..
        } = io;
        for (seq, toks) in seqs.iter_mut().zip(tokens) {
            seq.ids.extend_from_slice(toks);
        }
        let rows: Vec<usize> = match opts.logits {
            LogitsMode::All => (0..ids.len()).collect(),
            LogitsMode::Last => spans.iter().map(|s| s.end - 1).collect(),
            LogitsMode::Skip => Vec::new(),
        };
        let logits = if rows.is_empty() {
            Vec::new()
        } else {
            let sel = if rows.len() == ids.len() {
                x
            } else {
                be.select_rows(&x, &rows)?
            };
            let n = be.rms_norm(&sel, &self.norm, eps)?;
            be.linear_to_host(&n, self.lm_head.as_ref().unwrap_or(&self.embed))?
        };
        // The deferred layers' checks first: a NaN router logit is the cause
        // of whatever the logits hold.
        let totals = be.settle(routes)?;
        if totals.len() != n_layers {
            return Err(ModelError::Mismatch {
                what: "layers settled by the backend",
                got: totals.len(),
                expected: n_layers,
            });
        }
        let records = plans
            .into_iter()
            .zip(totals)
            .zip(inputs.into_iter().zip(replays))
            .map(|((plan, totals), (moe_input, replay))| LayerRecord {
                plan,
                totals,
                moe_input,
                replay,
            })
            .collect();
        // Outputs never hold NaN or Inf: the first one is an error naming it.
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            let vocab = c.vocab_size.max(1);
            return Err(ModelError::NonFiniteOutput {
                row: i / vocab,
                column: i % vocab,
                value: logits[i],
            });
        }
        Ok(ForwardOutput {
            logits,
            rows: rows.len(),
            vocab: c.vocab_size,
            spans,
            layers: records,
        })
    }

    /// Prefills fresh sequences with `prompts` in one batch.
    pub fn prefill(
        &self,
        prompts: &[&[u32]],
        opts: &ForwardOptions,
    ) -> Result<(Vec<Sequence<B>>, ForwardOutput<B>), ModelError> {
        self.prefill_with(prompts, opts, None)
    }

    /// [`Model::prefill`] with a [`MoeRunner`] (see [`Model::forward_with`]).
    pub fn prefill_with(
        &self,
        prompts: &[&[u32]],
        opts: &ForwardOptions,
        runner: Option<&dyn MoeRunner<B>>,
    ) -> Result<(Vec<Sequence<B>>, ForwardOutput<B>), ModelError> {
        let mut seqs: Vec<Sequence<B>> = prompts.iter().map(|_| self.new_sequence()).collect();
        let out = {
            let mut refs: Vec<&mut Sequence<B>> = seqs.iter_mut().collect();
            self.forward_with(&mut refs, prompts, opts, runner)?
        };
        Ok((seqs, out))
    }

    /// Logits `[ids.len(), vocab]` of one prompt, one row per position.
    pub fn logits(&self, ids: &[u32], router: &RouterConfig) -> Result<Vec<Vec<f32>>, ModelError> {
        self.logits_with(ids, router, None)
    }

    /// [`Model::logits`] with a [`MoeRunner`] (see [`Model::forward_with`]).
    pub fn logits_with(
        &self,
        ids: &[u32],
        router: &RouterConfig,
        runner: Option<&dyn MoeRunner<B>>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let (_, out) = self.prefill_with(&[ids], &ForwardOptions::new(router.clone()), runner)?;
        Ok(out.logits.chunks(out.vocab).map(<[f32]>::to_vec).collect())
    }
}
