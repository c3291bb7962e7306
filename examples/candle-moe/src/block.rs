//! A Mixtral-style sparse MoE block in candle (CPU): router linear, then
//! per-expert SwiGLU FFNs combined with the routing's weights. The routing
//! itself is passed in, so candle's top-k and capmoe's plans drive the same
//! experts.

use candle_core::{DType, Device, Tensor};
use capmoe::routing::numerics::splitmix64;

use crate::Res;

/// Shape of the block and of its random weights.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub seed: u64,
    /// Router bias per expert (the skew that makes capacity bite); missing
    /// entries are 0.
    pub router_bias: Vec<f32>,
}

/// Compacted routing: per token, its served `(expert, weight)` pairs, every
/// expert id in `0..E` (no drop markers). An empty list means the token
/// passes through the residual only.
pub type Routing = Vec<Vec<(u32, f32)>>;

struct Expert {
    w1: Tensor, // gate projection [F, D]
    w3: Tensor, // up projection [F, D]
    w2: Tensor, // down projection [D, F]
}

impl Expert {
    /// SwiGLU: `(silu(x W1^T) * (x W3^T)) W2^T`.
    fn forward(&self, x: &Tensor) -> Res<Tensor> {
        let gate = x.matmul(&self.w1.t()?)?.silu()?;
        let up = x.matmul(&self.w3.t()?)?;
        Ok((gate * up)?.matmul(&self.w2.t()?)?)
    }
}

pub struct MoeBlock {
    pub cfg: BlockConfig,
    router_w: Tensor, // [E, D]
    router_b: Tensor, // [E]
    experts: Vec<Expert>,
}

/// Deterministic uniform values in `[-scale, scale)` from a counter-based
/// splitmix64 stream (no RNG crate, same weights on every machine).
pub struct Uniform {
    state: u64,
}

impl Uniform {
    pub fn new(seed: u64) -> Self {
        Self {
            state: splitmix64(seed),
        }
    }
    pub fn next(&mut self) -> f32 {
        self.state = self.state.wrapping_add(1);
        let bits = splitmix64(self.state) >> 40; // 24 bits: exact in f32
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, rows: usize, cols: usize, scale: f32, dev: &Device) -> Res<Tensor> {
        let v: Vec<f32> = (0..rows * cols).map(|_| self.next() * scale).collect();
        Ok(Tensor::from_vec(v, (rows, cols), dev)?)
    }
}

impl MoeBlock {
    pub fn new(cfg: BlockConfig, dev: &Device) -> Res<Self> {
        let (d, f, e) = (cfg.hidden, cfg.ffn, cfg.experts);
        let mut rng = Uniform::new(cfg.seed);
        let router_w = rng.tensor(e, d, 1.0 / (d as f32).sqrt(), dev)?;
        let bias: Vec<f32> = (0..e)
            .map(|i| cfg.router_bias.get(i).copied().unwrap_or(0.0))
            .collect();
        let router_b = Tensor::from_vec(bias, e, dev)?;
        let experts = (0..e)
            .map(|_| {
                Ok(Expert {
                    w1: rng.tensor(f, d, 1.0 / (d as f32).sqrt(), dev)?,
                    w3: rng.tensor(f, d, 1.0 / (d as f32).sqrt(), dev)?,
                    w2: rng.tensor(d, f, 1.0 / (f as f32).sqrt(), dev)?,
                })
            })
            .collect::<Res<Vec<_>>>()?;
        Ok(Self {
            cfg,
            router_w,
            router_b,
            experts,
        })
    }

    /// Router logits `[T, E] = x W_r^T + b`.
    pub fn router_logits(&self, x: &Tensor) -> Res<Tensor> {
        Ok(x.matmul(&self.router_w.t()?)?
            .broadcast_add(&self.router_b)?)
    }

    /// The block's output `[T, D]`: `sum over served (e, w) of w * FFN_e(x_t)`,
    /// expert by expert (gather the expert's rows, run it, scatter-add back).
    pub fn forward_experts(&self, x: &Tensor, routing: &Routing) -> Res<Tensor> {
        let (t, d) = x.dims2()?;
        if routing.len() != t {
            return Err(format!("routing has {} tokens, the batch {t}", routing.len()).into());
        }
        let e_count = self.experts.len();
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); e_count];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); e_count];
        for (tok, list) in routing.iter().enumerate() {
            for &(e, w) in list {
                // Compacted routing only: a drop marker (E or -1) must never get here.
                let slot = rows.get_mut(e as usize).ok_or_else(|| {
                    format!("token {tok}: expert id {e} outside 0..{e_count} (a drop marker?)")
                })?;
                slot.push(tok as u32);
                weights[e as usize].push(w);
            }
        }
        let mut out = Tensor::zeros((t, d), DType::F32, x.device())?;
        for (e, expert) in self.experts.iter().enumerate() {
            let n = rows[e].len();
            if n == 0 {
                continue;
            }
            let idx = Tensor::from_vec(rows[e].clone(), n, x.device())?;
            let w = Tensor::from_vec(weights[e].clone(), (n, 1), x.device())?;
            let y = expert
                .forward(&x.index_select(&idx, 0)?)?
                .broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }
}
