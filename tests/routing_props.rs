//! Property tests of the routing contract over random and adversarial logits.

use capmoe::routing::{
    combine, random_key, route, CapacityScope, DispatchLayout, DropRank, Gate, Logits, Policy,
    RouterConfig, RoutingPlan, PAD,
};
use proptest::prelude::*;
use std::cmp::Reverse;

#[derive(Debug, Clone)]
struct Case {
    tokens: usize,
    experts: usize,
    k: usize,
    logits: Vec<f32>,
    gamma: f64,
    ranks: usize,
    scope: CapacityScope,
    renormalize: bool,
}

/// Logits of one of four kinds: spread, heavy ties, one hot expert, all equal.
fn logits(n: usize, experts: usize) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-6.0f32..6.0, n),
        prop::collection::vec(prop::sample::select(vec![0.0f32, 0.5, 1.0]), n),
        prop::collection::vec(-2.0f32..2.0, n).prop_map(move |mut v| {
            for (i, x) in v.iter_mut().enumerate() {
                if i % experts == 0 {
                    *x += 9.0;
                }
            }
            v
        }),
        Just(vec![0.0f32; n]),
    ]
}

fn case(max_tokens: usize, experts: Vec<usize>) -> impl Strategy<Value = Case> {
    (0..=max_tokens, prop::sample::select(experts))
        .prop_flat_map(|(tokens, experts)| {
            let divisors: Vec<usize> = (1..=experts).filter(|r| experts % r == 0).collect();
            (
                Just(tokens),
                Just(experts),
                1..=experts,
                logits(tokens * experts, experts),
                prop_oneof![0.2f64..3.0, Just(1.0), Just(1.5)],
                prop::sample::select(divisors),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(tokens, experts, k, logits, gamma, ranks, rank_scope, renormalize)| Case {
                tokens,
                experts,
                k,
                logits,
                gamma,
                ranks,
                scope: if rank_scope {
                    CapacityScope::Rank
                } else {
                    CapacityScope::Expert
                },
                renormalize,
            },
        )
}

fn config(c: &Case, policy: Policy) -> RouterConfig {
    let cfg = RouterConfig::new(c.k, policy)
        .with_ranks(c.ranks)
        .with_scope(c.scope)
        .with_renormalize(c.renormalize);
    if policy.has_capacity() {
        cfg.with_capacity_factor(c.gamma)
    } else {
        cfg
    }
}

fn plan(c: &Case, policy: Policy) -> RoutingPlan {
    route(
        &Logits::new(&c.logits, c.tokens, c.experts).unwrap(),
        &config(c, policy),
    )
    .unwrap()
}

fn gate(c: &Case) -> Gate {
    Gate::new(&Logits::new(&c.logits, c.tokens, c.experts).unwrap(), c.k).unwrap()
}

fn bin_of(c: &Case, e: usize) -> usize {
    match c.scope {
        CapacityScope::Expert => e,
        CapacityScope::Rank => e / (c.experts / c.ranks),
    }
}

fn bin_cap(c: &Case, plan: &RoutingPlan) -> u64 {
    let per = plan.capacity().unwrap().per_expert;
    match c.scope {
        CapacityScope::Expert => per,
        CapacityScope::Rank => per * (c.experts / c.ranks) as u64,
    }
}

fn served(plan: &RoutingPlan, t: usize) -> Vec<u32> {
    plan.assignments(t).map(|a| a.expert).collect()
}

/// Invariants every plan must hold.
fn check_plan(c: &Case, policy: Policy, plan: &RoutingPlan, g: &Gate) {
    let nbins = if c.scope == CapacityScope::Rank {
        c.ranks
    } else {
        c.experts
    };
    let mut bin_load = vec![0u64; nbins];
    let mut load = vec![0u64; c.experts];
    let (mut dropped, mut rerouted, mut mass, mut top_mass) = (0u64, 0u64, 0.0f64, 0.0f64);
    // PlanTotals' fixed point: trunc(p * 2^32), summed as integers.
    let fx = |p: f32| (p as f64 * 4294967296.0).trunc() as u64;
    let (mut mass_fx, mut top_fx) = (0u64, 0u64);
    for t in 0..c.tokens {
        let s = served(plan, t);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            s.len(),
            "token {t} holds an expert twice: {s:?}"
        );
        if policy != Policy::ExpandLocal {
            assert!(s.len() <= c.k, "token {t} holds {} > k experts", s.len());
        }
        let p = g.prob_row(t);
        let assigned: Vec<_> = plan.assignments(t).collect();
        for w in assigned.windows(2) {
            assert!(
                p[w[0].expert as usize] > p[w[1].expert as usize]
                    || (p[w[0].expert as usize] == p[w[1].expert as usize]
                        && w[0].expert < w[1].expert)
            );
        }
        let denom: f32 = if c.renormalize {
            assigned.iter().fold(0.0f32, |a, x| a + x.prob)
        } else {
            g.topk(t).iter().fold(0.0f32, |a, &e| a + p[e as usize])
        };
        for a in &assigned {
            assert_eq!(a.prob.to_bits(), p[a.expert as usize].to_bits());
            assert_eq!(a.weight.to_bits(), (a.prob / denom).to_bits());
            load[a.expert as usize] += 1;
            bin_load[bin_of(c, a.expert as usize)] += 1;
            mass += a.prob as f64;
            mass_fx += fx(a.prob);
            rerouted += u64::from(!g.topk(t).contains(&a.expert));
        }
        if c.renormalize && !assigned.is_empty() && denom > 0.0 {
            let sum: f32 = assigned.iter().map(|a| a.weight).sum();
            assert!(
                (sum - 1.0).abs() < 1e-5,
                "renormalised weights sum to {sum}"
            );
        }
        dropped += c.k.saturating_sub(s.len()) as u64;
        top_mass += g.topk(t).iter().map(|&e| p[e as usize] as f64).sum::<f64>();
        top_fx += g.topk(t).iter().map(|&e| fx(p[e as usize])).sum::<u64>();
        assert_eq!(plan.topk(t), g.topk(t));
    }
    let st = plan.stats();
    assert_eq!(st.load, load);
    assert_eq!(st.max_load, load.iter().copied().max().unwrap_or(0));
    assert_eq!(st.dropped, dropped);
    assert_eq!(st.rerouted, rerouted);
    assert!((st.served_mass - mass).abs() < 1e-9);
    assert!((st.topk_mass - top_mass).abs() < 1e-9);
    let tot = plan.totals();
    assert_eq!(
        (tot.load.as_slice(), tot.dropped, tot.rerouted),
        (st.load.as_slice(), st.dropped, st.rerouted)
    );
    assert_eq!((tot.served_mass_fx, tot.topk_mass_fx), (mass_fx, top_fx));
    assert_eq!(tot.served(), st.served);
    // Truncation loses under 2^-32 per p: the ratio stays within 1e-6 of the f64 one.
    assert!((tot.gate_mass_kept() - st.gate_mass_kept).abs() < 1e-6);
    if policy.has_capacity() {
        let cap = bin_cap(c, plan);
        for (b, &l) in bin_load.iter().enumerate() {
            assert!(l <= cap, "{policy}: bin {b} holds {l} > capacity {cap}");
        }
    } else {
        assert_eq!(st.dropped, 0);
        assert_eq!(plan.capacity(), None);
    }
    if matches!(policy, Policy::None | Policy::Drop(_)) {
        assert_eq!(st.rerouted, 0, "{policy} never reroutes");
    }
}

/// Reference for `drop:*`: per bin, sort every top-k candidate by the
/// policy's key and keep the first `cap`.
fn naive_drop(c: &Case, plan: &RoutingPlan, g: &Gate, rank: DropRank) -> Vec<Vec<u32>> {
    let cap = bin_cap(c, plan) as usize;
    let nbins = if c.scope == CapacityScope::Rank {
        c.ranks
    } else {
        c.experts
    };
    let mut per_bin: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nbins];
    for t in 0..c.tokens {
        for &e in g.topk(t) {
            per_bin[bin_of(c, e as usize)].push((t as u32, e));
        }
    }
    // Position of e in t's top-k: within a token, order is by decreasing p.
    let j = |t: u32, e: u32| g.topk(t as usize).iter().position(|&x| x == e).unwrap();
    let mut kept = vec![Vec::new(); c.tokens];
    for cands in per_bin.iter_mut() {
        match rank {
            DropRank::Score => {
                cands.sort_by_key(|&(t, e)| (Reverse(g.p(t as usize, e as usize).to_bits()), t, e))
            }
            DropRank::Order => cands.sort_by_key(|&(t, e)| (t, j(t, e))),
            DropRank::ReverseOrder => cands.sort_by_key(|&(t, e)| (Reverse(t), j(t, e))),
            DropRank::Random { seed } => {
                cands.sort_by_key(|&(t, e)| (random_key(seed, t, e), t, j(t, e)))
            }
        }
        for &(t, e) in cands.iter().take(cap) {
            kept[t as usize].push(e);
        }
    }
    for k in kept.iter_mut() {
        k.sort_unstable();
    }
    kept
}

