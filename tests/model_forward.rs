//! The forward pass: the MoE block against a naive per-token reference,
//! every policy end to end, KV-cache decode vs prefill, batching, sliding
//! window, EP rank replay, and typed errors on bad input.

mod model_common;

use capmoe::backend::{Backend, CpuBackend};
use capmoe::ep::RankReplay;
use capmoe::model::{
    argmax, ForwardOptions, GenerateOptions, InitOptions, LogitsMode, Model, ModelError,
};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::{Rng, Skew};
use model_common::*;

fn naive_ffn(m: &Model<CpuBackend>, layer: usize, e: usize, x: &[f32]) -> Vec<f32> {
    let w = &m.layers()[layer].moe.experts[e];
    let (i, h) = (w.w1.shape()[0], w.w1.shape()[1]);
    let dot = |row: &[f32], v: &[f32]| row.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
    let a: Vec<f32> = (0..i)
        .map(|r| {
            let g = dot(&w.w1.data()[r * h..(r + 1) * h], x);
            let u = dot(&w.w3.data()[r * h..(r + 1) * h], x);
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    (0..h)
        .map(|r| dot(&w.w2.data()[r * i..(r + 1) * i], &a))
        .collect()
}

fn random_hidden(t: usize, h: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..t * h).map(|_| rng.normal() as f32).collect()
}

#[test]
fn moe_block_matches_naive_per_token_reference_under_every_policy() {
    let cfg = tiny();
    let m = random_model(cfg.clone(), 11);
    let be = CpuBackend;
    let (t, h) = (37, cfg.hidden_size);
    let x = random_hidden(t, h, 5);
    let xa = be.upload(&x, t, h).unwrap();
    let moe = &m.layers()[1].moe;
    for policy in Policy::all() {
        for gamma in [0.5, 1.0, 1.5] {
            let mut rc = RouterConfig::new(2, policy).with_ranks(2);
            if policy.has_capacity() {
                rc = rc.with_capacity_factor(gamma);
            }
            let out = moe.forward(&be, &xa, &rc).unwrap();
            for tok in 0..t {
                let xt = &x[tok * h..(tok + 1) * h];
                let mut want = vec![0.0f32; h];
                for a in out.plan.assignments(tok) {
                    let y = naive_ffn(&m, 1, a.expert as usize, xt);
                    for (w, y) in want.iter_mut().zip(y) {
                        *w += a.weight * y;
                    }
                }
                let got = &out.out.data[tok * h..(tok + 1) * h];
                let d = max_abs_diff(got, &want);
                assert!(d < 1e-5, "{policy} gamma {gamma} token {tok}: {d}");
                if out.plan.assignments(tok).len() == 0 {
                    assert!(
                        got.iter().all(|&v| v == 0.0),
                        "dropped token must pass through"
                    );
                }
            }
            if policy == Policy::None {
                break;
            }
        }
    }
}

#[test]
fn plain_topk_weights_are_mixtral_renormalised_softmax() {
    let cfg = tiny();
    let m = random_model(cfg.clone(), 12);
    let be = CpuBackend;
    let x = random_hidden(9, cfg.hidden_size, 6);
    let xa = be.upload(&x, 9, cfg.hidden_size).unwrap();
    let moe = &m.layers()[0].moe;
    let logits = moe.router_logits(&be, &xa).unwrap();
    let plan = moe.route(&be, &xa, &m.default_router()).unwrap();
    for t in 0..9 {
        let row = &logits[t * 4..(t + 1) * 4];
        let mx = row.iter().copied().fold(f32::MIN, f32::max);
        let p: Vec<f64> = row.iter().map(|&l| ((l - mx) as f64).exp()).collect();
        let mut idx: Vec<usize> = (0..4).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let s = p[idx[0]] + p[idx[1]];
        let a: Vec<_> = plan.assignments(t).collect();
        assert_eq!(a[0].expert as usize, idx[0]);
        assert_eq!(a[1].expert as usize, idx[1]);
        assert!((a[0].weight as f64 - p[idx[0]] / s).abs() < 1e-6);
    }
}

#[test]
fn decode_with_kv_cache_matches_prefill() {
    for window in [None, Some(3)] {
        let mut cfg = tiny();
        cfg.sliding_window = window;
        let m = random_model(cfg, 13);
        let ids = [3u32, 17, 99, 4, 56, 7, 21];
        let full = m.logits(&ids, &m.default_router()).unwrap();
        let opts = ForwardOptions::new(m.default_router());
        let (mut seqs, first) = m.prefill(&[&ids[..2]], &opts).unwrap();
        assert!(max_abs_diff(first.row(1).unwrap(), &full[1]) < 1e-5);
        for (p, &id) in ids.iter().enumerate().skip(2) {
            let step = m.forward(&mut [&mut seqs[0]], &[&[id]], &opts).unwrap();
            let d = max_abs_diff(step.row(0).unwrap(), &full[p]);
            assert!(d < 1e-5, "window {window:?} position {p}: {d}");
        }
        assert_eq!(seqs[0].ids(), &ids);
    }
}

#[test]
fn sliding_window_changes_only_late_positions() {
    let mut cfg = tiny();
    let ids = [3u32, 17, 99, 4, 56, 7, 21];
    let full = random_model(cfg.clone(), 14)
        .logits(&ids, &RouterConfig::new(2, Policy::None))
        .unwrap();
    cfg.sliding_window = Some(4);
    let win = random_model(cfg, 14)
        .logits(&ids, &RouterConfig::new(2, Policy::None))
        .unwrap();
    for p in 0..ids.len() {
        let d = max_abs_diff(&full[p], &win[p]);
        if p < 4 {
            assert!(d < 1e-6, "position {p} sees < window keys: {d}");
        } else {
            assert!(d > 1e-6, "position {p} must lose early keys");
        }
    }
}

#[test]
fn batched_prefill_matches_single_sequences_without_capacity() {
    let m = random_model(tiny(), 15);
    let a = [1u32, 2, 3, 4, 5];
    let b = [9u32, 8, 7];
    let opts = ForwardOptions::new(m.default_router());
    let (_, both) = m.prefill(&[&a, &b], &opts).unwrap();
    let la = m.logits(&a, &m.default_router()).unwrap();
    let lb = m.logits(&b, &m.default_router()).unwrap();
    for (r, want) in la.iter().chain(&lb).enumerate() {
        assert!(max_abs_diff(both.row(r).unwrap(), want) < 1e-5, "row {r}");
    }
    assert_eq!(both.spans, vec![0..5, 5..8]);
    assert_eq!(both.layers[0].plan.as_ref().unwrap().tokens(), 8);
    let last = m
        .prefill(&[&a, &b], &opts.clone().with_logits(LogitsMode::Last))
        .unwrap()
        .1;
    assert_eq!(last.rows, 2);
    assert!(max_abs_diff(last.row(1).unwrap(), &lb[2]) < 1e-5);
}

#[test]
fn every_policy_runs_end_to_end_and_records_plans() {
    let m = random_model(tiny(), 16);
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 % 128) as u32).collect();
    for policy in Policy::all() {
        let rc = router_at(policy, 0.75);
        let (_, out) = m.prefill(&[&ids], &ForwardOptions::new(rc)).unwrap();
        assert!(out.logits.iter().all(|v| v.is_finite()), "{policy}");
        assert_eq!(out.layers.len(), 2);
        for rec in &out.layers {
            let plan = rec.plan.as_ref().unwrap();
            if let Some(c) = plan.capacity() {
                assert_eq!(c.per_expert, 15); // ceil(0.75 * 40 * 2 / 4)
                if policy != Policy::ExpandLocal {
                    assert!(plan.stats().max_load <= 15, "{policy}");
                }
            }
        }
        let g = m
            .generate(
                &ids[..5],
                &GenerateOptions {
                    max_new_tokens: 3,
                    eos: vec![],
                    router: out_router(policy),
                },
            )
            .unwrap();
        assert_eq!(g.len(), 3);
    }
}

