//! The scheduler: continuous batching with a token budget per step, chunked prefill and a
//! decode batch, on a virtual clock.
//!
//! Each step admits the requests that have arrived (FCFS, at most `max_seqs` in flight),
//! gives every sequence that is decoding one token of the budget, then fills what is left
//! with prompt chunks (the oldest sequence first). The step's tokens go through
//! [`Model::forward`] together (one KV cache per sequence); a sequence whose prompt is done
//! emits its greedy next token at the end of the step. With `decode_capacity` off and a
//! capacity policy, a step holding both kinds runs two passes (prompt chunks under the
//! policy, decode tokens under `none`), and lasts their sum. A request generates exactly
//! its reference output's length (no early stop at eos), so every output is scored.

use super::ep::EpForward;
use super::error::{check_count, ServeError};
use super::request::Request;
use super::step::{Pass, RunTotals};
use super::timing::StepClock;
use super::{MAX_BATCH_TOKENS, MAX_SEQS};
use crate::backend::Backend;
use crate::model::{Model, Sequence};
use crate::online::{CapacityController, ControllerSpec, CostModel, LoadMonitor, MoeShape};
use crate::progress::Progress;
use crate::routing::{Placement, Policy};
use serde::Serialize;
use std::collections::VecDeque;

/// Latency objectives a request must meet to count towards goodput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slo {
    /// Time to first token, milliseconds.
    pub ttft_ms: f64,
    /// Time per output token after the first, milliseconds (a one-token request meets it).
    pub tpot_ms: f64,
}

/// How one run serves its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// The capacity policy.
    pub policy: Policy,
    /// What sets each step's capacity (required by a capacity policy, refused by `none`).
    pub controller: Option<ControllerSpec>,
    /// Whether decode tokens are capped too (the paper's code: no).
    pub decode_capacity: bool,
    /// EP ranks (divides the experts): placement of the modelled EP and the controller.
    pub ranks: usize,
    /// Tokens per step, decode and prompt chunks together (`1..=MAX_BATCH_TOKENS`).
    pub max_batch_tokens: usize,
    /// Sequences in flight at once (`1..=MAX_SEQS`).
    pub max_seqs: usize,
    /// Forwards the load monitor keeps per layer (at least 1).
    pub window: usize,
    /// Weight of the newest forward in the monitor's EMA, in (0, 1].
    pub ema: f64,
    /// How step durations are found.
    pub clock: StepClock,
}

/// One served request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Its index in the stream.
    pub id: usize,
    /// Index of its prompt in the pool.
    pub source: usize,
    /// Arrival, seconds on the virtual clock.
    pub arrival_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// When each output token was emitted (the end of its step).
    #[serde(skip)]
    pub token_s: Vec<f64>,
    /// The generated ids.
    pub output: Vec<u32>,
    /// Whether the output equals the reference exactly.
    pub correct: bool,
}

/// One scheduler step (for the load-over-time figure).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Start on the virtual clock, seconds.
    pub start_s: f64,
    /// Duration, seconds.
    pub duration_s: f64,
    /// Prompt tokens in the step.
    pub prefill_tokens: usize,
    /// Decode tokens in the step.
    pub decode_tokens: usize,
    /// Sequences in flight.
    pub running: usize,
    /// Requests arrived but not yet admitted.
    pub waiting: usize,
    /// Busiest rank's rows over the mean, averaged over layers and passes (1 = balanced).
    pub busiest_over_mean: f64,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct ServeRun {
    /// Every request, in stream order.
    pub requests: Vec<RequestRecord>,
    /// Every step, in order.
    pub steps: Vec<StepRecord>,
    /// Totals over the run (drops, gate mass, modelled times).
    pub totals: RunTotals,
}

struct Live<B: Backend> {
    req: usize,
    seq: Sequence<B>,
    prefilled: usize,
    out: Vec<u32>,
    times: Vec<f64>,
}

