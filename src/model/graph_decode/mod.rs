//! The CUDA backend's [`Decoder`] (the model's side: it knows the layer
//! body and drives the backend's crate-internal CUDA pieces): one decode step of the whole batch,
//! every layer (attention with the KV-cache append, the MoE layer routed on
//! the device with capacity over the decode batch) and the greedy pick,
//! captured once per batch size as one CUDA graph and replayed.
//!
//! A graph replays the same launches on the same buffers, so everything a
//! step changes lives on the device: the ids fed next and the positions
//! (advanced by the greedy kernel inside the graph), and a static KV cache
//! per layer, `[batch * max_positions, kv_heads * head_dim]`, sized once for
//! the most positions the decoder will reach. The step's temporaries are
//! stream-ordered allocations inside the graph (memory nodes). After each
//! replay the host reads one record: each row's non-finite check, the
//! tokens picked and every layer's plan ledger (checks and totals, as
//! [`crate::cuda::settle`] reads them). That download is the step's only
//! host sync; there is none inside the graph.
//!
//! `reroute:optimal` routes on the host, so its steps cannot be captured:
//! [`super::ModelBackend::decoder`] gives it the eager decoder, as it does when no step
//! will run, or when the backend was not made with
//! [`CudaBackend::with_decode_graphs`] (which needs a context with capture
//! rights: see [`crate::cuda::GpuContext`]).

mod io;
mod state;

use super::decode::{check_keep, check_pending};
use super::{Decoder, EagerDecoder, Model, ModelError, Sequence};
use crate::backend::cuda::{blas, CudaBackend};
use crate::backend::{Backend, BackendError};
use crate::cuda::capture::Graph;
use crate::cuda::model::ops;
use crate::cuda::{GpuError, LedgerLayout};
use crate::routing::{PlanTotals, RouterConfig};
use cudarc::driver::CudaSlice;
use io::GraphIo;
use state::DecodeState;

/// Greedy decode steps as graph replays (see the module doc).
struct GraphDecoder<'m> {
    model: &'m Model<CudaBackend>,
    router: RouterConfig,
    max_positions: usize,
    inv_freq: CudaSlice<f32>,
    // Dropped before `state`: the graph holds raw pointers into it.
    graph: Option<Graph>,
    layout: Option<LedgerLayout>,
    state: DecodeState,
    pending: Vec<u32>,
    lens: Vec<usize>,
}

fn too_large(what: &'static str, value: usize) -> ModelError {
    ModelError::Backend(GpuError::TooLarge { what, value }.into())
}