/// Without `keep_plans` the backend defers its plans (`MoeMode::Deferred`
/// and one `settle`): the same logits bit for bit, the same totals, no plan,
/// and EP replay, which needs the plan, is a typed error.
#[test]
fn forward_without_plans_gives_the_same_logits_and_totals() {
    let m = random_model(tiny(), 19);
    let ids: Vec<u32> = (0..40).map(|i| (i * 11 % 128) as u32).collect();
    for policy in Policy::all() {
        let rc = router_at(policy, 0.75);
        let kept = ForwardOptions::new(rc).with_moe_inputs(true);
        let (_, a) = m.prefill_ranks(&[&ids], &kept).unwrap();
        let (_, b) = m.prefill(&[&ids], &kept.clone().with_plans(false)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.logits), bits(&b.logits), "{policy}");
        assert_eq!(a.layers.len(), b.layers.len());
        for (l, (ra, rb)) in a.layers.iter().zip(&b.layers).enumerate() {
            let plan = ra.plan.as_ref().unwrap();
            assert_eq!(ra.totals, plan.totals(), "{policy} layer {l}");
            assert_eq!(ra.totals.load, plan.stats().load, "{policy} layer {l}");
            assert_eq!(
                ra.totals.dropped,
                plan.stats().dropped,
                "{policy} layer {l}"
            );
            assert_eq!(rb.totals, ra.totals, "{policy} layer {l}");
            assert!(rb.plan.is_none());
            assert!(matches!(
                m.rank_work(l, rb, 0, 2),
                Err(ModelError::NoPlan { layer }) if layer == l
            ));
        }
        // A decode step after a plan-less prefill matches one after a kept one.
        let (mut sa, _) = m.prefill(&[&ids[..7]], &kept).unwrap();
        let (mut sb, _) = m
            .prefill(&[&ids[..7]], &kept.clone().with_plans(false))
            .unwrap();
        let da = m.forward(&mut [&mut sa[0]], &[&[3]], &kept).unwrap();
        let db = m
            .forward(&mut [&mut sb[0]], &[&[3]], &kept.clone().with_plans(false))
            .unwrap();
        assert_eq!(bits(&da.logits), bits(&db.logits), "{policy} decode");
    }
}

