//! FLOP counts of a forward pass and the measured f32 GEMM rate, to express
//! the CPU forward's speed as a ratio to a GEMM roofline measured in the
//! same run (`examples/roofline.rs` prints it).

use super::config::MixtralConfig;
use super::forward::ForwardOutput;
use crate::backend::cpu::gemm::{matmul, threads, View};
use crate::backend::Backend;
use std::time::Instant;

/// Multiply-add FLOPs (2 per MAC) of the GEMMs a prefill forward ran:
/// projections, attention scores and values (over the full key range each
/// query row computes, masked part included, as the CPU backend does), the
/// router, every served expert assignment (3 matrices), and the LM head
/// rows. Element-wise work is not counted.
pub fn forward_flops<B: Backend>(
    cfg: &MixtralConfig,
    out: &ForwardOutput<B>,
    past: &[usize],
) -> f64 {
    let h = cfg.hidden_size as f64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let t: f64 = out.spans.iter().map(|s| s.len() as f64).sum();
    let mut attn = 0.0;
    for (i, s) in out.spans.iter().enumerate() {
        let n = s.len() as f64;
        let len = n + past.get(i).copied().unwrap_or(0) as f64;
        attn += 2.0 * 2.0 * n * len * q;
    }
    let proj = 2.0 * t * h * (2.0 * q + 2.0 * kv);
    let router = 2.0 * t * h * cfg.num_local_experts as f64;
    let mut total = 0.0;
    for rec in &out.layers {
        let served = rec.plan.len() as f64;
        let experts = served * 3.0 * 2.0 * h * cfg.intermediate_size as f64;
        total += proj + attn + router + experts;
    }
    total + 2.0 * out.rows as f64 * h * cfg.vocab_size as f64
}

/// The f32 GEMM rate (FLOP/s) of the CPU backend's GEMM on an `n x n x n`
/// product, best of `reps` runs after one warm-up.
pub fn gemm_rate(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-2)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-2)
        .collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for r in 0..=reps.max(1) {
        let t0 = Instant::now();
        matmul(
            &mut c,
            n,
            View::rows(&a, n, n),
            View::rows(&b, n, n),
            false,
            threads(),
        );
        let dt = t0.elapsed().as_secs_f64();
        if r > 0 {
            best = best.min(dt);
        }
    }
    2.0 * (n as f64).powi(3) / best
}