pub(super) fn check_options<B: Backend>(
    model: &Model<B>,
    o: &ServeOptions,
) -> Result<(), ServeError> {
    check_count("max batch tokens", o.max_batch_tokens, 1, MAX_BATCH_TOKENS)?;
    check_count("max sequences", o.max_seqs, 1, MAX_SEQS)?;
    let cfg = model.config();
    Placement::new(o.ranks, cfg.num_local_experts, 0)?;
    match (o.policy.has_capacity(), o.controller) {
        (true, None) => Err(ServeError::OutOfRange {
            what: "controller",
            value: "none".into(),
            expected: format!("a controller for the capacity policy {}", o.policy),
        }),
        (false, Some(c)) => Err(ServeError::OutOfRange {
            what: "controller",
            value: c.to_string(),
            expected: "no controller for `none` (it has no capacity)".into(),
        }),
        _ => Ok(()),
    }?;
    if let StepClock::Synthetic {
        per_forward_s,
        per_token_s,
    } = o.clock
    {
        for (what, v) in [
            ("synthetic seconds per forward", per_forward_s),
            ("synthetic seconds per token", per_token_s),
        ] {
            if !(v.is_finite() && v >= 0.0) || per_forward_s + per_token_s <= 0.0 {
                return Err(ServeError::OutOfRange {
                    what,
                    value: v.to_string(),
                    expected: "finite, >= 0, the two not both 0".into(),
                });
            }
        }
    }
    Ok(())
}

/// Serves `requests` (in arrival order) on `model` under `opts`, in this process; ticks
/// `progress` once per completed request. [`StepClock::MeasuredEp`] needs the ranks of
/// [`serve_ep`](super::serve_ep) and is refused here.
pub fn serve<B: Backend>(
    model: &Model<B>,
    requests: &[Request],
    opts: &ServeOptions,
    progress: &dyn Progress,
) -> Result<ServeRun, ServeError> {
    if opts.clock == StepClock::MeasuredEp {
        return Err(ServeError::OutOfRange {
            what: "clock",
            value: "MeasuredEp".into(),
            expected:
                "Measured or Synthetic in one process (MeasuredEp runs on EP ranks: serve_ep)"
                    .into(),
        });
    }
    serve_with(model, requests, opts, progress, None)
}