fn out_router(policy: Policy) -> RouterConfig {
    router_at(policy, 1.5)
}

/// Top-2 over 2 ranks, at capacity factor `gamma` where the policy has one.
fn router_at(policy: Policy, gamma: f64) -> RouterConfig {
    let rc = RouterConfig::new(2, policy).with_ranks(2);
    if policy.has_capacity() {
        rc.with_capacity_factor(gamma)
    } else {
        rc
    }
}

#[test]
fn ep_rank_work_partitions_the_expert_ffn() {
    let m = random_model(tiny(), 17);
    let ids: Vec<u32> = (0..24).map(|i| (i * 5 % 128) as u32).collect();
    let opts = ForwardOptions::new(m.default_router()).with_moe_inputs(true);
    let (_, out) = m.prefill_ranks(&[&ids], &opts).unwrap();
    let rec = &out.layers[1];
    let all = m
        .run_rank_work(&m.rank_work(1, rec, 0, 1).unwrap())
        .unwrap();
    let mut parts = Vec::new();
    let mut served = 0;
    for r in 0..2 {
        let w = m.rank_work(1, rec, r, 2).unwrap();
        assert_eq!(w.experts, r * 2..r * 2 + 2);
        served += w.rows_served;
        parts.extend(m.run_rank_work(&w).unwrap().data);
    }
    assert_eq!(served, 48);
    assert!(max_abs_diff(&parts, &all.data) < 1e-6);
    assert!(matches!(
        m.rank_work(1, rec, 0, 3),
        Err(ModelError::Routing(_))
    ));
    let (_, plain) = m
        .prefill(&[&ids], &ForwardOptions::new(m.default_router()))
        .unwrap();
    assert!(matches!(
        m.rank_work(1, &plain.layers[1], 0, 1),
        Err(ModelError::NoMoeInput { .. })
    ));
    assert!(matches!(
        m.rank_work(5, rec, 0, 1),
        Err(ModelError::NoSuchLayer { .. })
    ));
}

