//! The expert FFN's CPU twin: the hash init against hand-computed values,
//! the W13 interleave, the bf16 reference against a naive scalar reading of
//! the spec, and against the f32 CPU backend.

use capmoe::backend::{Backend, CpuBackend, HostExpert, HostTensor};
use capmoe::expert::init::{
    fill_bf16, from_bf16, hash32, hash_uniform, to_bf16, w13_seed, w2_seed, INIT_SCALE,
};
use capmoe::expert::interleave::{deinterleave_w13, interleave_w13};
use capmoe::expert::{compare, compare_served, ExpertError, ExpertFfnRef, FfnShape};
use capmoe::routing::{route, DispatchLayout, DropRank, Logits, Policy, RouterConfig, PAD};
use proptest::prelude::*;

// ---- init twin -------------------------------------------------------------

/// Values worked out from the spec's formula by hand (Python, exact integer
/// and f32 arithmetic), not by this crate.
#[test]
fn init_twin_matches_hand_computed_values() {
    assert_eq!(hash32(0), 0);
    assert_eq!(hash32(1), 0x3125_1ba7);
    assert_eq!(hash32(7), 0x08d5_d6f3);
    // hash32(5 ^ hash32(7)) = 0x8c826131: f = 0x8c8261 / 2^24.
    assert_eq!(hash_uniform(5, 7, 1.0), 0.097_728_85);
    assert_eq!(hash_uniform(2, 0, 1.0), -0.198_011_16);
    // With the init scale, as bf16: (i, seed) -> bits.
    for (i, seed, bits) in [
        (0u32, 0u32, 0xbd0eu16),
        (1, 0, 0xbcaf),
        (123_456, 14, 0x3cf0),
        (0, 15, 0x3cdf),
        (99, 1, 0x3c8c),
    ] {
        assert_eq!(
            to_bf16(hash_uniform(i, seed, INIT_SCALE)),
            bits,
            "({i}, {seed})"
        );
    }
    // The model seed 7 draws W13 from stream 14 and W2 from stream 15, each
    // indexed over its whole buffer.
    let r = ExpertFfnRef::random(FfnShape::new(2, 512, 64).unwrap(), 7).unwrap();
    assert_eq!((w13_seed(7), w2_seed(7)), (14, 15));
    assert_eq!(r.w13()[123_456], 0x3cf0);
    assert_eq!(r.w2()[0], 0x3cdf);
    assert_eq!(r.w13(), fill_bf16(2 * 2 * 64 * 512, 14, INIT_SCALE));
}

// ---- interleave ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn interleave_round_trips(inter in 1usize..6, hidden in 1usize..6, seed in any::<u32>()) {
        let n = inter * hidden;
        let w1: Vec<f32> = (0..n as u32).map(|i| hash_uniform(i, seed, 3.0)).collect();
        let w3: Vec<f32> = (0..n as u32).map(|i| hash_uniform(i, seed ^ 1, 3.0)).collect();
        let w13 = interleave_w13(&w1, &w3, inter, hidden).unwrap();
        for j in 0..inter {
            for k in 0..hidden {
                prop_assert_eq!(w13[2 * j * hidden + k], to_bf16(w1[j * hidden + k]));
                prop_assert_eq!(w13[(2 * j + 1) * hidden + k], to_bf16(w3[j * hidden + k]));
            }
        }
        let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| from_bf16(to_bf16(x))).collect() };
        let (b1, b3) = deinterleave_w13(&w13, inter, hidden).unwrap();
        prop_assert_eq!(b1, round(&w1));
        prop_assert_eq!(b3, round(&w3));
    }
}

// ---- reference vs a naive reading of the spec ------------------------------

/// The spec, one element at a time: sequential f32 sums, bf16 where the
/// kernels write bf16. Padding rows stay 0.
fn naive(w13: &[u16], w2: &[u16], s: FfnShape, layout: &DispatchLayout, rows: &[u16]) -> Vec<u16> {
    let (h, i) = (s.hidden, s.intermediate);
    let f = |b: u16| f32::from_bits((b as u32) << 16);
    let mut out = vec![0u16; layout.rows() * h];
    for e in 0..s.experts {
        let start = layout.offsets()[e] as usize;
        for r in start..start + layout.counts()[e] as usize {
            let x = &rows[r * h..(r + 1) * h];
            let mut act = vec![0u16; i];
            for (j, a) in act.iter_mut().enumerate() {
                let proj = |row: usize| {
                    let w = &w13[(e * 2 * i + row) * h..][..h];
                    let mut acc = 0.0f32;
                    for k in 0..h {
                        acc += f(x[k]) * f(w[k]);
                    }
                    to_bf16(acc)
                };
                let (gate, up) = (f(proj(2 * j)), f(proj(2 * j + 1)));
                let silu = gate / (1.0 + (-gate).exp());
                *a = to_bf16(silu * up);
            }
            for c in 0..h {
                let w = &w2[(e * h + c) * i..][..i];
                let mut acc = 0.0f32;
                for j in 0..i {
                    acc += f(act[j]) * f(w[j]);
                }
                out[r * h + c] = to_bf16(acc);
            }
        }
    }
    out
}

