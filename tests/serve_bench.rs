//! The serving benchmark's scheduler on a small random model: every request is served once,
//! `none` serves exactly what greedy `generate` does, capacity runs report sane numbers,
//! and hostile options are typed errors. No timing is asserted (the synthetic clock is used
//! where determinism matters).

use capmoe::backend::CpuBackend;
use capmoe::model::{GenerateOptions, InitOptions, MixtralConfig, Model};
use capmoe::online::ControllerSpec;
use capmoe::progress::NoProgress;
use capmoe::routing::{DropRank, Policy};
use capmoe::serve::{
    arrival_times, requests, serve, summarize, ArrivalProcess, Request, ServeError, ServeOptions,
    Slo, StepClock, Workload,
};

fn model() -> Model<CpuBackend> {
    Model::random(
        CpuBackend,
        MixtralConfig::builtin("tiny").unwrap(),
        &InitOptions::new(5),
    )
    .unwrap()
}

/// `n` prompts of 1..=13 tokens, outputs of 1..=6 tokens (arbitrary references).
fn pool(n: usize) -> Vec<Workload> {
    (0..n)
        .map(|i| Workload {
            prompt: (0..1 + (i * 5) % 13)
                .map(|j| ((i * 31 + j * 7) % 128) as u32)
                .collect(),
            expected: (0..1 + (i * 3) % 6)
                .map(|j| ((i + j) % 128) as u32)
                .collect(),
        })
        .collect()
}

fn stream(n: usize, pool: &[Workload], rate: f64) -> Vec<Request> {
    let t = arrival_times(n, rate, ArrivalProcess::Poisson, 9).unwrap();
    let a: Vec<(f64, usize)> = t
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i % pool.len()))
        .collect();
    requests(&a, pool).unwrap()
}

fn opts(policy: Policy, controller: Option<&str>, decode_capacity: bool) -> ServeOptions {
    ServeOptions {
        policy,
        controller: controller.map(|c| c.parse::<ControllerSpec>().unwrap()),
        decode_capacity,
        ranks: 2,
        max_batch_tokens: 7,
        max_seqs: 5,
        window: 4,
        ema: 0.25,
        clock: StepClock::Synthetic {
            per_forward_s: 0.004,
            per_token_s: 0.001,
        },
    }
}

const SLO: Slo = Slo {
    ttft_ms: 50.0,
    tpot_ms: 10.0,
};

#[test]
fn none_serves_every_request_once_with_greedy_generations() {
    let m = model();
    let pool = pool(9);
    let reqs = stream(30, &pool, 400.0); // arrivals faster than service: queues, chunks, mixes
    for clock in [
        StepClock::Synthetic {
            per_forward_s: 0.004,
            per_token_s: 0.001,
        },
        StepClock::Measured { a2a: None },
    ] {
        let o = ServeOptions {
            clock,
            ..opts(Policy::None, None, false)
        };
        let run = serve(&m, &reqs, &o, &NoProgress).unwrap();
        assert_eq!(run.requests.len(), reqs.len());
        for (i, (rec, req)) in run.requests.iter().zip(&reqs).enumerate() {
            assert_eq!(rec.id, i, "served exactly once, in stream order");
            assert_eq!(rec.output.len(), req.expected.len());
            assert_eq!(rec.token_s.len(), req.expected.len());
            assert!(rec.token_s[0] > rec.arrival_s);
            let want = m
                .generate(
                    &req.prompt,
                    &GenerateOptions {
                        max_new_tokens: req.expected.len(),
                        eos: vec![],
                        router: m.default_router(),
                    },
                )
                .unwrap();
            assert_eq!(rec.output, want, "request {i}");
            assert_eq!(rec.correct, want == req.expected);
        }
        // The schedule really batched: some step mixed prompt chunks with decode tokens,
        // and no step went over the token budget.
        assert!(run
            .steps
            .iter()
            .any(|s| s.prefill_tokens > 0 && s.decode_tokens > 0));
        assert!(run
            .steps
            .iter()
            .all(|s| s.prefill_tokens + s.decode_tokens <= 7 && s.running <= 5));
        let r = summarize(&run, "none", None, None, SLO);
        assert_eq!(r.completed, 30);
        assert_eq!((r.drop_rate, r.gate_mass_kept), (0.0, 1.0));
    }
}

#[test]
fn references_equal_to_greedy_outputs_score_as_correct() {
    let m = model();
    let mut pool = pool(4);
    for w in &mut pool[..2] {
        w.expected = m
            .generate(
                &w.prompt,
                &GenerateOptions {
                    max_new_tokens: w.expected.len(),
                    eos: vec![],
                    router: m.default_router(),
                },
            )
            .unwrap();
    }
    let reqs = stream(8, &pool, 50.0);
    let run = serve(&m, &reqs, &opts(Policy::None, None, false), &NoProgress).unwrap();
    for rec in &run.requests {
        assert!(rec.correct || rec.source >= 2, "request {}", rec.id);
    }
    let r = summarize(&run, "none", None, None, SLO);
    assert!(r.correct >= 4 && r.accuracy >= 0.5);
}