#[test]
fn skew_biases_the_router_towards_one_expert_per_layer() {
    let cfg = tiny();
    let m = Model::random(
        CpuBackend,
        cfg,
        &InitOptions::new(18).with_skew(Skew::Ratio(1.8)),
    )
    .unwrap();
    let ids: Vec<u32> = (0..256).map(|i| (i * 13 % 128) as u32).collect();
    let (_, out) = m
        .prefill(
            &[&ids],
            &ForwardOptions::new(m.default_router()).with_logits(LogitsMode::Skip),
        )
        .unwrap();
    for (l, rec) in out.layers.iter().enumerate() {
        let s = rec.plan.as_ref().unwrap().stats();
        assert!(s.imbalance() > 1.4, "layer {l}: {}", s.imbalance());
        let busiest = (0..4).max_by_key(|&e| s.load[e]).unwrap();
        assert_eq!(busiest, l % 4, "layer {l} loads {:?}", s.load);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let m = random_model(tiny(), 19);
    let r = m.default_router();
    assert!(matches!(
        m.logits(&[1, 128], &r),
        Err(ModelError::TokenOutOfRange {
            id: 128,
            position: 1,
            vocab: 128,
            ..
        })
    ));
    assert!(matches!(m.logits(&[], &r), Err(ModelError::EmptyInput(_))));
    let opts = ForwardOptions::new(r.clone());
    assert!(matches!(
        m.prefill(&[], &opts),
        Err(ModelError::EmptyInput(_))
    ));
    let bad = RouterConfig::new(2, Policy::Drop(capmoe::routing::DropRank::Score));
    assert!(matches!(
        m.logits(&[1, 2], &bad),
        Err(ModelError::Backend(_))
    ));
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
    assert_eq!(argmax(&[]), None);
}

#[test]
fn batched_generation_matches_single_generation() {
    let m = random_model(tiny(), 20);
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[7, 8], &[100, 5, 6, 7, 9]];
    let opts = GenerateOptions {
        max_new_tokens: 5,
        eos: vec![],
        router: m.default_router(),
    };
    let batch = m.generate_batch(&prompts, &opts).unwrap();
    for (p, got) in prompts.iter().zip(&batch) {
        assert_eq!(got, &m.generate(p, &opts).unwrap());
    }
    // An eos stops only its own sequence.
    let eos = batch[1][1];
    let stop = m
        .generate_batch(
            &prompts,
            &GenerateOptions {
                eos: vec![eos],
                ..opts.clone()
            },
        )
        .unwrap();
    assert_eq!(stop[1], batch[1][..2].to_vec());
}

#[test]
fn long_prefill_crosses_query_blocks_like_token_by_token_decode() {
    for window in [None, Some(70)] {
        let mut cfg = tiny();
        cfg.sliding_window = window;
        let m = random_model(cfg, 21);
        let ids: Vec<u32> = (0..150).map(|i| (i * 37 % 128) as u32).collect();
        let (_, full) = m
            .prefill(&[&ids], &ForwardOptions::new(m.default_router()))
            .unwrap();
        let opts = ForwardOptions::new(m.default_router());
        let (mut seqs, _) = m.prefill(&[&ids[..1]], &opts).unwrap();
        for (p, &id) in ids.iter().enumerate().skip(1) {
            let step = m.forward(&mut [&mut seqs[0]], &[&[id]], &opts).unwrap();
            if p % 7 == 0 || p == 149 {
                let d = max_abs_diff(step.row(0).unwrap(), full.row(p).unwrap());
                assert!(d < 1e-5, "window {window:?} position {p}: {d}");
            }
        }
    }
}