/// A layout of `tokens` tokens over `experts` experts from hashed logits.
fn layout(
    tokens: usize,
    experts: usize,
    k: usize,
    tile: usize,
    seed: u32,
    cfg: Option<f64>,
) -> DispatchLayout {
    let logits: Vec<f32> = (0..(tokens * experts) as u32)
        .map(|i| hash_uniform(i, seed, 2.0))
        .collect();
    let mut rc = RouterConfig::new(k, Policy::None);
    if let Some(gamma) = cfg {
        rc = RouterConfig::new(k, Policy::Drop(DropRank::Score)).with_capacity_factor(gamma);
    }
    let plan = route(&Logits::new(&logits, tokens, experts).unwrap(), &rc).unwrap();
    DispatchLayout::new(&plan, tile).unwrap()
}

/// Weights scaled so that `h13` is O(1) (SiLU far from linear).
fn model(s: FfnShape, seed: u32) -> ExpertFfnRef {
    let w13 = fill_bf16(s.w13_len(), seed, 4.0 / (s.hidden as f32).sqrt());
    let w2 = fill_bf16(
        s.w2_len(),
        seed ^ 0xabcd,
        4.0 / (s.intermediate as f32).sqrt(),
    );
    ExpertFfnRef::new(s, w13, w2).unwrap()
}

/// Routed rows of `tokens` hashed activations in `[-1, 1)`.
fn routed(l: &DispatchLayout, tokens: usize, hidden: usize, seed: u32) -> Vec<u16> {
    let x = fill_bf16(tokens * hidden, seed ^ 0x5555, 1.0);
    l.scatter(&x, tokens, hidden).unwrap()
}

/// Reference vs naive: padding rows exactly 0, served rows within the GPU
/// tolerance and nearly all bit-identical (only the f32 summation order
/// differs). Returns the reference output.
fn check_against_naive(r: &ExpertFfnRef, l: &DispatchLayout, rows: &[u16]) -> Vec<u16> {
    let s = r.shape();
    let got = r.forward(l, rows).unwrap();
    let want = naive(r.w13(), r.w2(), s, l, rows);
    assert_eq!(got.len(), l.rows() * s.hidden);
    for (row, &t) in l.row_tokens().iter().enumerate() {
        if t == PAD {
            assert!(got[row * s.hidden..(row + 1) * s.hidden]
                .iter()
                .all(|&b| b == 0));
        }
    }
    compare_served(l, s.hidden, &got, &want).unwrap();
    // A different summation order flips a bf16 rounding only rarely.
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(
        differ <= 1 + got.len() / 10,
        "{differ} of {} elements not bit-identical",
        got.len()
    );
    got
}

const SIZES: [usize; 4] = [8, 16, 24, 40];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn reference_matches_the_naive_spec(
        tokens in 1usize..12,
        experts in 1usize..6,
        k in 1usize..3,
        hi in 0usize..4,
        ii in 0usize..4,
        tile in prop::sample::select(vec![1usize, 3, 8]),
        gamma in prop::option::of(0.5f64..1.5),
        seed in any::<u32>(),
    ) {
        let k = k.min(experts);
        let s = FfnShape::new(experts, SIZES[hi], SIZES[ii]).unwrap();
        let l = layout(tokens, experts, k, tile, seed, gamma);
        let r = model(s, seed);
        check_against_naive(&r, &l, &routed(&l, tokens, s.hidden, seed));
    }
}

/// Logits that send every token to expert `hot` alone (top-1).
fn all_to(tokens: usize, experts: usize, hot: usize, tile: usize) -> DispatchLayout {
    let mut logits = vec![0.0f32; tokens * experts];
    for t in 0..tokens {
        logits[t * experts + hot] = 5.0;
    }
    let plan = route(
        &Logits::new(&logits, tokens, experts).unwrap(),
        &RouterConfig::new(1, Policy::None),
    )
    .unwrap();
    DispatchLayout::new(&plan, tile).unwrap()
}

#[test]
fn one_expert_holds_every_token_and_the_rest_are_empty() {
    let s = FfnShape::new(4, 24, 40).unwrap();
    let l = all_to(7, 4, 2, 4);
    assert_eq!(l.counts(), &[0, 0, 7, 0]);
    let y = check_against_naive(&model(s, 3), &l, &routed(&l, 7, 24, 3));
    // Its 7 real rows are non-zero; the padding row after them is 0.
    assert!(y[..7 * 24].iter().any(|&b| b != 0));
    assert!(y[7 * 24..].iter().all(|&b| b == 0));
}

