//! Pins the hashed weight init at the values tools/peers/ffn_peers.py embeds
//! (`PINS`, `PINS_X`): the Python peer redraws capmoe's weights with int64
//! torch math on the device and checks its draws against the same table, so
//! a change on either side fails here or there instead of silently comparing
//! different weights.

use capmoe::expert::init::{hash_uniform, to_bf16, w13_seed, w2_seed, INIT_SCALE};

/// (seed, flat index, bf16 bits) with scale INIT_SCALE; seeds 14 and 15 are
/// W13 and W2 of model seed 7 (bench/gpu_ffn.rs), 939524095 the last element
/// of Mixtral-8x7B's W13, the two largest indices past 2^31 (u32 math).
const PINS: &[(u32, u32, u16)] = &[
    (0, 0, 0xbd0e),
    (0, 1, 0xbcaf),
    (0, 2, 0xbbe1),
    (14, 0, 0x3cfe),
    (14, 1, 0x3c51),
    (14, 12345, 0xbd0b),
    (14, 939_524_095, 0x3cdc),
    (14, 2_147_483_653, 0x3b9b),
    (14, 4_294_967_295, 0x3ca0),
    (15, 0, 0x3cdf),
    (15, 1, 0x3d01),
    (15, 12345, 0xbcd9),
    (15, 939_524_095, 0x3bf6),
    (15, 2_147_483_653, 0xbc41),
    (15, 4_294_967_295, 0xbb1d),
];

/// The activations of the FFN checksum cross-check: seed 1234, scale 1.
const PINS_X: &[(u32, u32, u16)] = &[
    (1234, 0, 0x3f73),
    (1234, 1, 0x3f02),
    (1234, 4097, 0x3d98),
    (1234, 67_108_867, 0x3dcf),
];

#[test]
fn hashed_init_matches_the_python_peer() {
    for &(seed, i, want) in PINS {
        let got = to_bf16(hash_uniform(i, seed, INIT_SCALE));
        assert_eq!(
            got, want,
            "seed {seed} index {i}: {got:#06x} != {want:#06x}"
        );
    }
    for &(seed, i, want) in PINS_X {
        let got = to_bf16(hash_uniform(i, seed, 1.0));
        assert_eq!(
            got, want,
            "x seed {seed} index {i}: {got:#06x} != {want:#06x}"
        );
    }
}

#[test]
fn model_seed_7_uses_the_pinned_streams() {
    assert_eq!((w13_seed(7), w2_seed(7)), (14, 15));
}

#[test]
fn python_pins_are_the_same_table() {
    // The script's table must list exactly these entries (a guard against
    // editing one side only). Parsed from the source: no Python needed.
    let src = include_str!("../tools/peers/ffn_peers.py");
    for &(seed, i, want) in PINS.iter().chain(PINS_X) {
        let entry = format!("({seed}, {i}): {want:#06X}"); // Rust's `#X` writes 0x3CFE
        assert!(src.contains(&entry), "ffn_peers.py lacks the pin `{entry}`");
    }
}
