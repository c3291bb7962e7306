//! The EP forward across in-process ranks equals the single-process forward.

use super::{ep_generate, ep_logits, DistError, EpMoe};
use crate::backend::CpuBackend;
use crate::ep::comm::{run_local, CommError, RankFailure};
use crate::model::{GenerateOptions, InitOptions, MixtralConfig, Model, ModelError};
use crate::progress::NoProgress;
use crate::routing::{Policy, RouterConfig};
use crate::trace::Skew;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn config(experts: usize) -> MixtralConfig {
    let mut c = MixtralConfig::builtin("tiny").unwrap();
    c.num_local_experts = experts;
    c
}

fn opts() -> InitOptions {
    // A skewed router, so capacity binds and reroute has work.
    InitOptions::new(11).with_skew(Skew::Ratio(1.6))
}

fn routers(k: usize) -> Vec<RouterConfig> {
    let cap = |p: &str, g: f64| {
        RouterConfig::new(k, p.parse::<Policy>().unwrap()).with_capacity_factor(g)
    };
    vec![
        RouterConfig::new(k, Policy::None),
        cap("drop:score", 1.0),
        cap("drop:random:3", 0.75),
        cap("reroute:next-best", 1.0),
        cap("reroute:optimal", 1.25),
        cap("expand:local", 1.0),
    ]
}

fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 5) % 128).collect()
}

fn ranks_logits(
    cfg: &MixtralConfig,
    ranks: usize,
    router: &RouterConfig,
    ids: &[u32],
) -> Vec<Result<Vec<Vec<f32>>, RankFailure<DistError>>> {
    run_local(ranks, DEADLINE, |comm| {
        let ep = EpMoe::new(
            comm,
            cfg.num_local_experts,
            cfg.hidden_size,
            router,
            ids.len(),
        )?;
        let mine = Model::random_group(CpuBackend, cfg.clone(), &opts(), ep.group(), &NoProgress)?;
        let out = ep_logits(&ep, &mine, ids, router)?;
        // Each rank served its experts' rows and nothing else.
        let times = ep.take_times();
        assert_eq!(times.len(), cfg.num_hidden_layers);
        Ok(out)
    })
}