#[test]
fn a_single_token_and_odd_row_counts() {
    let s = FfnShape::new(3, 40, 24).unwrap();
    let l = layout(1, 3, 2, 8, 11, None);
    assert_eq!(l.counts().iter().sum::<u32>(), 2);
    check_against_naive(&model(s, 11), &l, &routed(&l, 1, 40, 11));
    for tokens in [3, 5, 9] {
        let l = layout(tokens, 3, 1, 4, tokens as u32, None);
        check_against_naive(&model(s, 5), &l, &routed(&l, tokens, 40, 1));
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let s = FfnShape::new(2, 8, 8).unwrap();
    let r = model(s, 1);
    let l = layout(3, 2, 1, 1, 1, None);
    let e = r.forward(&l, &vec![0; l.rows() * 8 - 1]).unwrap_err();
    assert!(matches!(e, ExpertError::Shape { .. }), "{e}");
    let l3 = layout(3, 3, 1, 1, 1, None);
    let e = r.forward(&l3, &vec![0; l3.rows() * 8]).unwrap_err();
    assert_eq!(e, ExpertError::LayoutExperts { layout: 3, ffn: 2 });
    assert!(FfnShape::new(2, 12, 8).is_err());
    assert!(FfnShape::new(0, 8, 8).is_err());
}

#[test]
fn compare_catches_a_wrong_row() {
    let s = FfnShape::new(2, 16, 16).unwrap();
    let l = layout(6, 2, 1, 4, 9, None);
    let r = model(s, 9);
    let y = r.forward(&l, &routed(&l, 6, 16, 9)).unwrap();
    // Swap two served rows of the output: the comparison must fail and
    // name a served row.
    let served: Vec<usize> = (0..l.rows())
        .filter(|&i| l.row_tokens()[i] != PAD)
        .collect();
    let mut bad = y.clone();
    let (a, b) = (served[0], served[1]);
    for c in 0..16 {
        bad.swap(a * 16 + c, b * 16 + c);
    }
    let e = compare_served(&l, 16, &bad, &y).unwrap_err();
    assert!(e.contains("row "), "{e}");
    // Garbage in padding rows is not compared.
    let mut pad = y.clone();
    if let Some(p) = (0..l.rows()).find(|&i| l.row_tokens()[i] == PAD) {
        pad[p * 16] = 0x7fc0;
        compare_served(&l, 16, &pad, &y).unwrap();
        assert!(compare(&pad, &y).is_err());
    }
}

// ---- agreement with the f32 CPU backend ------------------------------------

/// The bf16 reference and the f32 expert FFN of the CPU backend agree on a
/// random small model within the bf16 tolerance: the only differences are
/// the bf16 roundings of the weights, `h13`, `h` and `y` (each 2^-9
/// relative).
#[test]
fn reference_agrees_with_the_f32_cpu_backend() {
    let (experts, hidden, inter, tokens) = (4, 32, 48, 9);
    let tensor = |name: &str, shape: Vec<usize>, seed: u32, fan_in: usize| {
        let n = shape.iter().product::<usize>() as u32;
        let scale = 3.0 / (fan_in as f32).sqrt();
        let data = (0..n).map(|i| hash_uniform(i, seed, scale)).collect();
        HostTensor::new(name, shape, data).unwrap()
    };
    let weights: Vec<HostExpert> = (0..experts as u32)
        .map(|e| HostExpert {
            w1: tensor("w1", vec![inter, hidden], 10 * e + 1, hidden),
            w2: tensor("w2", vec![hidden, inter], 10 * e + 2, inter),
            w3: tensor("w3", vec![inter, hidden], 10 * e + 3, hidden),
        })
        .collect();
    // bf16 inputs, so both paths see the same activations.
    let x_bits = fill_bf16(tokens * hidden, 77, 1.0);
    let x: Vec<f32> = x_bits.iter().map(|&b| from_bf16(b)).collect();

    let cpu = CpuBackend;
    let l = layout(tokens, experts, 2, cpu.dispatch_tile(), 5, None);
    let xa = cpu.upload(&x, tokens, hidden).unwrap();
    let rows = cpu.dispatch(&xa, &l).unwrap();
    let y32 = cpu
        .download(&cpu.expert_ffn(&rows, &l, &weights, 0..experts).unwrap())
        .unwrap();
    let y32: Vec<u16> = y32.iter().map(|&v| to_bf16(v)).collect();

    let r = ExpertFfnRef::from_host(&weights).unwrap();
    let y16 = r
        .forward(&l, &l.scatter(&x_bits, tokens, hidden).unwrap())
        .unwrap();
    compare_served(&l, hidden, &y32, &y16).unwrap();
    // And the agreement is not vacuous: the outputs are O(1).
    let rms = (y16.iter().map(|&b| from_bf16(b).powi(2)).sum::<f32>() / y16.len() as f32).sqrt();
    assert!(rms > 0.1, "rms {rms}");
}
