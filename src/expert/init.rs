//! Hash-based random weights: the CPU twin of `capmoe_fill_hash_bf16`.
//!
//! Every value depends only on its flat index and the seed, so the GPU draws
//! the same weights in place (no upload of a 90 GB Mixtral layer stack for a
//! benchmark) and this twin, or the Python peer with int64 math, reproduces
//! any element exactly.

use half::bf16;
use rayon::prelude::*;

/// Scale of the uniform draws for W13 and W2: `0.02 * sqrt(3)` (as f32), so
/// that `uniform(-scale, scale)` has standard deviation 0.02.
pub const INIT_SCALE: f32 = 0.034_641_016;

/// A 32-bit integer mix (two multiply-xorshift rounds), wrapping u32 math.
///
/// ```
/// assert_eq!(capmoe::expert::init::hash32(0), 0);
/// assert_eq!(capmoe::expert::init::hash32(1), 0x3125_1ba7);
/// ```
pub const fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x045d_9f3b);
    x ^= x >> 16;
    x = x.wrapping_mul(0x045d_9f3b);
    x ^= x >> 16;
    x
}

/// Element `i` of the stream `seed`: uniform in `[-scale, scale)`, in f32.
///
/// `u = hash32(i ^ hash32(seed))`, `f = (u >> 8) * 2^-24` (24 random bits,
/// exact in f32), `w = (2f - 1) * scale` (`2f - 1` is exact; the product is
/// the one rounding, so no FMA can change the result).
///
/// ```
/// use capmoe::expert::init::hash_uniform;
/// assert_eq!(hash_uniform(0, 0, 1.0), -1.0);
/// assert_eq!(hash_uniform(1, 0, 1.0), -0.616_055_13);
/// ```
pub fn hash_uniform(i: u32, seed: u32, scale: f32) -> f32 {
    let u = hash32(i ^ hash32(seed));
    let f = (u >> 8) as f32 * (1.0 / 16_777_216.0);
    (2.0 * f - 1.0) * scale
}

/// `n` bf16 values (as bits) of the stream `seed`: element `i` is
/// [`hash_uniform`]`(i as u32, seed, scale)` rounded to nearest even.
/// Indices wrap at 2^32, as `(i as u32)` in the formula (the GPU fill takes
/// `n < 2^32`).
///
/// ```
/// use capmoe::expert::init::{fill_bf16, INIT_SCALE};
/// assert_eq!(fill_bf16(3, 0, INIT_SCALE), [0xbd0e, 0xbcaf, 0xbbe1]);
/// ```
pub fn fill_bf16(n: usize, seed: u32, scale: f32) -> Vec<u16> {
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|i| to_bf16(hash_uniform(i as u32, seed, scale)))
        .collect()
}

/// The hash seed of the interleaved W13 buffer of a model drawn with `seed`.
pub const fn w13_seed(seed: u32) -> u32 {
    seed.wrapping_mul(2)
}

/// The hash seed of the W2 buffer of a model drawn with `seed`.
pub const fn w2_seed(seed: u32) -> u32 {
    seed.wrapping_mul(2).wrapping_add(1)
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

/// bf16 bits -> f32 (exact: the bits are the f32's high half).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_std_0_02() {
        assert!((INIT_SCALE as f64 - 0.02 * 3f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn seeds_split_the_model_seed() {
        assert_eq!((w13_seed(7), w2_seed(7)), (14, 15));
        assert_eq!(
            (w13_seed(u32::MAX), w2_seed(u32::MAX)),
            (u32::MAX - 1, u32::MAX)
        );
    }

    #[test]
    fn fill_matches_the_scalar_formula_and_stays_in_range() {
        let v = fill_bf16(100_000, 3, INIT_SCALE);
        for (i, &b) in v.iter().enumerate().step_by(97) {
            assert_eq!(b, to_bf16(hash_uniform(i as u32, 3, INIT_SCALE)));
        }
        let max = v.iter().map(|&b| from_bf16(b).abs()).fold(0.0, f32::max);
        // The bf16 of the scale may round up past it.
        let top = from_bf16(to_bf16(INIT_SCALE));
        assert!(max <= top && max > 0.99 * INIT_SCALE, "max {max}");
        let mean = v.iter().map(|&b| from_bf16(b) as f64).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties up.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(0x3f80), 1.0);
    }
}