impl<'m> GraphDecoder<'m> {
    /// Copies each sequence's cache into a static one sized for `steps`
    /// more positions, then captures the step. `Model::decoder` checked the
    /// positions; `seqs` and `pending` agree in length.
    fn new(
        model: &'m Model<CudaBackend>,
        seqs: Vec<Sequence<CudaBackend>>,
        pending: Vec<u32>,
        steps: usize,
        router: &RouterConfig,
    ) -> Result<Self, ModelError> {
        if seqs.is_empty() {
            return Err(ModelError::EmptyInput("no sequences to decode"));
        }
        check_pending(seqs.len(), &pending)?;
        let vocab = model.config.vocab_size;
        if let Some((s, &id)) = pending
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab)
        {
            return Err(ModelError::TokenOutOfRange {
                sequence: s,
                position: seqs[s].len(),
                id,
                vocab,
            });
        }
        let lens: Vec<usize> = seqs.iter().map(Sequence::len).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let max_positions = longest
            .checked_add(steps)
            .ok_or_else(|| too_large("decode positions", steps))?
            .max(1);
        let be = model.backend();
        let inv_freq = be.gpu.stream().clone_htod(&model.rope.inv_freq)?;
        let mut state = DecodeState::alloc(model, seqs.len(), max_positions)?;
        let width = model.config.num_key_value_heads * model.config.head_dim;
        let c = &model.config;
        for (b, seq) in seqs.iter().enumerate() {
            if seq.caches.len() != c.num_hidden_layers {
                return Err(ModelError::Mismatch {
                    what: "sequence cache layers",
                    got: seq.caches.len(),
                    expected: c.num_hidden_layers,
                });
            }
            for (li, kv) in seq.caches.iter().enumerate() {
                if (kv.kv_heads, kv.head_dim) != (c.num_key_value_heads, c.head_dim) {
                    return Err(ModelError::Mismatch {
                        what: "cache kv_heads * head_dim (a sequence of another model?)",
                        got: kv.kv_heads * kv.head_dim,
                        expected: width,
                    });
                }
                if kv.len != seq.len() {
                    return Err(ModelError::Mismatch {
                        what: "cached positions vs the sequence's length",
                        got: kv.len,
                        expected: seq.len(),
                    });
                }
                if kv.len == 0 {
                    continue;
                }
                let (Some(k), Some(v)) = (kv.k.as_ref(), kv.v.as_ref()) else {
                    return Err(ModelError::Mismatch {
                        what: "cached positions without a cache buffer",
                        got: kv.len,
                        expected: 0,
                    });
                };
                state.copy_in(
                    model,
                    li,
                    b * max_positions * width,
                    (k, v),
                    0,
                    kv.len * width,
                )?;
            }
        }
        state.upload(model, &pending, &lens)?;
        drop(seqs);
        let mut dec = Self {
            model,
            router: router.clone(),
            max_positions,
            inv_freq,
            graph: None,
            layout: None,
            state,
            pending,
            lens,
        };
        dec.capture()?;
        Ok(dec)
    }

    /// Runs the step once eagerly without the advance (first-call set-up
    /// such as the expert GEMMs' tuning happens outside the graph; what it
    /// writes, the next replay writes again), then captures it with the
    /// advance.
    fn capture(&mut self) -> Result<(), ModelError> {
        self.graph = None;
        let be = self.model.backend();
        let st = be.gpu.stream().clone();
        drop(self.enqueue_step(false)?);
        st.synchronize()?;
        // The backend was made with decode graphs, so its context has
        // capture rights (`with_decode_graphs` checked).
        let (layout, graph) =
            crate::cuda::capture::capture(&be.gpu, "captured decode step", || {
                self.enqueue_step(true)
            })?;
        self.graph = Some(graph);
        self.layout = Some(layout);
        Ok(())
    }

    /// Enqueues one step on the device state; `advance` adds the ids and
    /// positions update. Returns the ledger layout of its plans (their
    /// words are copied into the record).
    fn enqueue_step(&mut self, advance: bool) -> Result<LedgerLayout, ModelError> {
        let model = self.model;
        let be = model.backend();
        let st = be.gpu.stream();
        let batch = self.state.batch;
        let mut x = be.embed_device(&model.embed, &self.state.ids, batch)?;
        let mut io = GraphIo {
            state: &mut self.state,
            inv_freq: &self.inv_freq,
            max_positions: self.max_positions,
            router: &self.router,
            summaries: Vec::with_capacity(model.layers.len()),
        };
        for li in 0..model.layers.len() {
            model.run_layer(li, &mut x, &mut io)?;
        }
        let summaries = io.summaries;
        let n = be.rms_norm(&x, &model.norm, model.config.rms_norm_eps as f32)?;
        drop(x);
        let head = model.lm_head.as_ref().unwrap_or(&model.embed);
        let logits = blas::linear::<f32>(&be.blas, &n, head)?;
        let layout = LedgerLayout::of(&summaries)?;
        let state = &mut self.state;
        let advance = advance.then_some((&mut state.ids, &mut state.positions));
        ops::greedy_into(st, &logits, (batch, head.out), &mut state.record, advance)?;
        let mut ledger = state.record.slice_mut(3 * batch..);
        layout.gather(st, &summaries, &mut ledger)?;
        Ok(layout)
    }
}