/// Whether bin `b` would take `(t, e)`: it has room, or holds something worse.
fn bin_would_take(c: &Case, plan: &RoutingPlan, g: &Gate, t: usize, e: usize) -> bool {
    let b = bin_of(c, e);
    let key = (Reverse(g.p(t, e).to_bits()), t, e);
    let mut held = 0u64;
    let mut worse = false;
    for t2 in 0..c.tokens {
        for e2 in served(plan, t2) {
            if bin_of(c, e2 as usize) == b {
                held += 1;
                worse |= (Reverse(g.p(t2, e2 as usize).to_bits()), t2, e2 as usize) > key;
            }
        }
    }
    held < bin_cap(c, plan) || worse
}

/// Best mass over every assignment of at most k distinct experts per token.
fn brute_force_mass(c: &Case, plan: &RoutingPlan, g: &Gate) -> f64 {
    let subsets: Vec<u32> = (0u32..1 << c.experts)
        .filter(|m| m.count_ones() as usize <= c.k)
        .collect();
    let cap = bin_cap(c, plan);
    let nbins = if c.scope == CapacityScope::Rank {
        c.ranks
    } else {
        c.experts
    };
    #[allow(clippy::too_many_arguments)]
    fn go(
        c: &Case,
        g: &Gate,
        subsets: &[u32],
        cap: u64,
        t: usize,
        load: &mut Vec<u64>,
        mass: f64,
        best: &mut f64,
    ) {
        if t == c.tokens {
            *best = best.max(mass);
            return;
        }
        for &m in subsets {
            let mut ok = true;
            let mut add = 0.0;
            for e in 0..c.experts {
                if m >> e & 1 == 1 {
                    let b = bin_of(c, e);
                    load[b] += 1;
                    ok &= load[b] <= cap;
                    add += g.p(t, e) as f64;
                }
            }
            if ok {
                go(c, g, subsets, cap, t + 1, load, mass + add, best);
            }
            for e in 0..c.experts {
                if m >> e & 1 == 1 {
                    load[bin_of(c, e)] -= 1;
                }
            }
        }
    }
    let mut best = 0.0;
    go(c, g, &subsets, cap, 0, &mut vec![0; nbins], 0.0, &mut best);
    best
}

