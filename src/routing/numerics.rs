//! Canonical f32 arithmetic for gating.
//!
//! Plans must be bit-identical on every backend, and routing decisions compare
//! probabilities across tokens, so `p` itself must be bit-identical. Libm `expf`
//! and CUDA `expf` differ by an ulp or two, and a warp reduces in a different
//! order than a loop. So the contract fixes both: [`exp_canonical`] uses only
//! IEEE-754 round-to-nearest `+ - *` (CUDA twins use `__fadd_rn`/`__fmul_rn`
//! so nvcc cannot contract them into FMAs), and [`warp_sum`] fixes the order
//! of a 32-lane butterfly reduction.

/// Inputs below this give exactly 0, so results never go subnormal (no FTZ
/// dependence between compilers).
pub const EXP_UNDERFLOW: f32 = -86.0;

// Constants by bit pattern, shared with cuda/common/canonical.cuh.
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
// ln 2 split so that n * LN2_HI is exact for |n| < 2^15.
const LN2_HI: f32 = f32::from_bits(0x3f31_8000); // 0.693359375
const LN2_LO: f32 = f32::from_bits(0xb95e_8083); // -2.1219444e-4
                                                 // Minimax coefficients for e^r on |r| <= ln2/2 (Cephes expf).
const P0: f32 = f32::from_bits(0x3950_6967); // 1.9875691e-4
const P1: f32 = f32::from_bits(0x3ab7_43ce); // 1.3981999e-3
const P2: f32 = f32::from_bits(0x3c08_8908); // 8.333452e-3
const P3: f32 = f32::from_bits(0x3d2a_a9c1); // 4.1665796e-2
const P4: f32 = f32::from_bits(0x3e2a_aaaa); // 1.6666666e-1
const P5: f32 = f32::from_bits(0x3f00_0000); // 0.5

/// `e^x` for `x <= 0`, bit-reproducible (about 1 ulp from the true value).
///
/// Returns 0 below [`EXP_UNDERFLOW`]; `exp_canonical(0.0) == 1.0` exactly.
#[inline]
pub fn exp_canonical(x: f32) -> f32 {
    if x < EXP_UNDERFLOW {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    let y = (p * (r * r) + r) + 1.0;
    // n is in [-124, 0] here, so 2^n is a normal f32 and the product is exact
    // unless y * 2^n would be subnormal, which the underflow cut excludes.
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    y * scale
}

/// Lanes of the canonical reduction (one CUDA warp).
pub const LANES: usize = 32;

/// Sum in the canonical order: lane `j` adds elements `j, j+32, j+64, ...`
/// sequentially, then lanes combine as a butterfly with offsets 16, 8, 4, 2, 1
/// (what `v += __shfl_xor_sync(m, v, off)` gives on lane 0).
#[inline]
pub fn warp_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut lane = [0.0f32; LANES];
    for (i, v) in values.enumerate() {
        lane[i % LANES] += v;
    }
    let mut off = LANES / 2;
    while off > 0 {
        for j in 0..off {
            lane[j] += lane[j + off];
        }
        off /= 2;
    }
    lane[0]
}

/// Sequential left-to-right sum (used for the short top-k and served sums,
/// which one thread computes in decreasing-`p` order on the GPU too).
#[inline]
pub fn seq_sum(values: impl Iterator<Item = f32>) -> f32 {
    values.fold(0.0f32, |a, v| a + v)
}

/// SplitMix64 finaliser: the hash behind `drop:random`, chosen because a GPU
/// thread can compute it per assignment with no shared state.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > EXP_UNDERFLOW {
            let a = exp_canonical(x);
            let b = x.exp();
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulps);
            x -= 0.000_731;
        }
        assert!(worst <= 2, "worst ulp error {worst}");
        assert_eq!(exp_canonical(0.0), 1.0);
        assert_eq!(exp_canonical(-86.5), 0.0);
        assert_eq!(exp_canonical(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn exp_is_monotone() {
        let mut x = 0.0f32;
        let mut prev = exp_canonical(x);
        while x > -20.0 {
            x -= 0.001_3;
            let v = exp_canonical(x);
            assert!(v <= prev, "exp not monotone at {x}");
            prev = v;
        }
    }

    #[test]
    fn warp_sum_order_is_the_butterfly() {
        // 33 values: lane 0 holds v0 + v32, the rest one value each.
        let v: Vec<f32> = (0..33).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let mut lane = [0.0f32; 32];
        for (i, x) in v.iter().enumerate() {
            lane[i % 32] += *x;
        }
        let s16: Vec<f32> = (0..16).map(|j| lane[j] + lane[j + 16]).collect();
        let s8: Vec<f32> = (0..8).map(|j| s16[j] + s16[j + 8]).collect();
        let s4: Vec<f32> = (0..4).map(|j| s8[j] + s8[j + 4]).collect();
        let s2: Vec<f32> = (0..2).map(|j| s4[j] + s4[j + 2]).collect();
        assert_eq!(
            warp_sum(v.iter().copied()).to_bits(),
            (s2[0] + s2[1]).to_bits()
        );
    }
}
