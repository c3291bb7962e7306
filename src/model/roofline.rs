//! FLOP counts of a forward pass and the measured f32 GEMM rate, to express
//! the CPU forward's speed as a ratio to a GEMM roofline measured in the
//! same run (`examples/roofline.rs` prints it).

use super::config::MixtralConfig;
use super::forward::ForwardOutput;
pub use crate::backend::cpu::gemm_rate;
use crate::backend::Backend;
use std::time::Instant;

/// Multiply-add FLOPs (2 per MAC) of the GEMMs a prefill forward ran:
/// projections, attention scores and values (over the keys each query row
/// sees: causal and windowed, the useful work), the router, every served expert assignment (3 matrices), and the LM head
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
        let p0 = past.get(i).copied().unwrap_or(0);
        for pos in p0..p0 + s.len() {
            let lo = cfg
                .sliding_window
                .map_or(0, |w| (pos + 1).saturating_sub(w));
            attn += 2.0 * 2.0 * (pos + 1 - lo) as f64 * q;
        }
    }
    let proj = 2.0 * t * h * (2.0 * q + 2.0 * kv);
    let router = 2.0 * t * h * cfg.num_local_experts as f64;
    let mut total = 0.0;
    for rec in &out.layers {
        let served = rec.totals.served() as f64;
        let experts = served * 3.0 * 2.0 * h * cfg.intermediate_size as f64;
        total += proj + attn + router + experts;
    }
    total + 2.0 * out.rows as f64 * h * cfg.vocab_size as f64
}

/// One roofline measurement: a prefill forward against the GEMM rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RooflineReport {
    /// Tokens prefilled (all prompts together).
    pub tokens: usize,
    /// GEMM FLOPs of one forward ([`forward_flops`]).
    pub flops: f64,
    /// Median forward time, seconds.
    pub forward_s: f64,
    /// Median GEMM rate, FLOP/s (square `n = 2048` products).
    pub gemm_rate: f64,
    /// Median over repetitions of `forward time / (flops / GEMM rate)`,
    /// each repetition measuring the GEMM rate right after its forward, so
    /// that load from other processes hits both sides alike.
    pub ratio: f64,
    /// Every repetition's ratio.
    pub ratios: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures a prefill of `prompts` under `opts` `reps` times (after one
/// warm-up) against the CPU GEMM roofline.
pub fn measure<B: Backend>(
    model: &super::Model<B>,
    prompts: &[&[u32]],
    opts: &super::ForwardOptions,
    reps: usize,
) -> Result<RooflineReport, super::ModelError> {
    let _ = model.prefill(prompts, opts)?;
    let reps = reps.max(1);
    let (mut fwd, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut flops = 0.0;
    for _ in 0..reps {
        let t = Instant::now();
        let (_, out) = model.prefill(prompts, opts)?;
        let dt = t.elapsed().as_secs_f64();
        flops = forward_flops(model.config(), &out, &[]);
        let rate = gemm_rate(2048, 1);
        fwd.push(dt);
        rates.push(rate);
        ratios.push(dt / (flops / rate));
    }
    let all = ratios.clone();
    Ok(RooflineReport {
        tokens: prompts.iter().map(|p| p.len()).sum(),
        flops,
        forward_s: median(&mut fwd),
        gemm_rate: median(&mut rates),
        ratio: median(&mut ratios),
        ratios: all,
    })
}
