//! Seeded random weights as the backends draw them (`Model::random`).
//!
//! The host draw ([`random_host_tensor`]) is what the CPU backend uses and
//! what every backend gets by default from the model's `ModelBackend::random_mat`
//! and `random_experts`. The CUDA backend overrides both
//! to fill bf16 on the device (a full Mixtral-8x7B does not fit in host
//! memory as f32): its values come from another generator, so a random model
//! on the GPU is not the CPU's random model. Parity between the backends is
//! tested on checkpoints and fixtures, never on random models.

use super::HostTensor;
use crate::routing::numerics::splitmix64;
use crate::trace::Rng;
use rayon::prelude::*;

/// How random weights are drawn: the seed and the standard deviation of
/// every matrix weight (values uniform in `[-std*sqrt(3), std*sqrt(3)]`;
/// 1-D weights, the norms, are ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomInit {
    /// Base seed; each tensor's stream is derived from it and the tensor's name ([`name_seed`]).
    pub seed: u64,
    /// Standard deviation of every matrix weight.
    pub std: f32,
}

impl RandomInit {
    /// Half-width of the uniform distribution, `std * sqrt(3)`.
    pub fn bound(&self) -> f64 {
        self.std as f64 * 3f64.sqrt()
    }
}

/// The seed of the tensor `name`: FNV-1a of the name mixed with the seed, so
/// that each tensor's values depend on its name and the seed only, not on
/// load order or thread count.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h ^ splitmix64(seed))
}

/// [`name_seed`] folded to 32 bits (the device generator's seed).
pub fn name_seed32(seed: u64, name: &str) -> u32 {
    let s = name_seed(seed, name);
    (s ^ (s >> 32)) as u32
}

const CHUNK: usize = 1 << 16;

/// A random host tensor: 1-D weights are ones, matrices uniform with the
/// options' standard deviation, generated in parallel chunks each with its
/// own seeded stream.
pub fn random_host_tensor(name: &str, shape: &[usize], init: &RandomInit) -> HostTensor {
    let n: usize = shape.iter().product();
    if shape.len() == 1 {
        return HostTensor::owned(name, shape.to_vec(), vec![1.0; n]);
    }
    let a = init.bound();
    let base = name_seed(init.seed, name);
    let mut data = vec![0.0f32; n];
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = Rng::new(splitmix64(base ^ c as u64));
            for v in chunk {
                *v = ((rng.uniform() * 2.0 - 1.0) * a) as f32;
            }
        });
    HostTensor::owned(name, shape.to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_on_name_and_seed_only() {
        let init = RandomInit { seed: 3, std: 0.02 };
        let a = random_host_tensor("x", &[4, 5], &init);
        let b = random_host_tensor("x", &[4, 5], &init);
        let c = random_host_tensor("y", &[4, 5], &init);
        assert_eq!(a.data(), b.data());
        assert_ne!(a.data(), c.data());
        let bound = init.bound() as f32;
        assert!(a.data().iter().all(|v| v.abs() <= bound));
        assert!(random_host_tensor("n", &[3], &init)
            .data()
            .iter()
            .all(|&v| v == 1.0));
        assert_ne!(name_seed32(1, "a"), name_seed32(2, "a"));
    }
}