#[test]
fn custom_sources_and_router_bias_are_checked() {
    use capmoe::backend::HostTensor;
    use capmoe::model::WeightError;
    let cfg = tiny();
    let r = Model::from_source(CpuBackend, cfg.clone(), |name, shape| {
        let n: usize = shape.iter().product();
        Ok(HostTensor::new(name, vec![n], vec![0.0; n]).unwrap())
    });
    assert!(matches!(
        r,
        Err(ModelError::Weights(WeightError::Shape { .. }))
    ));
    let mut m = random_model(cfg, 22);
    m.layers_mut()[0].moe.router_bias = Some(vec![]);
    assert!(matches!(
        m.logits(&[1, 2], &m.default_router()),
        Err(ModelError::Backend(_))
    ));
}

/// The eager decoder: each step is a forward pass of the pending tokens
/// (same logits' argmax as a hand-rolled loop), `retain` keeps sequences in
/// order, bad `retain` lists are typed errors, and `Model::decoder` refuses
/// more steps than the model has positions.
#[test]
fn eager_decoder_steps_retains_and_refuses() {
    use capmoe::model::{greedy_rows, EagerDecoder};
    let m = random_model(tiny(), 23);
    let r = m.default_router();
    let fo = ForwardOptions::new(r.clone()).with_logits(LogitsMode::Last);
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[7, 8], &[100, 5, 6, 7]];
    let (seqs, first) = m.prefill(&prompts, &fo).unwrap();
    let (mut hand, _) = m.prefill(&prompts, &fo).unwrap();
    let next = greedy_rows(&first).unwrap();
    let mut dec = m.decoder(seqs, next.clone(), 3, &r).unwrap();
    assert_eq!((dec.name(), dec.batch()), ("forward", 3));
    let mut want = next;
    for step in 0..3 {
        if step == 1 {
            dec.retain(&[0, 2]).unwrap();
            hand.remove(1);
            want = vec![want[0], want[2]];
        }
        let toks: Vec<[u32; 1]> = want.iter().map(|&t| [t]).collect();
        let tok_refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
        let mut refs: Vec<_> = hand.iter_mut().collect();
        let out = m.forward(&mut refs, &tok_refs, &fo).unwrap();
        want = greedy_rows(&out).unwrap();
        let totals = dec.step().unwrap();
        assert_eq!(dec.pending(), &want[..], "step {step}");
        let loads: Vec<u64> = totals[0].load.clone();
        assert_eq!(loads, out.layers[0].totals.load, "step {step}");
    }
    assert!(matches!(dec.retain(&[]), Err(ModelError::EmptyInput(_))));
    assert!(matches!(
        dec.retain(&[1, 0]),
        Err(ModelError::Mismatch { .. })
    ));
    assert!(matches!(dec.retain(&[2]), Err(ModelError::Mismatch { .. })));
    // Positions: a prompt near the end of the model's positions cannot take more steps.
    let max = m.config().max_position_embeddings;
    let (seqs, first) = m.prefill(&[&[1, 2]], &fo).unwrap();
    assert!(matches!(
        m.decoder(seqs, greedy_rows(&first).unwrap(), max, &r),
        Err(ModelError::Config(_))
    ));
    // Pending tokens must match the sequences.
    let (seqs, _) = m.prefill(&[&[1, 2]], &fo).unwrap();
    assert!(matches!(
        EagerDecoder::new(&m, seqs, vec![1, 2], &r),
        Err(ModelError::Mismatch { .. })
    ));
}