/// [`serve`], its forwards run across EP ranks when `ep` is given.
pub(super) fn serve_with<B: Backend>(
    model: &Model<B>,
    requests: &[Request],
    opts: &ServeOptions,
    progress: &dyn Progress,
    ep: Option<&dyn EpForward<B>>,
) -> Result<ServeRun, ServeError> {
    check_options(model, opts)?;
    if requests.is_empty() {
        return Err(ServeError::Empty("no requests to serve".into()));
    }
    let cfg = model.config();
    for r in requests {
        cfg.check_generation(r.prompt.len(), r.expected.len())
            .map_err(|e| ServeError::Model(Box::new(e.into())))?;
    }
    let shape = MoeShape {
        layers: cfg.num_hidden_layers,
        experts: cfg.num_local_experts,
        top_k: cfg.num_experts_per_tok,
        ranks: opts.ranks,
    };
    let mut monitor = LoadMonitor::new(opts.window, opts.ema)?;
    let mut controller: Option<Box<dyn CapacityController>> = match opts.controller {
        Some(c) => Some(c.build_for(shape, CostModel::rows(shape.layers), opts.policy)?),
        None => None,
    };
    let mut pass = Pass::new(model, opts, shape, ep)?;
    let mut done: Vec<Option<RequestRecord>> = vec![None; requests.len()];
    let (mut waiting, mut running) = (VecDeque::new(), Vec::<Live<B>>::new());
    let (mut next, mut now, mut completed) = (0usize, 0.0f64, 0usize);
    let mut steps = Vec::new();
    while completed < requests.len() {
        while next < requests.len() && requests[next].arrival_s <= now {
            waiting.push_back(next);
            next += 1;
        }
        if running.is_empty() && waiting.is_empty() {
            // Idle until the next arrival (there is one: nothing is in flight, not all done).
            match requests.get(next) {
                Some(r) => now = now.max(r.arrival_s),
                None => break,
            }
            continue;
        }
        while running.len() < opts.max_seqs {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            running.push(Live {
                req,
                seq: model.new_sequence(),
                prefilled: 0,
                out: Vec::new(),
                times: Vec::new(),
            });
        }
        // The step's tokens per sequence: decode first, then prompt chunks, oldest first.
        let mut budget = opts.max_batch_tokens;
        let mut feed: Vec<Option<(Vec<u32>, bool)>> = vec![None; running.len()];
        for (i, l) in running.iter().enumerate() {
            if budget > 0 && l.prefilled == requests[l.req].prompt.len() {
                feed[i] = l.out.last().map(|&t| (vec![t], true));
                budget -= 1;
            }
        }
        for (i, l) in running.iter().enumerate() {
            let p = &requests[l.req].prompt;
            if budget > 0 && l.prefilled < p.len() {
                let n = (p.len() - l.prefilled).min(budget);
                feed[i] = Some((p[l.prefilled..l.prefilled + n].to_vec(), false));
                budget -= n;
            }
        }
        let split = opts.policy.has_capacity() && !opts.decode_capacity;
        let groups: Vec<(bool, bool)> = if split {
            vec![(false, true), (true, false)] // (decode tokens?, capped?)
        } else {
            vec![(true, opts.policy.has_capacity())]
        };
        let mut emitted: Vec<(usize, u32)> = Vec::new();
        let (mut duration, mut busiest) = (0.0, Vec::new());
        for (decode, capped) in groups {
            let pick: Vec<usize> = (0..running.len())
                .filter(|&i| feed[i].as_ref().is_some_and(|f| !split || f.1 == decode))
                .collect();
            if pick.is_empty() {
                continue;
            }
            let toks: Vec<&[u32]> = pick
                .iter()
                .filter_map(|&i| feed[i].as_ref().map(|f| f.0.as_slice()))
                .collect();
            let is_decode: Vec<bool> = pick
                .iter()
                .map(|&i| feed[i].as_ref().is_some_and(|f| f.1))
                .collect();
            let mut seqs: Vec<&mut Sequence<B>> = running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| pick.contains(i))
                .map(|(_, l)| &mut l.seq)
                .collect();
            let ctl = if capped { controller.as_mut() } else { None };
            let r = pass.run(&mut seqs, &toks, &is_decode, ctl, &mut monitor)?;
            duration += r.duration_s;
            busiest.push(r.busiest_over_mean);
            for (j, &i) in pick.iter().enumerate() {
                let l = &mut running[i];
                if !is_decode[j] {
                    l.prefilled += toks[j].len();
                }
                if l.prefilled == requests[l.req].prompt.len() {
                    emitted.push((i, r.next[j]));
                }
            }
        }
        let end = now + duration;
        for (i, tok) in emitted {
            running[i].out.push(tok);
            running[i].times.push(end);
        }
        let (mut prefill_tokens, mut decode_tokens) = (0, 0);
        for (t, d) in feed.iter().flatten() {
            if *d {
                decode_tokens += t.len();
            } else {
                prefill_tokens += t.len();
            }
        }
        steps.push(StepRecord {
            start_s: now,
            duration_s: duration,
            prefill_tokens,
            decode_tokens,
            running: running.len(),
            waiting: waiting.len(),
            busiest_over_mean: busiest.iter().sum::<f64>() / busiest.len().max(1) as f64,
        });
        now = end;
        let mut i = 0;
        while i < running.len() {
            let l = &running[i];
            let r = &requests[l.req];
            if l.out.len() < r.expected.len() {
                i += 1;
                continue;
            }
            let l = running.remove(i);
            done[l.req] = Some(RequestRecord {
                id: l.req,
                source: r.source,
                arrival_s: r.arrival_s,
                prompt_tokens: r.prompt.len(),
                correct: l.out == r.expected,
                output: l.out,
                token_s: l.times,
            });
            completed += 1;
            progress.inc(1);
        }
    }
    Ok(ServeRun {
        requests: done.into_iter().flatten().collect(),
        steps,
        totals: pass.totals,
    })
}