/// Reference deferred acceptance in synchronous rounds (as a GPU runs it):
/// every open slot proposes at once, each bin keeps its best `cap` of held
/// and new proposals. Token-optimal stable assignments are unique, so this
/// must match the sequential oracle exactly.
fn round_based_next_best(c: &Case, plan: &RoutingPlan, g: &Gate) -> Vec<Vec<u32>> {
    let cap = bin_cap(c, plan) as usize;
    let nbins = if c.scope == CapacityScope::Rank {
        c.ranks
    } else {
        c.experts
    };
    let prefs: Vec<Vec<u32>> = (0..c.tokens).map(|t| g.preference(t)).collect();
    let mut next = vec![c.k; c.tokens];
    let mut held: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nbins];
    let mut proposals: Vec<(u32, u32)> = (0..c.tokens)
        .flat_map(|t| g.topk(t).iter().map(move |&e| (t as u32, e)))
        .collect();
    let mut rounds = 0;
    while !proposals.is_empty() {
        rounds += 1;
        assert!(
            rounds <= c.tokens * c.experts + 1,
            "deferred acceptance did not terminate"
        );
        for &(t, e) in &proposals {
            held[bin_of(c, e as usize)].push((t, e));
        }
        proposals.clear();
        for h in held.iter_mut() {
            h.sort_by_key(|&(t, e)| (Reverse(g.p(t as usize, e as usize).to_bits()), t, e));
            for &(t, _) in h.iter().skip(cap) {
                let t = t as usize;
                if next[t] < c.experts {
                    proposals.push((t as u32, prefs[t][next[t]]));
                    next[t] += 1;
                }
            }
            h.truncate(cap);
        }
    }
    let mut out = vec![Vec::new(); c.tokens];
    for h in held {
        for (t, e) in h {
            out[t as usize].push(e);
        }
    }
    for o in out.iter_mut() {
        o.sort_unstable();
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_policy_keeps_the_contract(c in case(40, vec![1, 2, 3, 4, 6, 8, 16])) {
        let g = gate(&c);
        for policy in Policy::all().into_iter().chain([Policy::Drop(DropRank::Random { seed: 99 })]) {
            let p = plan(&c, policy);
            check_plan(&c, policy, &p, &g);
            prop_assert_eq!(&p, &plan(&c, policy), "{} is not deterministic", policy);
        }
    }

    #[test]
    fn drop_policies_keep_exactly_their_top_c(c in case(40, vec![2, 3, 4, 8])) {
        let g = gate(&c);
        for rank in [DropRank::Score, DropRank::Order, DropRank::ReverseOrder, DropRank::Random { seed: 5 }] {
            let p = plan(&c, Policy::Drop(rank));
            let want = naive_drop(&c, &p, &g, rank);
            for (t, w) in want.iter().enumerate() {
                let mut got = served(&p, t);
                got.sort_unstable();
                prop_assert_eq!(&got, w, "{:?} token {}", rank, t);
            }
        }
    }

    #[test]
    fn next_best_is_stable(c in case(40, vec![2, 3, 4, 8])) {
        let g = gate(&c);
        let p = plan(&c, Policy::RerouteNextBest);
        for t in 0..c.tokens {
            let s = served(&p, t);
            let worst = s.last().copied();
            for e in 0..c.experts {
                if s.contains(&(e as u32)) {
                    continue;
                }
                let wants = s.len() < c.k
                    || worst.is_some_and(|w| g.p(t, e) > g.p(t, w as usize) || (g.p(t, e) == g.p(t, w as usize) && (e as u32) < w));
                prop_assert!(!(wants && bin_would_take(&c, &p, &g, t, e)), "blocking pair: token {} expert {}", t, e);
            }
        }
    }

    #[test]
    fn next_best_matches_synchronous_rounds(c in case(40, vec![2, 3, 4, 8, 16])) {
        let g = gate(&c);
        let p = plan(&c, Policy::RerouteNextBest);
        let want = round_based_next_best(&c, &p, &g);
        for (t, w) in want.iter().enumerate() {
            let mut got = served(&p, t);
            got.sort_unstable();
            prop_assert_eq!(&got, w, "token {}", t);
        }
    }

    #[test]
    fn optimal_matches_brute_force(c in case(4, vec![1, 2, 3, 4])) {
        prop_assume!(c.k <= 2);
        let g = gate(&c);
        let p = plan(&c, Policy::RerouteOptimal);
        let best = brute_force_mass(&c, &p, &g);
        let got = p.stats().served_mass;
        prop_assert!((got - best).abs() <= 1e-9, "optimal kept {} but brute force finds {}", got, best);
    }

    #[test]
    fn optimal_keeps_at_least_every_other_policys_mass(c in case(64, vec![2, 4, 8, 16])) {
        let opt = plan(&c, Policy::RerouteOptimal).stats().served_mass;
        // expand:local is excluded: it may give a token more than k experts.
        for policy in Policy::all().into_iter().filter(|p| p.has_capacity() && *p != Policy::ExpandLocal) {
            let m = plan(&c, policy).stats().served_mass;
            prop_assert!(opt >= m - 1e-9, "optimal {} < {} {}", opt, policy, m);
        }
    }

    #[test]
    fn dispatch_and_combine_agree_with_a_direct_sum(c in case(24, vec![2, 3, 8]), tile in 1usize..5, hidden in 1usize..4) {
        let g = gate(&c);
        for policy in [Policy::None, Policy::Drop(DropRank::Score), Policy::RerouteNextBest, Policy::ExpandLocal] {
            let p = plan(&c, policy);
            let d = DispatchLayout::new(&p, tile).unwrap();
            for e in 0..c.experts {
                let (lo, hi) = (d.offsets()[e] as usize, d.offsets()[e + 1] as usize);
                prop_assert_eq!((hi - lo) % tile, 0);
                prop_assert!(hi - lo >= d.counts()[e] as usize && hi - lo < d.counts()[e] as usize + tile);
                let rows = &d.row_tokens()[lo..hi];
                let n = d.counts()[e] as usize;
                prop_assert!(rows[..n].windows(2).all(|w| w[0] < w[1]), "rows of expert {} not in token order", e);
                prop_assert!(rows[n..].iter().all(|&r| r == PAD));
            }
            // Overflow: exactly the top-k assignments not served, in (t, j) order.
            let want: Vec<(u32, u32)> = (0..c.tokens)
                .flat_map(|t| g.topk(t).iter().filter(|e| !served(&p, t).contains(e)).map(move |&e| (t as u32, e)).collect::<Vec<_>>())
                .collect();
            let got: Vec<(u32, u32)> = d.overflow().iter().map(|o| (o.token, o.expert)).collect();
            prop_assert_eq!(got, want);
            // Expert e maps x to (e + 1) * x; combine must give sum_i w_i (e_i + 1) x.
            let x: Vec<f32> = (0..c.tokens * hidden).map(|i| (i % 7) as f32 - 3.0).collect();
            let rows = d.scatter(&x, c.tokens, hidden).unwrap();
            let mut y = rows.clone();
            for e in 0..c.experts {
                for r in d.offsets()[e] as usize..d.offsets()[e + 1] as usize {
                    for v in &mut y[r * hidden..(r + 1) * hidden] {
                        *v *= (e + 1) as f32;
                    }
                }
            }
            let out = combine(&p, &d, &y, hidden).unwrap();
            for t in 0..c.tokens {
                for h in 0..hidden {
                    let want = p.assignments(t).fold(0.0f32, |a, s| a + s.weight * ((s.expert + 1) as f32 * x[t * hidden + h]));
                    prop_assert_eq!(out[t * hidden + h].to_bits(), want.to_bits());
                }
            }
        }
    }
}
