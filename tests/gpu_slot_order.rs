//! Within-token slot order against the CPU oracle. Random logits rarely make a token's own slots
//! tie in a capacity sort, so removing the kernels' per-token slot ordering went unnoticed in
//! almost every random case. These cases force it. Rank scope puts several experts in one bin.
//! A few logit levels make a token's experts tie in p. The capacity is tight, so each bin's cut
//! falls between two slots of one token. Reroute rounds move rejected slots around before they
//! compete again. Plans must be bit-identical. Without a GPU every test prints why and passes as
//! skipped.
#![cfg(feature = "cuda")]

use capmoe::cuda::{GpuContext, GpuError, GpuRouter};
use capmoe::routing::{route, CapacityScope, Logits, Policy, RouterConfig};
use capmoe::trace::Rng;

fn gpu() -> Option<GpuContext> {
    match GpuContext::new(0) {
        Ok(g) => Some(g),
        // Under emulation the fake driver is always there: never skip.
        Err(e) if cfg!(feature = "emulate") => panic!("emulated GPU did not open: {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// (name, T, E, k, ranks, logits): each token's logits take 2 or 3 levels, with the higher
/// levels clustered in one random rank, so a token holds several tied slots of one bin.
fn cases() -> Vec<(String, usize, usize, usize, usize, Vec<f32>)> {
    let mut rng = Rng::new(2024);
    let mut out = Vec::new();
    for case in 0..48 {
        let (e, ranks) = [(8usize, 2usize), (8, 4), (12, 3), (16, 4)][case % 4];
        let k = 2 + case % 3;
        let t = 5 + (rng.next_u64() % 28) as usize;
        let epr = e / ranks;
        let levels = 2 + case % 2;
        let mut logits = Vec::with_capacity(t * e);
        for _ in 0..t {
            let home = (rng.next_u64() % ranks as u64) as usize;
            for x in 0..e {
                let in_home = x / epr == home;
                let lv = (rng.next_u64() % levels as u64) as f32;
                logits.push(if in_home { 2.0 + lv } else { lv * 0.5 });
            }
        }
        out.push((
            format!("slot-order #{case} T{t} E{e} k{k} R{ranks}"),
            t,
            e,
            k,
            ranks,
            logits,
        ));
    }
    out
}

#[test]
fn tied_slots_of_one_token_are_ordered_as_the_oracle_orders_them() {
    let Some(g) = gpu() else { return };
    let mut checked = 0;
    for (name, t, e, k, ranks, logits) in cases() {
        let l = Logits::new(&logits, t, e).unwrap();
        let d = g.stream().clone_htod(&logits).unwrap();
        for policy in [
            "reroute:next-best",
            "drop:score",
            "drop:order",
            "expand:local",
        ] {
            let policy: Policy = policy.parse().unwrap();
            for gamma in [0.5, 0.75, 1.0] {
                for scope in [CapacityScope::Rank, CapacityScope::Expert] {
                    let cfg = RouterConfig::new(k, policy)
                        .with_ranks(ranks)
                        .with_scope(scope)
                        .with_capacity_factor(gamma);
                    let want = route(&l, &cfg).unwrap();
                    let router = GpuRouter::new(&g, cfg.clone())
                        .unwrap()
                        .with_max_rounds(16 * e + 64);
                    let got = match router.route(&d, t, e).unwrap().to_host() {
                        Err(GpuError::NotConverged { rounds }) => {
                            panic!("{name} {cfg:?}: not converged in {rounds} rounds")
                        }
                        r => r.unwrap(),
                    };
                    assert_eq!(got, want, "{name} {cfg:?}");
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} tied-slot plans bit-identical");
}