#[test]
fn logits_equal_one_process_bit_for_bit_for_every_policy_and_rank_count() {
    for experts in [4, 8] {
        let cfg = config(experts);
        let whole = Model::random(CpuBackend, cfg.clone(), &opts()).unwrap();
        for ranks in [1, 2, 4] {
            for router in routers(2) {
                let router = router.with_ranks(ranks);
                for n in [ranks, ranks + 1, 13] {
                    let ids = ids(n);
                    let want = whole.logits(&ids, &router).unwrap();
                    for (r, got) in ranks_logits(&cfg, ranks, &router, &ids)
                        .into_iter()
                        .enumerate()
                    {
                        let got = got.unwrap_or_else(|e| panic!("rank {r}: {e}"));
                        assert!(
                            got == want,
                            "E={experts} R={ranks} {:?} T={n}: rank {r}'s logits differ",
                            router.policy
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn generation_equals_one_process_through_prefill_and_decode() {
    let cfg = config(4);
    let whole = Model::random(CpuBackend, cfg.clone(), &opts()).unwrap();
    // One prompt: every decode step has one token, so one rank's block is
    // empty (it still serves its experts).
    for prompts in [vec![ids(5), ids(2), ids(7)], vec![ids(4)]] {
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        for router in [routers(2)[0].clone(), routers(2)[1].clone()] {
            let router = router.with_ranks(2);
            let g = GenerateOptions {
                router: router.clone(),
                max_new_tokens: 6,
                eos: Vec::new(),
            };
            let want = whole.generate_batch(&refs, &g).unwrap();
            let got = run_local(2, DEADLINE, |comm| {
                let ep = EpMoe::new(comm, 4, cfg.hidden_size, &router, 32)?;
                let mine =
                    Model::random_group(CpuBackend, cfg.clone(), &opts(), ep.group(), &NoProgress)?;
                ep_generate(&ep, &mine, &refs, &g)
            });
            for r in got {
                assert_eq!(r.unwrap(), want, "{:?}", router.policy);
            }
        }
    }
}

#[test]
fn placements_that_cannot_split_the_experts_are_typed_errors() {
    let cfg = config(4);
    let router = RouterConfig::new(2, Policy::None);
    for ranks in [3, 8] {
        let out = run_local(ranks, DEADLINE, |comm| {
            EpMoe::new(comm, cfg.num_local_experts, cfg.hidden_size, &router, 8).map(|_| ())
        });
        for r in out {
            match r {
                Err(RankFailure::Failed(DistError::Placement {
                    ranks: got,
                    experts: 4,
                })) => {
                    assert_eq!(got, ranks)
                }
                other => panic!("R={ranks}: {other:?}"),
            }
        }
    }
    let out = run_local(1, DEADLINE, |comm| {
        EpMoe::new(comm, 4, 32, &router, 0).map(|_| ())
    });
    assert!(matches!(
        out[0],
        Err(RankFailure::Failed(DistError::Zero("max_tokens")))
    ));
}

#[test]
fn a_forward_past_max_tokens_and_a_rank_with_the_wrong_experts_fail_without_hanging() {
    let cfg = config(4);
    let router = RouterConfig::new(2, Policy::None);
    let out = run_local(2, DEADLINE, |comm| {
        let ep = EpMoe::new(comm, 4, cfg.hidden_size, &router, 2)?;
        let mine = Model::random_group(CpuBackend, cfg.clone(), &opts(), ep.group(), &NoProgress)?;
        ep_logits(&ep, &mine, &ids(3), &router)
    });
    for r in out {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("past the 2"), "{e}");
    }
    // Rank 1 loads rank 0's experts: it refuses, and rank 0 hears of it.
    let out = run_local(2, DEADLINE, |comm| {
        let ep = EpMoe::new(comm, 4, cfg.hidden_size, &router, 8)?;
        let mine = Model::random_group(CpuBackend, cfg.clone(), &opts(), 0..2, &NoProgress)?;
        ep_logits(&ep, &mine, &ids(3), &router)
    });
    assert!(matches!(
        out[1],
        Err(RankFailure::Failed(DistError::WrongGroup { rank: 1, .. }))
    ));
    match &out[0] {
        Err(RankFailure::Failed(DistError::Comm(e))) => {
            assert!(
                matches!(e, CommError::PeerFailed { .. } | CommError::PeerGone { .. }),
                "{e}"
            )
        }
        other => panic!("rank 0: {other:?}"),
    }
}

#[test]
fn a_partial_model_refuses_to_run_alone() {
    let m = Model::random_group(CpuBackend, config(4), &opts(), 2..4, &NoProgress).unwrap();
    let r = RouterConfig::new(2, Policy::None);
    assert!(matches!(
        m.logits(&ids(2), &r),
        Err(ModelError::PartialExperts {
            start: 2,
            end: 4,
            experts: 4
        })
    ));
    assert!(matches!(
        Model::random_group(CpuBackend, config(4), &opts(), 3..5, &NoProgress),
        Err(ModelError::ExpertGroup { .. })
    ));
    assert_eq!(
        m.expert_params_held() * 2,
        Model::random(CpuBackend, config(4), &opts())
            .unwrap()
            .expert_params_held()
    );
}

#[test]
fn the_benchmark_reports_every_rank_and_layer_on_rank_0_only() {
    use super::{ep_bench, EpBenchSetup};
    use crate::ep::LatencyModel;
    let cfg = config(4);
    let k = cfg.num_experts_per_tok;
    let setup = EpBenchSetup {
        cases: vec![
            RouterConfig::new(k, Policy::None),
            RouterConfig::new(k, "drop:score".parse().unwrap()).with_capacity_factor(1.0),
        ],
        warmup: 0,
        min_iters: 2,
        max_iters: 3,
        tolerance: 0.5,
        time_cap: Duration::from_millis(1),
        model: LatencyModel {
            a2a_gbps: 25.0,
            elem_bytes: 4,
            hidden: cfg.hidden_size,
        },
    };
    let prompts = [ids(9), ids(8)];
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let out = run_local(2, DEADLINE, |comm| {
        let ep = EpMoe::new(comm, 4, cfg.hidden_size, &setup.cases[0], 17)?;
        let mine = Model::random_group(CpuBackend, cfg.clone(), &opts(), ep.group(), &NoProgress)?;
        ep_bench(comm, &mine, &refs, &setup, |_| {})
    });
    assert!(out[1].as_ref().unwrap().is_none());
    let rep = out[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!((rep.ranks, rep.tokens, rep.cases.len()), (2, 17, 2));
    assert_eq!(rep.expert_params_held * 2, rep.expert_params_total);
    let c = (17 * k) as f64 / 4.0;
    for (i, case) in rep.cases.iter().enumerate() {
        assert!((2..=3).contains(&case.iters));
        assert_eq!(case.layers.len(), cfg.num_hidden_layers);
        for layer in &case.layers {
            assert_eq!(layer.len(), 2);
            let rows: f64 = layer.iter().map(|r| r.rows).sum();
            if i == 0 {
                // Dropless: every assignment is served somewhere.
                assert_eq!(rows, (17 * k) as f64);
            } else {
                assert!(layer.iter().all(|r| r.rows <= 2.0 * c.ceil()));
            }
            assert!(layer
                .iter()
                .all(|r| r.total_ms >= r.expert_ms && r.expert_ms >= 0.0));
        }
        assert!(case.moe_ms.min <= case.moe_ms.p50 && case.moe_ms.p50 <= case.moe_ms.max);
    }
    assert_eq!(rep.cases[0].ideal_speedup, 1.0);
    assert!(rep.cases[1].ideal_speedup >= 1.0);
}
