//! Serving on real EP ranks ([`serve_ep`]) serves exactly what one process serves, on the
//! measured clock, and refuses what it cannot run.

use super::*;
use crate::backend::CpuBackend;
use crate::ep::comm::{run_local, Communicator};
use crate::model::{InitOptions, MixtralConfig, Model};
use crate::online::ControllerSpec;
use crate::progress::NoProgress;
use crate::routing::{DropRank, Policy};
use std::time::Duration;

fn cfg() -> MixtralConfig {
    MixtralConfig::builtin("tiny").unwrap()
}

/// Prompts of 1..=13 tokens, outputs of 1..=6 (arbitrary references).
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

fn opts(policy: Policy, controller: Option<&str>, decode: bool, clock: StepClock) -> ServeOptions {
    ServeOptions {
        policy,
        controller: controller.map(|c| c.parse::<ControllerSpec>().unwrap()),
        decode_capacity: decode,
        ranks: 2,
        max_batch_tokens: 7,
        max_seqs: 4,
        window: 4,
        ema: 0.25,
        clock,
    }
}

const SYNTHETIC: StepClock = StepClock::Synthetic {
    per_forward_s: 0.004,
    per_token_s: 0.001,
};

#[test]
fn two_ep_ranks_serve_what_one_process_serves_on_the_measured_clock() {
    let init = InitOptions::new(5);
    let whole = Model::random(CpuBackend, cfg(), &init).unwrap();
    let pool = pool(7);
    // Every request arrives at 0: the batches then do not depend on how long steps take, so
    // the measured run must route exactly the batches of the synthetic one.
    let arrivals: Vec<(f64, usize)> = (0..10).map(|i| (0.0, i % pool.len())).collect();
    let reqs = requests(&arrivals, &pool).unwrap();
    let cases = [
        (Policy::None, None, false),
        (Policy::Drop(DropRank::Score), Some("fixed:1.0"), false),
        (Policy::Drop(DropRank::Score), Some("budget:1.2x"), true),
        (Policy::ExpandLocal, Some("fixed:1.0"), true),
        (Policy::RerouteNextBest, Some("fixed:1.0"), true),
    ];
    for (policy, ctl, decode) in cases {
        let want = serve(
            &whole,
            &reqs,
            &opts(policy, ctl, decode, SYNTHETIC),
            &NoProgress,
        )
        .unwrap();
        let o = opts(policy, ctl, decode, StepClock::MeasuredEp);
        let got = run_local(2, Duration::from_secs(120), |comm| {
            let group = crate::ep::dist::expert_group(2, comm.rank(), 4)?;
            let mine = Model::random_group(CpuBackend, cfg(), &init, group, &NoProgress)?;
            serve_ep(comm, &mine, &reqs, &o, &NoProgress)
        });
        let runs: Vec<ServeRun> = got.into_iter().map(|r| r.unwrap()).collect();
        let what = format!("{policy} {ctl:?} decode {decode}");
        for run in &runs {
            assert_eq!(run.requests.len(), want.requests.len(), "{what}");
            for (a, b) in run.requests.iter().zip(&want.requests) {
                assert_eq!(
                    (a.id, &a.output, a.correct),
                    (b.id, &b.output, b.correct),
                    "{what}"
                );
            }
            let (t, w) = (&run.totals, &want.totals);
            assert_eq!(
                (t.forwards, t.capacity_forwards, t.slots, t.dropped),
                (w.forwards, w.capacity_forwards, w.slots, w.dropped),
                "{what}"
            );
            assert_eq!(
                (t.decode_slots, t.decode_dropped),
                (w.decode_slots, w.decode_dropped)
            );
            assert_eq!(t.served_mass.to_bits(), w.served_mass.to_bits(), "{what}");
            assert_eq!(t.topk_mass.to_bits(), w.topk_mass.to_bits(), "{what}");
            assert_eq!(t.gamma_sum.to_bits(), w.gamma_sum.to_bits(), "{what}");
            let shape = |r: &ServeRun| -> Vec<(usize, usize, usize)> {
                r.steps
                    .iter()
                    .map(|s| (s.prefill_tokens, s.decode_tokens, s.running))
                    .collect()
            };
            assert_eq!(shape(run), shape(&want), "{what}: the same batches");
            // The measured clock: every rank busy, waits recorded, nothing modelled.
            assert!(t.measured_ep && t.a2a_s == 0.0, "{what}");
            assert_eq!((t.rank_busy_s.len(), t.rank_wait_s.len()), (2, 2));
            assert!(t.rank_busy_s.iter().all(|&b| b > 0.0), "{what}: {t:?}");
            assert!(t.rank_wait_s.iter().all(|&b| b >= 0.0), "{what}: {t:?}");
            assert!(
                t.clock_s > 0.0 && t.moe_s > 0.0 && t.moe_s <= t.wall_s,
                "{what}"
            );
            let r = summarize(
                run,
                &policy.to_string(),
                None,
                None,
                Slo {
                    ttft_ms: 1e3,
                    tpot_ms: 1e3,
                },
            );
            assert_eq!((r.modelled_ep_moe_s, r.modelled_a2a_s), (None, None));
            assert_eq!(r.rank_busy_s, t.rank_busy_s);
            assert!(
                r.rank_utilisation.iter().all(|&u| u > 0.0 && u <= 1.0),
                "{r:?}"
            );
        }
        // Every rank advanced the same clock: the same steps at the same times.
        assert_eq!(runs[0].steps, runs[1].steps, "{what}");
        assert_eq!(runs[0].totals, runs[1].totals, "{what}");
    }
}

#[test]
fn ep_serving_refuses_what_it_cannot_run() {
    let init = InitOptions::new(5);
    let whole = Model::random(CpuBackend, cfg(), &init).unwrap();
    let pool = pool(3);
    let reqs = requests(&[(0.0, 0), (0.0, 1)], &pool).unwrap();
    let ep = opts(Policy::None, None, false, StepClock::MeasuredEp);
    // One process cannot measure EP ranks.
    let e = serve(&whole, &reqs, &ep, &NoProgress).unwrap_err();
    assert!(
        matches!(e, ServeError::OutOfRange { what: "clock", .. }),
        "{e}"
    );
    let one = |o: ServeOptions, ranks: usize| {
        run_local(ranks, Duration::from_secs(30), |comm| {
            serve_ep(comm, &whole, &reqs, &o, &NoProgress)
        })
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()))
        .collect::<Vec<_>>()
    };
    // A modelled clock on ranks; ranks that disagree with the options; 3 ranks for 4 experts.
    let modelled = opts(Policy::None, None, false, SYNTHETIC);
    for (o, ranks, says) in [
        (modelled, 1, "MeasuredEp"),
        (ep.clone(), 1, "communicator's 1 ranks"),
        (
            ServeOptions {
                ranks: 3,
                ..ep.clone()
            },
            3,
            "cannot hold 4 experts",
        ),
    ] {
        let errs = one(o, ranks);
        assert!(
            errs.iter()
                .all(|e| e.as_ref().is_some_and(|e| e.contains(says))),
            "{says}: {errs:?}"
        );
    }
    // A rank holding all experts where its group is expected: refused on every rank.
    let errs = one(ep, 2);
    assert!(errs.iter().all(Option::is_some), "{errs:?}");
}