#[test]
fn capacity_runs_report_sane_numbers_and_are_deterministic_on_the_synthetic_clock() {
    let m = model();
    let pool = pool(7);
    let reqs = stream(24, &pool, 300.0);
    let score = Policy::Drop(DropRank::Score);
    for ctl in ["fixed:1.0", "budget:1.2x", "fixed:0.5"] {
        for decode in [false, true] {
            let o = opts(score, Some(ctl), decode);
            let run = serve(&m, &reqs, &o, &NoProgress).unwrap();
            let again = serve(&m, &reqs, &o, &NoProgress).unwrap();
            assert_eq!(run.requests, again.requests);
            assert_eq!(run.steps, again.steps);
            let ids: Vec<usize> = run.requests.iter().map(|r| r.id).collect();
            assert_eq!(ids, (0..24).collect::<Vec<_>>());
            let r = summarize(&run, "drop:score", Some(ctl.into()), Some(decode), SLO);
            for p in [r.ttft_ms, r.tpot_ms, r.itl_ms, r.e2e_ms] {
                assert!(p.p50 <= p.p90 && p.p90 <= p.p99, "{ctl}: {p:?}");
                assert!(p.p99.is_finite() && p.p50 >= 0.0);
            }
            assert!((0.0..=1.0).contains(&r.drop_rate), "{}", r.drop_rate);
            assert!((0.0..=1.0).contains(&r.gate_mass_kept));
            assert!(r.mean_rank_utilisation > 0.0 && r.mean_rank_utilisation <= 1.0);
            assert!(r.throughput_req_s > 0.0 && r.output_tok_s >= r.throughput_req_s);
            assert!(r.goodput_req_s <= r.throughput_req_s + 1e-12);
            assert!(r.mean_effective_gamma.is_some_and(|g| g > 0.0));
            if !decode {
                assert_eq!(
                    r.decode_drop_rate, 0.0,
                    "{ctl}: decode is never capped when off"
                );
            }
            // No NaN or Inf anywhere (serde_json writes them as null).
            let json = serde_json::to_string(&r).unwrap();
            assert!(!json.contains("null"), "{json}");
        }
    }
    // At gamma 0.5 capacity must bind somewhere on this skew-free model's small batches.
    let run = serve(
        &m,
        &reqs,
        &opts(score, Some("fixed:0.5"), true),
        &NoProgress,
    )
    .unwrap();
    let r = summarize(&run, "drop:score", None, None, SLO);
    assert!(r.drop_rate > 0.0 && r.decode_drop_rate > 0.0 && r.gate_mass_kept < 1.0);
}

#[test]
fn hostile_options_are_typed_errors() {
    let m = model();
    let pool = pool(3);
    let reqs = stream(3, &pool, 10.0);
    let score = Policy::Drop(DropRank::Score);
    let base = opts(score, Some("fixed:1.0"), false);
    let cases = [
        ServeOptions {
            window: 0,
            ..base.clone()
        },
        ServeOptions {
            ema: 0.0,
            ..base.clone()
        },
        ServeOptions {
            max_batch_tokens: 0,
            ..base.clone()
        },
        ServeOptions {
            max_batch_tokens: (1 << 16) + 1,
            ..base.clone()
        },
        ServeOptions {
            max_seqs: 0,
            ..base.clone()
        },
        ServeOptions {
            ranks: 3,
            ..base.clone()
        },
        ServeOptions {
            ranks: 0,
            ..base.clone()
        },
        ServeOptions {
            controller: None,
            ..base.clone()
        },
        opts(Policy::None, Some("fixed:1.0"), false),
        ServeOptions {
            clock: StepClock::Synthetic {
                per_forward_s: f64::NAN,
                per_token_s: 0.0,
            },
            ..base.clone()
        },
        ServeOptions {
            clock: StepClock::Synthetic {
                per_forward_s: 0.0,
                per_token_s: 0.0,
            },
            ..base.clone()
        },
    ];
    for (i, o) in cases.iter().enumerate() {
        let e = serve(&m, &reqs, o, &NoProgress);
        assert!(e.is_err(), "case {i} was accepted");
    }
    assert!(matches!(
        serve(
            &m,
            &reqs,
            &ServeOptions {
                window: 0,
                ..base.clone()
            },
            &NoProgress
        ),
        Err(ServeError::Online(_))
    ));
    assert!(matches!(
        serve(&m, &[], &base, &NoProgress),
        Err(ServeError::Empty(_))
    ));
    // A token past the vocabulary, and a prompt past the model's positions.
    let bad_tok = [Workload {
        prompt: vec![128],
        expected: vec![1],
    }];
    let r = requests(&[(0.0, 0)], &bad_tok).unwrap();
    assert!(matches!(
        serve(&m, &r, &base, &NoProgress),
        Err(ServeError::Model(_))
    ));
    let long = [Workload {
        prompt: vec![1; 32768],
        expected: vec![1, 2],
    }];
    let r = requests(&[(0.0, 0)], &long).unwrap();
    assert!(matches!(
        serve(&m, &r, &base, &NoProgress),
        Err(ServeError::Model(_))
    ));
    // A budget below what capacity 1 costs.
    let tight = opts(score, Some("budget:0.01x"), true);
    assert!(matches!(
        serve(&m, &reqs, &tight, &NoProgress),
        Err(ServeError::Online(_))
    ));
}
