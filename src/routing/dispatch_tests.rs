//! Tests of the dispatch layout (src/routing/dispatch.rs).

use crate::routing::{route, Logits, Policy, RouterConfig};

#[test]
fn gemm_args_point_at_each_experts_rows_and_weights() {
    // 3 tokens on expert 0, 1 on expert 2, none on expert 1; tile 4.
    let l = [
        5.0f32, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0,
    ];
    let plan = route(
        &Logits::new(&l, 4, 3).unwrap(),
        &RouterConfig::new(1, Policy::None),
    )
    .unwrap();
    let d = super::DispatchLayout::new(&plan, 4).unwrap();
    assert_eq!(d.offsets(), &[0, 4, 4, 8]);
    let g = d.gemm_args(16, 8, 2, 1000, 2000, 3000).unwrap();
    let m: Vec<i32> = g.problems.iter().map(|p| p.m).collect();
    assert_eq!(m, vec![3, 0, 1]);
    assert!(g.problems.iter().all(|p| p.n == 16 && p.k == 8));
    assert_eq!(g.a, vec![1000, 1000 + 4 * 8 * 2, 1000 + 4 * 8 * 2]);
    assert_eq!(g.b, vec![2000, 2000 + 16 * 8 * 2, 2000 + 2 * 16 * 8 * 2]);
    assert_eq!(g.c, vec![3000, 3000 + 4 * 16 * 2, 3000 + 4 * 16 * 2]);
    assert!(d.gemm_args(1 << 31, 8, 2, 0, 0, 0).is_err());
}

#[test]
fn from_parts_takes_back_every_layout_and_refuses_broken_ones() {
    use super::{DispatchLayout, DispatchParts, Overflow, PAD};
    let (t, e) = (7usize, 4usize);
    let l: Vec<f32> = (0..t * e).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let logits = Logits::new(&l, t, e).unwrap();
    for (k, policy, gamma) in [
        (2, "none", None),
        (2, "drop:score", Some(1.0)),
        (4, "drop:score", Some(0.5)),
        (1, "reroute:next-best", Some(1.0)),
    ] {
        let mut cfg = RouterConfig::new(k, policy.parse().unwrap());
        cfg.capacity_factor = gamma;
        let plan = route(&logits, &cfg).unwrap();
        for tile in [1, 3, 8] {
            let d = DispatchLayout::new(&plan, tile).unwrap();
            let back = DispatchLayout::from_parts(d.clone().into_parts(), t).unwrap();
            assert_eq!(back, d, "{policy} tile {tile}");
            let g = d.for_experts(&plan, 1..3).unwrap();
            let back = DispatchLayout::from_parts(g.clone().into_parts(), t).unwrap();
            assert_eq!(back, g, "{policy} tile {tile} group");
        }
    }
    // Adversarial parts: each breaks one rule.
    let ok = DispatchParts {
        tile: 2,
        offsets: vec![0, 2, 4],
        row_tokens: vec![0, 2, 1, PAD],
        row_weights: vec![0.5, 0.25, 1.0, 0.0],
        assignment_rows: vec![0, 2, 1],
        overflow: vec![Overflow {
            token: 2,
            expert: 1,
        }],
    };
    assert!(DispatchLayout::from_parts(ok.clone(), 3).is_ok());
    type Break = fn(&mut DispatchParts);
    let broken: [(&str, Break); 15] = [
        ("tile 0", |p| p.tile = 0),
        ("offsets from 1", |p| p.offsets = vec![1, 2, 4]),
        ("decreasing", |p| p.offsets = vec![0, 4, 2]),
        ("not a tile multiple", |p| p.offsets = vec![0, 1, 4]),
        ("rows short", |p| p.offsets = vec![0, 2, 6]),
        ("over-padded", |p| {
            p.offsets = vec![0, 2, 4, 6];
            p.row_tokens.extend([PAD, PAD]);
            p.row_weights.extend([0.0, 0.0]);
        }),
        ("served after pad", |p| p.row_tokens = vec![0, 2, PAD, 1]),
        ("tokens not increasing", |p| {
            p.row_tokens = vec![2, 0, 1, PAD]
        }),
        ("token out of range", |p| p.row_tokens = vec![0, 3, 1, PAD]),
        ("NaN weight", |p| p.row_weights[0] = f32::NAN),
        ("weight on padding", |p| p.row_weights[3] = 0.5),
        ("assignment on padding", |p| p.assignment_rows[1] = 3),
        ("assignment past rows", |p| p.assignment_rows[1] = 9),
        ("overflow token", |p| p.overflow[0].token = 3),
        ("overflow expert", |p| p.overflow[0].expert = 2),
    ];
    for (what, break_it) in broken {
        let mut p = ok.clone();
        break_it(&mut p);
        assert!(
            DispatchLayout::from_parts(p, 3).is_err(),
            "{what} was accepted"
        );
    }
}

#[test]
fn a_groups_layout_is_its_slice_of_the_whole() {
    let l = [
        5.0f32, 0.0, 4.0, 0.0, 0.0, 5.0, 0.0, 4.0, 4.0, 0.0, 5.0, 0.0, 0.0, 4.0, 0.0, 5.0,
    ];
    let plan = route(
        &Logits::new(&l, 4, 4).unwrap(),
        &RouterConfig::new(2, Policy::None),
    )
    .unwrap();
    let whole = super::DispatchLayout::new(&plan, 2).unwrap();
    let g = whole.for_experts(&plan, 2..4).unwrap();
    let (o0, o1) = (whole.offsets()[2] as usize, whole.offsets()[4] as usize);
    assert_eq!(g.counts(), &whole.counts()[2..4]);
    assert_eq!(g.row_tokens(), &whole.row_tokens()[o0..o1]);
    assert_eq!(g.offsets()[0], 0);
    assert_eq!(g.rows(), o1 - o0);
    for (i, &e) in plan.expert_ids().iter().enumerate() {
        let r = g.assignment_rows()[i];
        if e >= 2 {
            assert_eq!(r as usize + o0, whole.assignment_rows()[i] as usize);
        } else {
            assert_eq!(r, super::PAD);
        }
    }
    assert!(whole.for_experts(&plan, 3..5).is_err());
    assert!(whole.for_experts(&plan, 2..2).is_err());
}