impl Decoder for GraphDecoder<'_> {
    fn name(&self) -> &'static str {
        "cuda-graph"
    }

    fn batch(&self) -> usize {
        self.state.batch
    }

    fn pending(&self) -> &[u32] {
        &self.pending
    }

    fn step(&mut self) -> Result<Vec<PlanTotals>, ModelError> {
        if let Some(&len) = self.lens.iter().find(|&&l| l >= self.max_positions) {
            return Err(ModelError::Mismatch {
                what: "decode position (the static KV cache is full: more steps than the decoder was made for)",
                got: len,
                expected: self.max_positions,
            });
        }
        let (Some(graph), Some(layout)) = (&self.graph, &self.layout) else {
            return Err(ModelError::EmptyInput("no captured decode step"));
        };
        let st = self.model.backend().gpu.stream();
        graph.launch()?;
        let host = st.clone_dtoh(&self.state.record)?;
        let batch = self.state.batch;
        // The layers' checks first, as the forward pass orders them.
        let mut totals = Vec::with_capacity(self.model.layers.len());
        for (layer, t) in layout.read(&host[3 * batch..]).into_iter().enumerate() {
            totals.push(t.map_err(|e| {
                ModelError::Backend(BackendError::Layer {
                    layer,
                    source: Box::new(e.into()),
                })
            })?);
        }
        for row in 0..batch {
            let nf = u64::from(host[2 * row]) | (u64::from(host[2 * row + 1]) << 32);
            if nf != 0 {
                let rec = !nf;
                return Err(ModelError::NonFiniteOutput {
                    row,
                    column: (rec >> 32) as usize,
                    value: f32::from_bits(rec as u32),
                });
            }
        }
        self.pending = host[2 * batch..3 * batch].to_vec();
        for l in &mut self.lens {
            *l += 1;
        }
        Ok(totals)
    }

    /// A new state for the kept sequences (their static cache rows copied
    /// on the device), and the step captured again for the new batch size.
    fn retain(&mut self, keep: &[usize]) -> Result<(), ModelError> {
        check_keep(keep, self.state.batch)?;
        if keep.len() == self.state.batch {
            return Ok(());
        }
        let mp = self.max_positions;
        let mut next = DecodeState::alloc(self.model, keep.len(), mp)?;
        let c = &self.model.config;
        let width = c.num_key_value_heads * c.head_dim;
        for (i, &b) in keep.iter().enumerate() {
            let old = &self.state;
            for li in 0..c.num_hidden_layers {
                next.copy_in(
                    self.model,
                    li,
                    i * mp * width,
                    (&old.k[li], &old.v[li]),
                    b * mp * width,
                    self.lens[b] * width,
                )?;
            }
        }
        self.pending = keep.iter().map(|&b| self.pending[b]).collect();
        self.lens = keep.iter().map(|&b| self.lens[b]).collect();
        next.upload(self.model, &self.pending, &self.lens)?;
        self.graph = None;
        self.state = next;
        self.capture()
    }
}

/// The CUDA backend's decoder: graph replays, or the eager decoder where a
/// graph cannot be captured.
pub(super) fn decoder<'m>(
    model: &'m Model<CudaBackend>,
    seqs: Vec<Sequence<CudaBackend>>,
    pending: Vec<u32>,
    steps: usize,
    router: &RouterConfig,
) -> Result<Box<dyn Decoder + 'm>, ModelError> {
    // No graph when it could not be captured soundly (not opted in), when
    // the policy routes on the host, or when no step will run.
    if !model.backend().decode_graphs
        || router.policy == crate::routing::Policy::RerouteOptimal
        || steps == 0
    {
        return Ok(Box::new(EagerDecoder::new(model, seqs, pending, router)?));
    }
    Ok(Box::new(GraphDecoder::new(
        model, seqs, pending, steps, router,
    )?))
}
