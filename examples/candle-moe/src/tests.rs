use candle_core::Device;
use capmoe::routing::RouterConfig;

use crate::block::MoeBlock;
use crate::routes::{candle_topk, capmoe_route, compare, TOL};
use crate::{batch, check_none, demo_config, Res, GAMMA, TOKENS};

fn demo(seed: u64, bias: Vec<f32>) -> Res<(MoeBlock, candle_core::Tensor)> {
    let mut cfg = demo_config(seed);
    cfg.router_bias = bias;
    let block = MoeBlock::new(cfg, &Device::Cpu)?;
    let x = batch(&block.cfg, TOKENS, &Device::Cpu)?;
    Ok((block, x))
}

#[test]
fn none_equals_candle_topk() -> Res<()> {
    for seed in [1, 2, 7, 42] {
        for bias in [vec![], vec![1.5, 1.0], vec![0.0, 0.0, 3.0]] {
            let (block, x) = demo(seed, bias)?;
            let c = check_none(&block, &x)?;
            assert_eq!(c.agreement.assignments, TOKENS * block.cfg.top_k);
        }
    }
    Ok(())
}

#[test]
fn none_equals_candle_topk_for_other_k() -> Res<()> {
    for k in [1, 3, 8] {
        let mut cfg = demo_config(3);
        cfg.top_k = k;
        let block = MoeBlock::new(cfg, &Device::Cpu)?;
        let x = batch(&block.cfg, TOKENS, &Device::Cpu)?;
        check_none(&block, &x)?;
    }
    Ok(())
}

/// The comparison must reject routings that differ, or it proves nothing.
#[test]
fn compare_rejects_broken_routing() -> Res<()> {
    let (block, x) = demo(7, demo_config(7).router_bias)?;
    let k = block.cfg.top_k;
    let logits = block.router_logits(&x)?;
    let (probs, ra) = candle_topk(&logits, k)?;
    assert!(compare(&probs, &ra, &ra, k, TOL).is_ok());

    let mut bad = ra.clone();
    bad[5][0].1 *= 1.0 + 1e-5; // a weight off by 10 ppm
    assert!(compare(&probs, &ra, &bad, k, TOL).is_err());

    let mut bad = ra.clone();
    let (e0, e1) = (bad[9][0].0, bad[9][1].0);
    let other = (0..block.cfg.experts as u32)
        .find(|&e| e != e0 && e != e1)
        .unwrap();
    bad[9][1].0 = other; // another expert, same weight
    assert!(compare(&probs, &ra, &bad, k, TOL).is_err());

    let mut bad = ra.clone();
    bad[6][1].1 = f32::NAN;
    assert!(compare(&probs, &ra, &bad, k, TOL).is_err());

    let mut bad = ra.clone();
    bad[3].pop(); // a lost slot
    assert!(compare(&probs, &ra, &bad, k, TOL).is_err());
    Ok(())
}

#[test]
fn experts_refuse_a_drop_marker() -> Res<()> {
    let (block, x) = demo(7, vec![])?;
    let (_, mut routing) = candle_topk(&block.router_logits(&x)?, block.cfg.top_k)?;
    routing[0][0].0 = block.cfg.experts as u32; // the paper's drop marker E
    assert!(block.forward_experts(&x, &routing).is_err());
    Ok(())
}

/// Under capacity every expert holds at most C, the skew really overflows,
/// and every served weight is `p / sum(p over the candle top-k)`.
#[test]
fn capacity_policies_hold_capacity() -> Res<()> {
    let (block, x) = demo(7, demo_config(7).router_bias)?;
    let k = block.cfg.top_k;
    let logits = block.router_logits(&x)?;
    let none = check_none(&block, &x)?;
    for policy in ["drop:score", "reroute:next-best"] {
        let rc = RouterConfig::new(k, policy.parse()?).with_capacity_factor(GAMMA);
        let (plan, routing) = capmoe_route(&logits, &rc)?;
        let c = plan.capacity().expect("capacity policy").per_expert;
        assert!(none.plan.stats().max_load > c, "the skew must overflow C");
        assert!(plan.stats().load.iter().all(|&l| l <= c), "{policy}");
        for (t, list) in routing.iter().enumerate() {
            let topk: f32 = none.candle_routing[t]
                .iter()
                .map(|&(e, _)| none.probs[t][e as usize])
                .sum();
            for &(e, w) in list {
                let want = none.probs[t][e as usize] / topk;
                assert!((w - want).abs() <= 1e-6 * want, "{policy} t{t} e{e}");
            }
        }
        let y = block.forward_experts(&x, &routing)?;
        let (max_abs, _) = crate::routes::output_diff(&none.output, &y)?;
        assert!(max_abs > 0.0, "{policy} must change the output");
        if policy == "drop:score" {
            assert!(plan.stats().dropped > 0 && plan.stats().rerouted == 0);
            for (t, list) in routing.iter().enumerate() {
                let top = &none.candle_routing[t];
                assert!(list
                    .iter()
                    .all(|&(e, _)| top.iter().any(|&(te, _)| te == e)));
            }
        } else {
            assert!(plan.stats().rerouted > 0);
        }
    }
    Ok(())
}

/// Exact ties: candle's stable descending arg-sort and capmoe both give a
/// tie to the lower expert index; a swap is tolerated only among experts
/// tied at the k-th place.
#[test]
fn ties_go_to_the_lower_expert() -> Res<()> {
    let (block, _) = demo(7, vec![1.0, 0.5, 0.5])?;
    let x = candle_core::Tensor::zeros(
        (TOKENS, block.cfg.hidden),
        candle_core::DType::F32,
        &Device::Cpu,
    )?;
    let c = check_none(&block, &x)?; // logits = bias: experts 1 and 2 tie at place k
    assert_eq!(c.agreement.near_ties, TOKENS);
    assert!(c.candle_routing.iter().all(|l| l[0].0 == 0 && l[1].0 == 1));
    let k = block.cfg.top_k;
    let mut swapped = c.candle_routing.clone();
    swapped[0][1].0 = 2; // the tied expert: allowed
    assert!(compare(&c.probs, &c.candle_routing, &swapped, k, TOL).is_ok());
    swapped[0][1].0 = 3; // not tied: rejected
    assert!(compare(&c.probs, &c.candle_routing, &swapped, k, TOL).is_err());
    Ok(())
}
